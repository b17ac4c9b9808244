-- ferry-controller state on PostgreSQL, version 1: the same tables as SQLite's 0001 with
-- PostgreSQL's types, plus what several controller replicas on one database rely on (see the
-- comments). Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE access_keys (
    id          TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE instances (
    id             TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    online         BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_ms   BIGINT,
    agent_json     TEXT
);

-- Batch numbers for the DescribeTasks sort key: a batch numbered N sorts at
-- N * 2^20 + (children + 1), its children at N * 2^20 + children … N * 2^20 + 1 in request
-- order (at most 10,000 < 2^20 - 1 children). A sequence hands replicas distinct numbers
-- without a lock, so two SendFiles committing together never interleave their rows.
CREATE SEQUENCE batch_numbers;

CREATE TABLE batches (
    task_id       TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL UNIQUE,
    request_id    TEXT NOT NULL,
    -- UNIQUE: two replicas racing one ClientToken create one batch (INSERT … ON CONFLICT).
    client_token  TEXT UNIQUE,
    request_hash  TEXT NOT NULL,
    payload_json  TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    finish_ms     BIGINT,
    status        TEXT NOT NULL CHECK (status IN ('PENDING', 'RUNNING', 'FINISHED', 'FAILED')),
    n_pending     INTEGER NOT NULL CHECK (n_pending >= 0),
    n_running     INTEGER NOT NULL DEFAULT 0 CHECK (n_running >= 0),
    n_finished    INTEGER NOT NULL DEFAULT 0 CHECK (n_finished >= 0),
    n_failed      INTEGER NOT NULL DEFAULT 0 CHECK (n_failed >= 0)
);
-- DescribeTasks by InvokeId and by status, each in sort order (the unique index on seq
-- serves the unfiltered listing).
CREATE INDEX batches_request ON batches (request_id, seq);
CREATE INDEX batches_status ON batches (status, seq);

CREATE TABLE children (
    task_id           TEXT PRIMARY KEY,
    seq               BIGINT NOT NULL UNIQUE,
    batch_id          TEXT NOT NULL REFERENCES batches (task_id),
    instance_id       TEXT NOT NULL REFERENCES instances (id),
    status            TEXT NOT NULL CHECK (status IN ('PENDING', 'RUNNING', 'FINISHED', 'FAILED')),
    phase             TEXT,
    error_code        TEXT,
    error_msg         TEXT,
    result_json       TEXT,
    progress          INTEGER NOT NULL DEFAULT 0,
    bytes_done        BIGINT NOT NULL DEFAULT 0,
    bytes_total       BIGINT,
    created_ms        BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL,
    start_ms          BIGINT,
    finish_ms         BIGINT,
    sent              BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE
);
-- DescribeTasks by batch (ParentTaskId), by instance and by status: each an index on the
-- filter then the sort key, so a page is a backward range scan that stops after MaxResults
-- rows and the count is an index-only scan of the matching range, whatever the table size.
CREATE INDEX children_batch ON children (batch_id, seq);
CREATE INDEX children_instance ON children (instance_id, seq);
CREATE INDEX children_status ON children (status, seq);
-- Expiry candidates and a Hello's open tasks: partial indexes over the few rows not final,
-- so neither reads the finished history.
CREATE INDEX children_pending ON children (created_ms) WHERE status = 'PENDING';
CREATE INDEX children_open ON children (instance_id, seq) WHERE status IN ('PENDING', 'RUNNING');

-- A final state is final whichever replica writes last: the store's transitions already read
-- the row under FOR UPDATE and never move a final child, and this refuses any statement that
-- would (a bug, or a hand-written UPDATE), in the database itself.
CREATE FUNCTION children_final_stays() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('FINISHED', 'FAILED') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'task % is % (final): refusing to make it %',
            OLD.task_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER children_final_stays BEFORE UPDATE OF status ON children
    FOR EACH ROW EXECUTE FUNCTION children_final_stays();
