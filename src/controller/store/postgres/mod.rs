//! [`Store`] on PostgreSQL, for any number of `ferry-controller` replicas sharing one
//! database: a small connection pool (deadpool), every change one transaction, and every rule
//! that must hold across replicas enforced by the database, never by a lock in this process:
//!
//! - **ClientToken**: a UNIQUE column; `INSERT … ON CONFLICT DO NOTHING`, then the winner's
//!   batch is read back in the same transaction (READ COMMITTED sees it once committed).
//! - **A batch and its children** are inserted in one transaction; their sort keys come from
//!   a sequence (`batch_numbers`), so concurrent SendFiles need no table lock.
//! - **Transitions** ([`Store::update_child`]): the child is read `FOR UPDATE`, so the fleet
//!   logic's rule runs on the latest committed row while any other replica's transition of
//!   that child waits; then the batch row is locked the same way to move its counts. Locks are
//!   always taken child first, then batch, so two transitions never deadlock. A trigger
//!   refuses any change of a final status besides.
//! - **Expiry** goes through the same transitions, so two replicas expiring one child leave
//!   one final state.
//!
//! The statements of the frequent calls (transitions, a Hello's touch, orders sent, the API's
//! AccessKey and the broker's password lookups) are prepared once per pooled connection
//! (deadpool's statement cache), not parsed on every call.
//!
//! Schema: numbered migrations in `../migrations/postgres/`, applied at open in one
//! transaction under an advisory lock (two replicas starting together migrate once) and
//! recorded in `schema_version`; a database migrated by a newer build is refused.

mod query;
mod rows;

use super::{
    BatchIds, Child, ChildChange, Counts, Instance, NewBatch, Seen, Store, TaskFilter, TaskPage,
};
use crate::controller::ports::BoxFuture;
use crate::error::{Code, Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rows::{batch_by_token, children_where, counts_for_update, opt_u64, Db};
use std::time::Duration;
use tokio_postgres::NoTls;

/// `(version, SQL)`, in order; a new schema change is a new file, never an edit.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/postgres/0001_initial.sql"))];

/// The advisory lock migrations run under (any constant the database's other users do not
/// take): "ferry" in ASCII.
const MIGRATION_LOCK: i64 = 0x66_65_72_72_79;

/// Connections one controller keeps open at most.
const POOL_SIZE: usize = 16;

/// A batch's sort keys are `number << CHILD_BITS` plus at most 2^20 - 1 (the children, then
/// the batch above them); SendFile names at most 10,000 instances.
const CHILD_BITS: u32 = 20;

pub struct PgStore {
    pool: Pool,
    /// Where the store connects, without its password: for messages.
    shown: String,
}

/// A connection string's target as people may see it: user, hosts, ports, database, never
/// the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres://{}@{}{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        if ports.is_empty() {
            String::new()
        } else {
            format!(":{}", ports.join(","))
        },
        config.get_dbname().unwrap_or("")
    )
}

/// Parses a `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?host=/socket/dir]` (or key=value)
/// connection string; without a password in it, `PGPASSWORD` supplies one, so none need
/// appear on a command line.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        Error::new(
            Code::InvalidConfig,
            format!(
                "--database {}: not a PostgreSQL connection string (postgres://USER@HOST:PORT/DATABASE): {e}",
                crate::redact::url(url)
            ),
        )
    })?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("ferry-controller");
    }
    Ok(config)
}

impl PgStore {
    /// Connects to `url` (see [`parse_url`]) and migrates the database.
    pub async fn open(url: &str) -> Result<PgStore> {
        let config = parse_url(url)?;
        let shown = describe_target(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A pooled connection is checked (`is_closed`) before reuse: one that a
                // database restart cut is dropped, not handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::new(Code::Internal, format!("{shown}: connection pool: {e}")))?;
        let store = PgStore { pool, shown };
        let mut client = store.client().await?;
        migrate(&mut client).await.map_err(|e| match e {
            Migration::Db(e) => Error::new(
                Code::Internal,
                format!("{}: migrating the schema: {}", store.shown, e.message),
            ),
            Migration::Newer(v) => Error::new(
                Code::InvalidConfig,
                format!(
                    "{}: schema version {v} is newer than this ferry-controller knows ({}); run the newer build",
                    store.shown,
                    MIGRATIONS.len()
                ),
            ),
        })?;
        Ok(store)
    }

    /// Where this store connects, without its password.
    pub fn target(&self) -> &str {
        &self.shown
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            Error::new(
                Code::Internal,
                format!(
                    "controller state (PostgreSQL at {}): {}",
                    self.shown,
                    rows::chain(&e)
                ),
            )
        })
    }
}

enum Migration {
    Db(Error),
    Newer(i32),
}

impl From<Error> for Migration {
    fn from(e: Error) -> Self {
        Migration::Db(e)
    }
}

async fn migrate(client: &mut Object) -> std::result::Result<(), Migration> {
    let tx = client.transaction().await.db()?;
    // Held until commit or rollback: a second replica starting now waits here, then finds
    // the schema current.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .db()?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .db()?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .db()?
        .try_get(0)
        .db()?;
    let newest = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if current > newest {
        return Err(Migration::Newer(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.db()?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )
        .await
        .db()?;
    }
    tx.commit().await.db()?;
    Ok(())
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store for PgStore {
    fn add_access_key(&self, id: String, secret: String, now_ms: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    "INSERT INTO access_keys (id, secret, created_ms) VALUES ($1, $2, $3)",
                    &[&id, &secret, &ms(now_ms)],
                )
                .await
                .db()
                .map(drop)
        })
    }

    fn access_key_secret(&self, id: String) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let read = client
                .prepare_cached("SELECT secret FROM access_keys WHERE id = $1")
                .await
                .db()?;
            let row = client.query_opt(&read, &[&id]).await.db()?;
            row.map(|r| r.try_get(0).db()).transpose()
        })
    }

    fn put_instance(
        &self,
        id: String,
        password_hash: String,
        rotate: bool,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Two replicas adding one instance: the primary key lets one insert win.
            let inserted = client
                .execute(
                    "INSERT INTO instances (id, password_hash, created_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &password_hash, &ms(now_ms)],
                )
                .await
                .db()?;
            if inserted == 1 {
                return Ok(true);
            }
            if !rotate {
                return Ok(false);
            }
            let updated = client
                .execute(
                    "UPDATE instances SET password_hash = $2 WHERE id = $1",
                    &[&id, &password_hash],
                )
                .await
                .db()?;
            Ok(updated == 1)
        })
    }

    fn instance_password_hash(&self, id: String) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let read = client
                .prepare_cached("SELECT password_hash FROM instances WHERE id = $1")
                .await
                .db()?;
            let row = client.query_opt(&read, &[&id]).await.db()?;
            row.map(|r| r.try_get(0).db()).transpose()
        })
    }

    fn instance_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        // Byte order (`COLLATE "C"`), as SQLite sorts, whatever the database's locale.
        Box::pin(async move {
            self.client()
                .await?
                .query(
                    "SELECT id, password_hash FROM instances ORDER BY id COLLATE \"C\"",
                    &[],
                )
                .await
                .db()?
                .iter()
                .map(|r| Ok((r.try_get(0).db()?, r.try_get(1).db()?)))
                .collect()
        })
    }

    fn unknown_instances(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            self.client()
                .await?
                .query(
                    "SELECT u.id FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, n) \
                     WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = u.id) ORDER BY u.n",
                    &[&ids],
                )
                .await
                .db()?
                .iter()
                .map(|r| r.try_get(0).db())
                .collect()
        })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<Instance>>> {
        Box::pin(async move {
            self.client()
                .await?
                .query(
                    "SELECT id, created_ms, online, last_seen_ms, agent_json FROM instances ORDER BY id COLLATE \"C\"",
                    &[],
                )
                .await
                .db()?
                .iter()
                .map(|r| {
                    Ok(Instance {
                        instance_id: r.try_get(0).db()?,
                        created_ms: r.try_get::<_, i64>(1).db()?.max(0) as u64,
                        online: r.try_get(2).db()?,
                        last_seen_ms: opt_u64(r.try_get(3).db()?),
                        agent_json: r.try_get(4).db()?,
                    })
                })
                .collect()
        })
    }

    fn touch_instance(&self, id: String, seen: Seen) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let client = self.client().await?;
            let write = client
                .prepare_cached(
                    "UPDATE instances SET last_seen_ms = $2, online = COALESCE($3, online), \
                     agent_json = COALESCE($4, agent_json) WHERE id = $1",
                )
                .await
                .db()?;
            let n = client
                .execute(
                    &write,
                    &[&id, &ms(seen.now_ms), &seen.online, &seen.agent_json],
                )
                .await
                .db()?;
            Ok(n == 1)
        })
    }

    fn batch_by_client_token(&self, token: String) -> BoxFuture<'_, Result<Option<BatchIds>>> {
        Box::pin(async move { batch_by_token(&self.client().await?, &token).await })
    }

    fn create_batch(&self, batch: NewBatch) -> BoxFuture<'_, Result<Option<BatchIds>>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.db()?;
            let number: i64 = tx
                .query_one("SELECT nextval('batch_numbers')", &[])
                .await
                .db()?
                .try_get(0)
                .db()?;
            let base = number << CHILD_BITS;
            let n = batch.children.len() as i64;
            let counts = Counts {
                pending: n as u32,
                ..Counts::default()
            };
            // A concurrent SendFile with this ClientToken (on any replica) that committed, or
            // commits while this waits on its row, wins: nothing is inserted here.
            let inserted = tx
                .execute(
                    "INSERT INTO batches (task_id, seq, request_id, client_token, request_hash, \
                     payload_json, created_ms, status, n_pending) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (client_token) DO NOTHING",
                    &[
                        &batch.task_id,
                        &(base + n + 1),
                        &batch.request_id,
                        &batch.client_token,
                        &batch.request_hash,
                        &batch.payload_json,
                        &ms(batch.created_ms),
                        &counts.batch_status().as_str(),
                        &(n as i32),
                    ],
                )
                .await
                .db()?;
            if inserted == 0 {
                let token = batch.client_token.as_deref().unwrap_or_default();
                let existing = batch_by_token(&tx, token).await?;
                tx.rollback().await.db()?;
                return match existing {
                    Some(ids) => Ok(Some(ids)),
                    None => Err(Error::new(
                        Code::Internal,
                        format!("controller state (PostgreSQL): ClientToken {token:?} conflicted, yet no batch holds it"),
                    )),
                };
            }
            let (instances, task_ids): (Vec<String>, Vec<String>) =
                batch.children.iter().cloned().unzip();
            let seqs: Vec<i64> = (0..n).map(|i| base + n - i).collect();
            tx.execute(
                "INSERT INTO children (task_id, seq, batch_id, instance_id, status, created_ms, updated_ms) \
                 SELECT u.task_id, u.seq, $4, u.instance_id, 'PENDING', $5, $5 \
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS u (task_id, seq, instance_id)",
                &[&task_ids, &seqs, &instances, &batch.task_id, &ms(batch.created_ms)],
            )
            .await
            .db()?;
            tx.commit().await.db()?;
            Ok(None)
        })
    }

    fn batch_payload(&self, batch_id: String) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT payload_json FROM batches WHERE task_id = $1",
                    &[&batch_id],
                )
                .await
                .db()?;
            row.map(|r| r.try_get(0).db()).transpose()
        })
    }

    fn is_batch(&self, task_id: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            Ok(self
                .client()
                .await?
                .query_opt("SELECT 1 FROM batches WHERE task_id = $1", &[&task_id])
                .await
                .db()?
                .is_some())
        })
    }

    fn child(&self, task_id: String) -> BoxFuture<'_, Result<Option<Child>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let found = children_where(&client, "c.task_id = $1", &[&task_id], false).await?;
            Ok(found.into_iter().next())
        })
    }

    fn batch_children(&self, batch_id: String) -> BoxFuture<'_, Result<Vec<Child>>> {
        Box::pin(async move {
            let client = self.client().await?;
            children_where(&client, "c.batch_id = $1", &[&batch_id], false).await
        })
    }

    fn open_children(&self, instance_id: String) -> BoxFuture<'_, Result<Vec<Child>>> {
        Box::pin(async move {
            let client = self.client().await?;
            children_where(
                &client,
                "c.instance_id = $1 AND c.status IN ('PENDING', 'RUNNING')",
                &[&instance_id],
                false,
            )
            .await
        })
    }

    fn pending_before(&self, created_before_ms: u64) -> BoxFuture<'_, Result<Vec<Child>>> {
        Box::pin(async move {
            let client = self.client().await?;
            children_where(
                &client,
                "c.status = 'PENDING' AND c.created_ms < $1",
                &[&ms(created_before_ms)],
                false,
            )
            .await
        })
    }

    fn update_child(
        &self,
        task_id: String,
        change: ChildChange,
    ) -> BoxFuture<'_, Result<Option<Child>>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.db()?;
            // Locked until commit: another replica's transition of this child waits, then
            // its rule sees what this one wrote.
            let Some(mut child) = children_where(&tx, "c.task_id = $1", &[&task_id], true)
                .await?
                .into_iter()
                .next()
            else {
                return Ok(None);
            };
            let before = child.status;
            if !change(&mut child) {
                tx.rollback().await.db()?;
                return Ok(Some(child));
            }
            let write = tx
                .prepare_cached(
                    "UPDATE children SET status = $2, phase = $3, error_code = $4, error_msg = $5, \
                     result_json = $6, progress = $7, bytes_done = $8, bytes_total = $9, \
                     updated_ms = $10, start_ms = $11, finish_ms = $12, sent = $13, \
                     cancel_requested = $14 WHERE task_id = $1 AND status = $15",
                )
                .await
                .db()?;
            let updated = tx
                .execute(
                    &write,
                    &[
                        &child.task_id,
                        &child.status.as_str(),
                        &child.phase,
                        &child.error_code,
                        &child.error_msg,
                        &child.result_json,
                        &i32::from(child.progress),
                        &ms(child.bytes_done),
                        &child.bytes_total.map(ms),
                        &ms(child.updated_ms),
                        &child.start_ms.map(ms),
                        &child.finish_ms.map(ms),
                        &child.sent,
                        &child.cancel_requested,
                        &before.as_str(),
                    ],
                )
                .await
                .db()?;
            if updated != 1 {
                // Cannot happen under the row lock; refuse rather than write blind.
                return Err(Error::new(
                    Code::Internal,
                    format!(
                        "controller state (PostgreSQL): task {task_id} changed under its row lock"
                    ),
                ));
            }
            if before != child.status {
                let (mut counts, finish_ms) = counts_for_update(&tx, &child.batch_id).await?;
                let old = counts.slot(before);
                *old = old.saturating_sub(1);
                *counts.slot(child.status) += 1;
                let status = counts.batch_status();
                let finish_ms = match (status.is_final(), finish_ms) {
                    (true, None) => Some(ms(child.updated_ms)),
                    (true, kept) => kept,
                    (false, _) => None,
                };
                let write = tx
                    .prepare_cached(
                        "UPDATE batches SET status = $2, n_pending = $3, n_running = $4, \
                         n_finished = $5, n_failed = $6, finish_ms = $7 WHERE task_id = $1",
                    )
                    .await
                    .db()?;
                tx.execute(
                    &write,
                    &[
                        &child.batch_id,
                        &status.as_str(),
                        &(counts.pending as i32),
                        &(counts.running as i32),
                        &(counts.finished as i32),
                        &(counts.failed as i32),
                        &finish_ms,
                    ],
                )
                .await
                .db()?;
            }
            tx.commit().await.db()?;
            Ok(Some(child))
        })
    }

    fn mark_sent(&self, task_ids: Vec<String>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if task_ids.is_empty() {
                return Ok(());
            }
            // One idempotent statement: replicas marking the same children agree.
            let client = self.client().await?;
            let write = client
                .prepare_cached(
                    "UPDATE children SET sent = TRUE WHERE task_id = ANY($1::text[]) AND NOT sent",
                )
                .await
                .db()?;
            client.execute(&write, &[&task_ids]).await.db().map(drop)
        })
    }

    fn describe(&self, filter: TaskFilter) -> BoxFuture<'_, Result<TaskPage>> {
        Box::pin(async move { query::describe(&self.client().await?, &filter).await })
    }
}

#[cfg(test)]
use crate::testing::skip;
#[cfg(test)]
#[path = "../../../../tests/common/postgres.rs"]
mod test_cluster;
#[cfg(test)]
mod tests;
