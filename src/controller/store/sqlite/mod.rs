//! [`Store`] on SQLite: one file in the state directory (mode 0600: it holds AccessKey
//! secrets and the payloads' OSS credentials), one writing connection and [`READERS`] reading
//! ones, each on a thread of its own.
//!
//! Durability: WAL with `synchronous = FULL`, so a commit has reached the disk (the WAL is
//! fsync'd) before the call returns. NORMAL would survive a controller crash but could lose
//! the last commits on a power or OS failure, after their MQTT messages were acknowledged:
//! an agent would not resend them.
//! Many transitions share one commit: a call of [`Store::update_children`] is one group
//! (delivery's group commit of a worker's reports), and the writing thread merges the groups
//! queued behind each other into one transaction ([`Group`]).
//!
//! Schema: numbered migrations in `migrations/`, applied in order at open and recorded in
//! `schema_version`; a file written by a newer build is refused, not guessed at.

mod query;
mod rows;

use super::{
    BatchIds, Child, ChildChange, Counts, Instance, NewBatch, OpsCounts, Seen, Store, TaskFilter,
    TaskPage, OPS_COUNTS_SQL,
};
use crate::controller::ports::BoxFuture;
use crate::error::{Code, Error, Result};
use rows::{batch_ids, children_where, counts_of, opt_u64};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;

/// `(version, SQL)`, in order; a new schema change is a new file, never an edit.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_bcrypt.sql")),
    (
        3,
        include_str!("../migrations/0003_presence_connection.sql"),
    ),
];

/// The state file's name inside the state directory.
pub const FILE_NAME: &str = "controller.sqlite";

pub struct SqliteStore {
    /// Every write, one transaction at a time.
    conn: ConnThread,
    /// Every read (API calls, DescribeTasks, lookups), on [`READERS`] other connections
    /// taking calls from one queue: in WAL mode a reader sees the last commit and never waits
    /// for a writer's fsync, so DescribeTasks stays quick while thousands of reports commit,
    /// and one slow read (a long page) does not hold up the others. Reads after a write see
    /// it: a write's future resolves only once it committed.
    reader: ConnThread,
}

/// Reading connections. One queued every API call behind the others: at 200 DescribeTasks/s
/// beside 5,000 reporting phones on 2 cores, p99 was 3× p50, time spent waiting for the one
/// reader, not reading (each query is under a millisecond on a million rows).
const READERS: usize = 4;

/// The most transitions the writing thread merges into one transaction.
const MAX_MERGED: usize = 4096;

enum Job {
    Call(Box<dyn FnOnce(&mut Connection) + Send>),
    Changes(Group),
}

/// One [`Store::update_children`] call: its changes, in order, and where its answer goes.
struct Group {
    changes: Vec<(String, ChildChange)>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Option<Child>>>>,
}

/// A connection on a thread of its own, running calls in the order they come. Not tokio's
/// blocking pool: the embedded broker's file I/O (tokio::fs, an fsync per persisted
/// message) queues there by the thousand while 500 phones report, and a DescribeTasks
/// waiting behind it took seconds.
struct ConnThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl ConnThread {
    fn spawn(name: &str, mut conn: Connection) -> Result<ConnThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        start_thread(name, move || {
            let mut next = None;
            while let Some(job) = next.take().or_else(|| queue.recv().ok()) {
                // A panicking call loses only its own answer (its caller gets an error).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                    Job::Call(call) => call(&mut conn),
                    Job::Changes(first) => {
                        let (groups, after) = merge(first, &queue);
                        next = after;
                        commit_groups(&mut conn, groups);
                    }
                }));
            }
        })?;
        Ok(ConnThread { jobs })
    }

    /// Connections on threads of their own, each taking the next call from one queue
    /// (calls only: the reading side never gets [`Job::Changes`]).
    fn spawn_pool(name: &str, conns: Vec<Connection>) -> Result<ConnThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        for (i, mut conn) in conns.into_iter().enumerate() {
            let queue = queue.clone();
            start_thread(&format!("{name}-{i}"), move || loop {
                let job = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                    Job::Call(call) => call(&mut conn),
                    Job::Changes(group) => {
                        let _ = group.reply.send(Err(Error::new(
                            Code::Internal,
                            "controller state: a write on a reading connection",
                        )));
                    }
                }));
            })?;
        }
        Ok(ConnThread { jobs })
    }
}

fn start_thread(name: &str, run: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(run)
        .map(drop)
        .map_err(|e| {
            Error::new(
                Code::Internal,
                format!("starting the controller state thread {name}: {e}"),
            )
        })
}

/// `first` and the groups queued right behind it, up to [`MAX_MERGED`] transitions; also the
/// job that stopped the merge (a call, which must run after them), if any.
fn merge(first: Group, queue: &std::sync::mpsc::Receiver<Job>) -> (Vec<Group>, Option<Job>) {
    let mut merged = first.changes.len();
    let mut groups = vec![first];
    while merged < MAX_MERGED {
        match queue.try_recv() {
            Ok(Job::Changes(group)) => {
                merged += group.changes.len();
                groups.push(group);
            }
            Ok(call) => return (groups, Some(call)),
            Err(_) => break,
        }
    }
    (groups, None)
}

/// Every group's changes in order in ONE transaction, one fsync for all; each group gets
/// its own answers. The groups come from different delivery workers (disjoint instances,
/// each with at most one group in flight), so merging them changes no order any agent sees.
/// A failure (the database, the disk) fails them all, nothing committed: each is retried.
fn commit_groups(conn: &mut Connection, groups: Vec<Group>) {
    let mut replies = Vec::with_capacity(groups.len());
    let applied = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut answers = Vec::with_capacity(groups.len());
        for group in groups {
            replies.push(group.reply);
            let children = group
                .changes
                .into_iter()
                .map(|(task_id, change)| apply_change(&tx, task_id, change))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            answers.push(children);
        }
        tx.commit()?;
        Ok(answers)
    })();
    match applied {
        Ok(answers) => {
            for (reply, children) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(children));
            }
        }
        Err(e) => {
            let e = db_err(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::new(Code::Internal, format!("controller state (SQLite): {e}"))
}

impl SqliteStore {
    /// Opens (creating it 0600 if needed) and migrates the state file at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("creating the controller state", path, &e))?;
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::new(
                Code::Internal,
                format!("{}: SQLite refused WAL mode ({mode})", path.display()),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(db_err)?;
        migrate(&mut conn).map_err(|e| match e {
            Migration::Db(e) => db_err(e),
            Migration::Newer(v) => Error::new(
                Code::InvalidConfig,
                format!(
                    "{}: schema version {v} is newer than this ferry-controller knows ({}); run the newer build",
                    path.display(),
                    MIGRATIONS.len()
                ),
            ),
        })?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(path)?;
                reader.busy_timeout(std::time::Duration::from_secs(5))?;
                reader.execute_batch("PRAGMA query_only = ON;")?;
                Ok(reader)
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        Ok(SqliteStore {
            conn: ConnThread::spawn("ferry-state-write", conn)?,
            reader: ConnThread::spawn_pool("ferry-state-read", readers)?,
        })
    }

    /// Opens `DIR/controller.sqlite`.
    pub fn open_dir(state_dir: &Path) -> Result<SqliteStore> {
        SqliteStore::open(&state_dir.join(FILE_NAME))
    }

    /// Runs `f` on the writing connection (on its thread).
    fn run<T, F>(&self, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        on(&self.conn, f)
    }

    /// Runs `f`, which only reads, on the reading connection.
    fn read<T, F>(&self, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        on(&self.reader, f)
    }
}

/// Queues `f` on `thread` now; the future resolves with its result.
fn on<T, F>(thread: &ConnThread, f: F) -> BoxFuture<'static, Result<T>>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job::Call(Box::new(move |conn| {
        let _ = reply.send(f(conn).map_err(db_err));
    }));
    let queued = thread.jobs.send(job).is_ok();
    Box::pin(async move {
        if !queued {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    })
}

/// A call's answer when the connection's thread is gone (it panicked on this call).
fn stopped() -> Error {
    Error::new(Code::Internal, "controller state: its thread stopped")
}

enum Migration {
    Db(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for Migration {
    fn from(e: rusqlite::Error) -> Self {
        Migration::Db(e)
    }
}

fn migrate(conn: &mut Connection) -> std::result::Result<(), Migration> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    let newest = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if current > newest {
        return Err(Migration::Newer(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
        tx.commit()?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn add_access_key(&self, id: String, secret: String, now_ms: u64) -> BoxFuture<'_, Result<()>> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO access_keys (id, secret, created_ms) VALUES (?1, ?2, ?3)",
                params![id, secret, now_ms as i64],
            )
            .map(drop)
        })
    }

    fn access_key_secret(&self, id: String) -> BoxFuture<'_, Result<Option<String>>> {
        self.read(move |c| {
            c.query_row("SELECT secret FROM access_keys WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    fn put_instance(
        &self,
        id: String,
        password_hash: String,
        bcrypt_hash: String,
        rotate: bool,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists = tx
                .query_row("SELECT 1 FROM instances WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?
                .is_some();
            let done = match (exists, rotate) {
                (true, false) => false,
                (true, true) => {
                    tx.execute(
                        "UPDATE instances SET password_hash = ?2, bcrypt_hash = ?3 WHERE id = ?1",
                        params![id, password_hash, bcrypt_hash],
                    )?;
                    true
                }
                (false, _) => {
                    tx.execute(
                        "INSERT INTO instances (id, password_hash, bcrypt_hash, created_ms) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![id, password_hash, bcrypt_hash, now_ms as i64],
                    )?;
                    true
                }
            };
            tx.commit()?;
            Ok(done)
        })
    }

    fn instance_password_hash(&self, id: String) -> BoxFuture<'_, Result<Option<String>>> {
        self.read(move |c| {
            c.query_row(
                "SELECT password_hash FROM instances WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn instance_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT id, password_hash FROM instances ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn instance_bcrypt_hashes(
        &self,
    ) -> BoxFuture<'_, Result<crate::controller::ports::BcryptHashes>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT id, bcrypt_hash FROM instances ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn unknown_instances(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<String>>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM instances WHERE id = ?1")?;
            let mut unknown = Vec::new();
            for id in ids {
                if !stmt.exists([&id])? {
                    unknown.push(id);
                }
            }
            Ok(unknown)
        })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<Instance>>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, created_ms, online, last_seen_ms, agent_json FROM instances ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Instance {
                    instance_id: r.get(0)?,
                    created_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    online: r.get(2)?,
                    last_seen_ms: opt_u64(r.get(3)?),
                    agent_json: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    fn touch_instance(&self, id: String, seen: Seen) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c| {
            let n = c.execute(
                "UPDATE instances SET last_seen_ms = ?2, \
                 online = CASE WHEN ?5 IS NULL OR ?5 >= presence_connection \
                     THEN COALESCE(?3, online) ELSE online END, \
                 presence_connection = MAX(presence_connection, COALESCE(?5, 0)), \
                 agent_json = COALESCE(?4, agent_json) WHERE id = ?1",
                params![
                    id,
                    seen.now_ms as i64,
                    seen.online,
                    seen.agent_json,
                    seen.connection.map(|c| c as i64)
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn batch_by_client_token(&self, token: String) -> BoxFuture<'_, Result<Option<BatchIds>>> {
        self.read(move |c| batch_ids(c, "client_token = ?1", &token))
    }

    fn create_batch(&self, batch: NewBatch) -> BoxFuture<'_, Result<Option<BatchIds>>> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(token) = &batch.client_token {
                if let Some(existing) = batch_ids(&tx, "client_token = ?1", token)? {
                    return Ok(Some(existing));
                }
            }
            let base: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM batches", [], |r| {
                r.get(0)
            })?;
            let n = batch.children.len() as i64;
            let counts = Counts {
                pending: n as u32,
                ..Counts::default()
            };
            tx.execute(
                "INSERT INTO batches (task_id, seq, request_id, client_token, request_hash, \
                 payload_json, created_ms, status, n_pending) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    batch.task_id,
                    base + n + 1,
                    batch.request_id,
                    batch.client_token,
                    batch.request_hash,
                    batch.payload_json,
                    batch.created_ms as i64,
                    counts.batch_status().as_str(),
                    n,
                ],
            )?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO children (task_id, seq, batch_id, instance_id, status, created_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, 'PENDING', ?5, ?5)",
                )?;
                for (i, (instance, task_id)) in batch.children.iter().enumerate() {
                    stmt.execute(params![
                        task_id,
                        base + n - i as i64,
                        batch.task_id,
                        instance,
                        batch.created_ms as i64
                    ])?;
                }
            }
            tx.commit()?;
            Ok(None)
        })
    }

    fn batch_payload(&self, batch_id: String) -> BoxFuture<'_, Result<Option<String>>> {
        self.read(move |c| {
            c.query_row(
                "SELECT payload_json FROM batches WHERE task_id = ?1",
                [batch_id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn is_batch(&self, task_id: String) -> BoxFuture<'_, Result<bool>> {
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM batches WHERE task_id = ?1")?
                .exists([task_id])
        })
    }

    fn child(&self, task_id: String) -> BoxFuture<'_, Result<Option<Child>>> {
        self.read(move |c| {
            Ok(
                children_where(c, "c.task_id = ?1", vec![Value::Text(task_id)])?
                    .into_iter()
                    .next(),
            )
        })
    }

    fn batch_children(&self, batch_id: String) -> BoxFuture<'_, Result<Vec<Child>>> {
        self.read(move |c| children_where(c, "c.batch_id = ?1", vec![Value::Text(batch_id)]))
    }

    fn open_children(&self, instance_id: String) -> BoxFuture<'_, Result<Vec<Child>>> {
        self.read(move |c| {
            children_where(
                c,
                "c.instance_id = ?1 AND c.status IN ('PENDING', 'RUNNING')",
                vec![Value::Text(instance_id)],
            )
        })
    }

    fn pending_before(&self, created_before_ms: u64) -> BoxFuture<'_, Result<Vec<Child>>> {
        self.read(move |c| {
            children_where(
                c,
                "c.status = 'PENDING' AND c.created_ms < ?1",
                vec![Value::Integer(created_before_ms as i64)],
            )
        })
    }

    fn update_child(
        &self,
        task_id: String,
        change: ChildChange,
    ) -> BoxFuture<'_, Result<Option<Child>>> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let child = apply_change(&tx, task_id, change)?;
            tx.commit()?;
            Ok(child)
        })
    }

    fn update_children(
        &self,
        changes: Vec<(String, ChildChange)>,
    ) -> BoxFuture<'_, Result<Vec<Option<Child>>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self
            .conn
            .jobs
            .send(Job::Changes(Group { changes, reply }))
            .is_ok();
        Box::pin(async move {
            if !queued {
                return Err(stopped());
            }
            answer.await.map_err(|_| stopped())?
        })
    }

    fn mark_sent(&self, task_ids: Vec<String>) -> BoxFuture<'_, Result<()>> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE children SET sent = 1 WHERE task_id = ?1")?;
                for id in task_ids {
                    stmt.execute([id])?;
                }
            }
            tx.commit()
        })
    }

    fn describe(&self, filter: TaskFilter) -> BoxFuture<'_, Result<TaskPage>> {
        self.read(move |c| query::describe(c, &filter))
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn ops_counts(&self) -> BoxFuture<'_, Result<OpsCounts>> {
        self.read(|c| {
            let mut counts = OpsCounts::default();
            let mut stmt = c.prepare_cached(OPS_COUNTS_SQL[0])?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let status: String = r.get(0)?;
                let children = [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?];
                counts.add(&status, r.get(1)?, children);
            }
            let (online, all): (i64, i64) =
                c.query_row(OPS_COUNTS_SQL[1], [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            counts.agents_online = online.max(0) as u64;
            counts.instances = all.max(0) as u64;
            Ok(counts)
        })
    }
}

/// Applies one [`ChildChange`] inside the caller's transaction: the child's row, and its
/// batch's counts when its status moved. `None` for an unknown TaskId.
fn apply_change(
    tx: &rusqlite::Transaction<'_>,
    task_id: String,
    change: ChildChange,
) -> rusqlite::Result<Option<Child>> {
    let Some(mut child) = children_where(tx, "c.task_id = ?1", vec![Value::Text(task_id)])?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let before = child.status;
    if !change(&mut child) {
        return Ok(Some(child));
    }
    tx.prepare_cached(
        "UPDATE children SET status = ?2, phase = ?3, error_code = ?4, error_msg = ?5, \
         result_json = ?6, progress = ?7, bytes_done = ?8, bytes_total = ?9, \
         updated_ms = ?10, start_ms = ?11, finish_ms = ?12, sent = ?13, \
         cancel_requested = ?14 WHERE task_id = ?1",
    )?
    .execute(params![
        child.task_id,
        child.status.as_str(),
        child.phase,
        child.error_code,
        child.error_msg,
        child.result_json,
        child.progress,
        child.bytes_done as i64,
        child.bytes_total.map(|n| n as i64),
        child.updated_ms as i64,
        child.start_ms.map(|n| n as i64),
        child.finish_ms.map(|n| n as i64),
        child.sent,
        child.cancel_requested,
    ])?;
    if before != child.status {
        let (mut counts, finish_ms) = counts_of(tx, &child.batch_id)?;
        let old = counts.slot(before);
        *old = old.saturating_sub(1);
        *counts.slot(child.status) += 1;
        let status = counts.batch_status();
        let finish_ms = match (status.is_final(), finish_ms) {
            (true, None) => Some(child.updated_ms as i64),
            (true, kept) => kept,
            (false, _) => None,
        };
        tx.prepare_cached(
            "UPDATE batches SET status = ?2, n_pending = ?3, n_running = ?4, \
             n_finished = ?5, n_failed = ?6, finish_ms = ?7 WHERE task_id = ?1",
        )?
        .execute(params![
            child.batch_id,
            status.as_str(),
            counts.pending,
            counts.running,
            counts.finished,
            counts.failed,
            finish_ms
        ])?;
    }
    Ok(Some(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_mode_migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(SqliteStore::open(&path).unwrap());
        // Reopening applies nothing twice.
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM schema_version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(versions, vec![1, 2, 3]);
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", [])
            .unwrap();
        drop(conn);
        let Err(e) = SqliteStore::open(&path) else {
            panic!("a newer schema was opened")
        };
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.message.contains("99"), "{e}");
    }

    /// A file of schema 1 (before bcrypt hashes) migrates; its instances have no bcrypt hash
    /// until rotated, and a rotation gives them one.
    #[tokio::test]
    async fn instances_from_before_bcrypt_hashes_have_none_until_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);\
             INSERT INTO schema_version (version) VALUES (1);\
             INSERT INTO instances (id, password_hash, created_ms) VALUES ('acp-old', '$7$h', 1);",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let put = |id: &str, rotate| {
            store.put_instance(id.into(), "$7$n".into(), "$2a$n".into(), rotate, 2)
        };
        assert!(put("acp-new", false).await.unwrap());
        assert_eq!(
            store.instance_bcrypt_hashes().await.unwrap(),
            [
                ("acp-new".into(), Some("$2a$n".into())),
                ("acp-old".into(), None)
            ]
        );
        assert!(put("acp-old", true).await.unwrap());
        let all = store.instance_bcrypt_hashes().await.unwrap();
        assert_eq!(all[1], ("acp-old".into(), Some("$2a$n".into())));
    }

    /// The group-commit semantics both stores keep (`store::contract_tests`), on SQLite.
    #[tokio::test]
    async fn a_group_of_changes_applies_in_order_in_one_commit_and_keeps_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        super::super::contract_tests::a_group_of_changes_applies_in_order_and_keeps_the_counts(
            &store,
        )
        .await;
    }

    /// Groups from many callers at once (the writing thread merges those queued together
    /// into one transaction): each caller gets exactly its own children back, an empty group
    /// and another write queued among them (`mark_sent`) are answered in their place, and the
    /// batch's counts are true.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_groups_merged_into_one_commit_each_get_their_own_answers() {
        use super::super::contract_tests::{batch_row, new_batch, to};
        use super::super::Status;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
        let ids: Vec<(String, String)> = (0..64)
            .map(|i| (format!("acp-{i}"), format!("t-{i}")))
            .collect();
        for (instance, _) in &ids {
            assert!(store
                .put_instance(instance.clone(), "h".into(), "b".into(), false, 1)
                .await
                .unwrap());
        }
        let pairs: Vec<(&str, &str)> = ids.iter().map(|(i, t)| (i.as_str(), t.as_str())).collect();
        assert!(store
            .create_batch(new_batch(&pairs))
            .await
            .unwrap()
            .is_none());
        // 32 callers, two children each: RUNNING, then the first of them FINISHED.
        let callers: Vec<_> = (0..32)
            .map(|k| {
                let store = Arc::clone(&store);
                let (a, b) = (format!("t-{}", 2 * k), format!("t-{}", 2 * k + 1));
                tokio::spawn(async move {
                    let got = store
                        .update_children(vec![
                            (a.clone(), to(Status::Running)),
                            (b.clone(), to(Status::Running)),
                            (a.clone(), to(Status::Finished)),
                        ])
                        .await
                        .unwrap();
                    let seen: Vec<_> = got
                        .into_iter()
                        .map(|c| c.map(|c| (c.task_id, c.status)))
                        .collect();
                    assert_eq!(
                        seen,
                        vec![
                            Some((a.clone(), Status::Running)),
                            Some((b.clone(), Status::Running)),
                            Some((a, Status::Finished)),
                        ]
                    );
                    assert!(store.update_children(Vec::new()).await.unwrap().is_empty());
                    store.mark_sent(vec![b.clone()]).await.unwrap();
                    let child = store.child(b).await.unwrap().unwrap();
                    assert!(child.sent);
                    child.status
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Status::Running);
        }
        let batch = batch_row(&*store, "b-1").await;
        assert_eq!(
            (
                batch.counts.pending,
                batch.counts.running,
                batch.counts.finished
            ),
            (0, 32, 32)
        );
    }

    /// A late will of an older agent connection (`store::contract_tests`), on SQLite.
    #[tokio::test]
    async fn a_late_will_of_an_older_connection_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        super::super::contract_tests::a_late_will_of_an_older_connection_is_ignored(&store).await;
    }
}
