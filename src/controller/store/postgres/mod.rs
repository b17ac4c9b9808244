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
//! - **Group commit** ([`Store::update_children`], delivery's run of reports): one
//!   transaction that first locks all the group's children, then all their batches, each set
//!   in task id order (so overlapping groups on two replicas queue instead of deadlocking),
//!   then applies every change as a single transition would; a deadlock or serialization
//!   error while locking retries the whole group, a bounded number of times.
//! - **Expiry** goes through the same transitions, so two replicas expiring one child leave
//!   one final state; only the one whose rule moved the row reports it as expired.
//!
//! The statements of the frequent calls (transitions, a Hello's touch, orders sent, the API's
//! AccessKey and the broker's password lookups) are prepared once per pooled connection
//! (deadpool's statement cache), not parsed on every call.
//!
//! Schema: numbered migrations in `../migrations/postgres/`, applied at open in one
//! transaction under an advisory lock (two replicas starting together migrate once) and
//! recorded in `schema_version`; a database migrated by a newer build is refused.

mod connect;
mod query;
mod rows;
mod tasks;

pub use connect::{describe_target, parse_url};

use super::{
    BatchIds, Child, ChildChange, Instance, NewBatch, OpsCounts, Seen, Store, TaskFilter, TaskPage,
    OPS_COUNTS_SQL,
};
use crate::controller::ports::BoxFuture;
use crate::error::Result;
use deadpool_postgres::Pool;
use rows::{batch_by_token, children_where, opt_u64, Db};

/// A batch's sort keys are `number << CHILD_BITS` plus at most 2^20 - 1 (the children, then
/// the batch above them); SendFile names at most 10,000 instances.
const CHILD_BITS: u32 = 20;

pub struct PgStore {
    pool: Pool,
    /// Where the store connects, without its password: for messages.
    shown: String,
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
        bcrypt_hash: String,
        rotate: bool,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Two replicas adding one instance: the primary key lets one insert win.
            let inserted = client
                .execute(
                    "INSERT INTO instances (id, password_hash, bcrypt_hash, created_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    &[&id, &password_hash, &bcrypt_hash, &ms(now_ms)],
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
                    "UPDATE instances SET password_hash = $2, bcrypt_hash = $3 WHERE id = $1",
                    &[&id, &password_hash, &bcrypt_hash],
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

    fn instance_bcrypt_hashes(
        &self,
    ) -> BoxFuture<'_, Result<crate::controller::ports::BcryptHashes>> {
        Box::pin(async move {
            self.client()
                .await?
                .query(
                    "SELECT id, bcrypt_hash FROM instances ORDER BY id COLLATE \"C\"",
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
                    "UPDATE instances SET last_seen_ms = $2, \
                     online = CASE WHEN $5::BIGINT IS NULL OR $5 >= presence_connection \
                         THEN COALESCE($3, online) ELSE online END, \
                     presence_connection = GREATEST(presence_connection, COALESCE($5, 0)), \
                     agent_json = COALESCE($4, agent_json) WHERE id = $1",
                )
                .await
                .db()?;
            let n = client
                .execute(
                    &write,
                    &[
                        &id,
                        &ms(seen.now_ms),
                        &seen.online,
                        &seen.agent_json,
                        &seen.connection.map(ms),
                    ],
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
        Box::pin(tasks::create_batch(self, batch))
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
        Box::pin(tasks::update_child(self, task_id, change))
    }

    fn update_children(
        &self,
        changes: Vec<(String, ChildChange)>,
    ) -> BoxFuture<'_, Result<Vec<Option<Child>>>> {
        Box::pin(tasks::update_children(self, changes))
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
                    "UPDATE children SET sent = TRUE WHERE task_id IN (SELECT task_id FROM children \
                     WHERE task_id = ANY($1::text[]) AND NOT sent ORDER BY task_id FOR UPDATE)",
                )
                .await
                .db()?;
            client.execute(&write, &[&task_ids]).await.db().map(drop)
        })
    }

    fn describe(&self, filter: TaskFilter) -> BoxFuture<'_, Result<TaskPage>> {
        Box::pin(async move { query::describe(&self.client().await?, &filter).await })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.client().await?.query_one("SELECT 1", &[]).await.db()?;
            Ok(())
        })
    }

    fn ops_counts(&self) -> BoxFuture<'_, Result<OpsCounts>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut counts = OpsCounts::default();
            for r in client.query(OPS_COUNTS_SQL[0], &[]).await.db()? {
                let status: String = r.try_get(0).db()?;
                let children = [
                    r.try_get::<_, i64>(2).db()?,
                    r.try_get(3).db()?,
                    r.try_get(4).db()?,
                    r.try_get(5).db()?,
                ];
                counts.add(&status, r.try_get(1).db()?, children);
            }
            let r = client.query_one(OPS_COUNTS_SQL[1], &[]).await.db()?;
            counts.agents_online = r.try_get::<_, i64>(0).db()?.max(0) as u64;
            counts.instances = r.try_get::<_, i64>(1).db()?.max(0) as u64;
            Ok(counts)
        })
    }
}

#[cfg(test)]
use crate::testing::skip;
#[cfg(test)]
#[path = "../../../../tests/common/postgres.rs"]
mod test_cluster;
#[cfg(test)]
mod tests;
