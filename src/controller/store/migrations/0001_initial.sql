-- ferry-controller state, version 1. Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE access_keys (
    id          TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE instances (
    id             TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    online         INTEGER NOT NULL DEFAULT 0,
    last_seen_ms   INTEGER,
    agent_json     TEXT
);

-- One SendFile call. `seq` is the DescribeTasks sort key: a batch takes the highest number
-- of its group, its children the ones below in request order, so `ORDER BY seq DESC` lists
-- the newest batch first, each followed by its children.
CREATE TABLE batches (
    task_id       TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE,
    request_id    TEXT NOT NULL,
    client_token  TEXT UNIQUE,
    request_hash  TEXT NOT NULL,
    payload_json  TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    finish_ms     INTEGER,
    status        TEXT NOT NULL,
    n_pending     INTEGER NOT NULL,
    n_running     INTEGER NOT NULL DEFAULT 0,
    n_finished    INTEGER NOT NULL DEFAULT 0,
    n_failed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX batches_request ON batches (request_id, seq);
CREATE INDEX batches_status ON batches (status, seq);

CREATE TABLE children (
    task_id           TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    batch_id          TEXT NOT NULL REFERENCES batches (task_id),
    instance_id       TEXT NOT NULL REFERENCES instances (id),
    status            TEXT NOT NULL,
    phase             TEXT,
    error_code        TEXT,
    error_msg         TEXT,
    result_json       TEXT,
    progress          INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    bytes_total       INTEGER,
    created_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL,
    start_ms          INTEGER,
    finish_ms         INTEGER,
    sent              INTEGER NOT NULL DEFAULT 0,
    cancel_requested  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX children_batch ON children (batch_id, seq);
CREATE INDEX children_instance ON children (instance_id, seq);
CREATE INDEX children_status ON children (status, seq);
CREATE INDEX children_pending ON children (status, created_ms);
