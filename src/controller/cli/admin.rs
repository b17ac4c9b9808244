//! Credentials kept in the state folder: API AccessKeys, agents' MQTT passwords, the
//! controller's own broker user, and the files an external mosquitto or NATS cluster needs.

use super::StateDirArgs;
use crate::controller::ports::{BoxFuture, Outbox};
use crate::controller::service::{Fleet, FleetConfig, StoreCredentials};
use crate::controller::store::postgres::PgStore;
use crate::controller::store::sqlite::{SqliteStore, FILE_NAME};
use crate::controller::store::Store;
use crate::error::{Code, Error, Result};
use crate::fleet::wire::Order;
use clap::Args;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The controller's MQTT user name; no instance may take it.
pub const CONTROLLER_USER: &str = "ferry-controller";
const BROKER_SECRET_FILE: &str = "broker-controller.secret";

#[derive(Args, Debug)]
pub struct InstanceAddArgs {
    #[command(flatten)]
    pub state: StateDirArgs,
    /// The broker the agent dials, as it reaches it (`mqtt://HOST:PORT`, `mqtts://HOST:PORT`);
    /// repeated for the nodes of a cluster (printed as `brokers = [...]`)
    #[arg(long, value_name = "URL", required = true)]
    pub broker: Vec<String>,
    /// Give an existing instance a new password (the old one stops working)
    #[arg(long)]
    pub rotate: bool,
    /// The phones' instance ids (Alibaba's `acp-…`); several print one `[fleet]` section
    /// each (a simulator's instances file, `ferry-fleet-sim --instances`)
    #[arg(required = true, value_name = "INSTANCE_ID")]
    pub instance_ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MosquittoArgs {
    #[command(flatten)]
    pub state: StateDirArgs,
    /// Folder to write `passwd` and `acl` into (mosquitto's password_file and acl_file)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct NatsArgs {
    #[command(flatten)]
    pub state: StateDirArgs,
    /// File to write the account's `users: [...]` into (for nats-server's `include`)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// The outbox of a process that does not serve: commands that only manage credentials never
/// send orders, and one that tried would be told no broker is connected here.
struct NotServing;

impl Outbox for NotServing {
    fn send(&self, instance_id: &str, _order: Order) -> BoxFuture<'_, Result<()>> {
        let message = format!("no broker connection in this process; {instance_id}'s order goes out from `ferry-controller serve`");
        Box::pin(async move { Err(Error::new(Code::ApiShuttingDown, message)) })
    }
}

/// Opens (creating) the state folder, 0700, and the store: `--database`'s PostgreSQL
/// database, else the folder's SQLite file.
pub async fn open_store(args: &StateDirArgs) -> Result<Arc<dyn Store>> {
    let dir = args.state_dir.clone();
    let joined =
        |e: tokio::task::JoinError| Error::new(Code::Internal, format!("opening the store: {e}"));
    match &args.database {
        Some(url) => {
            if !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://")) {
                return Err(Error::new(
                    Code::InvalidConfig,
                    format!(
                        "--database {} is not a postgres:// URL (postgres://USER@HOST:PORT/DATABASE)",
                        crate::redact::url(&url.0)
                    ),
                ));
            }
            tokio::task::spawn_blocking(move || prepare_folder(&dir))
                .await
                .map_err(joined)??;
            Ok(Arc::new(PgStore::open(&url.0).await?))
        }
        None => {
            let store = tokio::task::spawn_blocking(move || {
                prepare_folder(&dir)?;
                SqliteStore::open_dir(&dir)
            })
            .await
            .map_err(joined)??;
            Ok(Arc::new(store))
        }
    }
}

fn prepare_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating state folder", dir, &e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("securing state folder", dir, &e))
}

/// The store as logs show it: the SQLite file, or the database without its password.
pub fn store_shown(args: &StateDirArgs) -> String {
    match &args.database {
        Some(url) => crate::redact::url(&url.0),
        None => args.state_dir.join(FILE_NAME).display().to_string(),
    }
}

async fn offline_fleet(args: &StateDirArgs) -> Result<Fleet> {
    let store = open_store(args).await?;
    Ok(Fleet::new(
        store,
        Arc::new(NotServing),
        FleetConfig::default(),
    ))
}

/// The controller's own broker password, made on first use and kept 0600 in the state
/// folder: `serve` logs in with it, and `mosquitto-files` writes its hash for mosquitto.
pub fn controller_broker_password(state_dir: &Path) -> Result<String> {
    let path = state_dir.join(BROKER_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("reading", &path, &e)),
    }
    let secret = crate::controller::secrets::new_secret();
    write_owner_only(&path, &secret)?;
    Ok(secret)
}

/// Writes `text` to a file only its owner reads (it holds a secret or a password hash),
/// flushed to disk before the caller prints or uses it.
fn write_owner_only(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("creating", path, &e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing", path, &e))
}

pub async fn access_key_create(args: &StateDirArgs) -> Result<()> {
    let (id, secret) = offline_fleet(args).await?.create_access_key().await?;
    println!("{id} {secret}");
    Ok(())
}

pub async fn instance_add(args: &InstanceAddArgs) -> Result<()> {
    if args.instance_ids.iter().any(|id| id == CONTROLLER_USER) {
        return Err(Error::new(
            Code::InvalidInstanceId,
            format!("{CONTROLLER_USER} is the controller's own broker user, not a phone"),
        ));
    }
    let brokers: Vec<&str> = args.broker.iter().map(|b| b.trim()).collect();
    for broker in &brokers {
        if !(broker.starts_with("mqtt://") || broker.starts_with("mqtts://"))
            || broker.contains(['"', '\\', '@'])
        {
            return Err(Error::new(
                Code::InvalidConfig,
                format!("--broker {} must be mqtt://HOST:PORT or mqtts://HOST:PORT, as the phone reaches it", crate::redact::url(broker)),
            ));
        }
    }
    let fleet = offline_fleet(&args.state).await?;
    // TOML basic strings: the values are checked ASCII without quotes or backslashes.
    let broker_line = match brokers.as_slice() {
        [one] => format!("broker = \"{one}\""),
        many => format!(
            "brokers = [{}]",
            many.iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut out = std::io::stdout().lock();
    for id in &args.instance_ids {
        let password = fleet.add_instance(id, args.rotate).await?;
        writeln!(
            out,
            "[fleet]\n{broker_line}\ninstance_id = \"{id}\"\npassword = \"{password}\""
        )
        .map_err(|e| Error::new(Code::Internal, format!("writing to stdout: {e}")))?;
    }
    Ok(())
}

pub async fn mosquitto_files(args: &MosquittoArgs) -> Result<()> {
    let credentials = StoreCredentials(open_store(&args.state).await?);
    let password = controller_broker_password(&args.state.state_dir)?;
    let (passwd, acl) =
        crate::controller::mosquitto::mosquitto_files(&credentials, CONTROLLER_USER, &password)
            .await?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io("creating", &args.out, &e))?;
    for (name, text) in [("passwd", passwd), ("acl", acl)] {
        let path = args.out.join(name);
        write_owner_only(&path, &text)?;
        println!("{}", path.display());
    }
    Ok(())
}

pub async fn nats_files(args: &NatsArgs) -> Result<()> {
    let credentials = StoreCredentials(open_store(&args.state).await?);
    let password = controller_broker_password(&args.state.state_dir)?;
    let users =
        crate::controller::nats::nats_users(&credentials, CONTROLLER_USER, &password).await?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, &e))?;
    }
    write_owner_only(&args.out, &users.text)?;
    println!("{}", args.out.display());
    if !users.without_bcrypt.is_empty() {
        eprintln!(
            "ferry-controller: {} instance(s) left out of {}: registered before bcrypt hashes \
             were kept, they cannot log in to NATS until their password is rotated \
             (`ferry-controller instance add --rotate --broker URL ID`, then the phone gets the \
             new [fleet] TOML): {}",
            users.without_bcrypt.len(),
            args.out.display(),
            users.without_bcrypt.join(" ")
        );
    }
    Ok(())
}
