//! Connecting: the connection string (password from `PGPASSWORD` when the URL has none, shown
//! without it), the pool, and the migrations, applied in one transaction under an advisory
//! lock so that replicas starting together migrate once.

use super::rows::{chain, Db};
use super::PgStore;
use crate::error::{Code, Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::NoTls;

/// `(version, SQL)`, in order; a new schema change is a new file, never an edit.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../migrations/postgres/0002_bcrypt.sql")),
    (
        3,
        include_str!("../migrations/postgres/0003_presence_connection.sql"),
    ),
];

/// The advisory lock migrations run under (any constant the database's other users do not
/// take): "ferry" in ASCII.
const MIGRATION_LOCK: i64 = 0x66_65_72_72_79;

/// Connections one controller keeps open at most.
const POOL_SIZE: usize = 16;

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

    pub(super) async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            Error::new(
                Code::Internal,
                format!(
                    "controller state (PostgreSQL at {}): {}",
                    self.shown,
                    chain(&e)
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
