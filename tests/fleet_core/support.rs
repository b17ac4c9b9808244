//! The harness: a Fleet over a store (a SQLite file in a tempdir, or a fresh database of the
//! test binary's PostgreSQL cluster), registered instances, a recording Outbox, and agent
//! reports built like the agent's own TaskViews.

use ferry::controller::model::{
    ApiError, DescribeTasksQuery, DescribeTasksResponse, SendFileRequest, SendFileResponse, TaskRow,
};
use ferry::controller::ports::{Actions, BoxFuture, Inbox, Outbox};
use ferry::controller::service::{Fleet, FleetConfig, StoreCredentials};
use ferry::controller::store::postgres::PgStore;
use ferry::controller::store::sqlite::SqliteStore;
use ferry::controller::store::Store;
use ferry::error::{Result, TaskCode};
use ferry::fleet::wire::{Order, Report};
use ferry::task::payload::{Credentials, TaskPayload};
use ferry::task::record::{FileResult, Phase, TaskResult, TaskView};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const OSS_SECRET: &str = "oss-secret-must-not-leak";
pub const OSS_TOKEN: &str = "sts-token-must-not-leak";

/// ferry's own Outbox trait, recording what it is asked to publish.
#[derive(Default)]
pub struct RecordingOutbox {
    sent: Mutex<Vec<(String, Order)>>,
    /// Refuse every publish, as a broker that is down.
    failing: AtomicBool,
}

impl RecordingOutbox {
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn orders(&self) -> Vec<(String, Order)> {
        self.sent.lock().unwrap().clone()
    }

    /// The orders once at least `n` were published (they go out in the background).
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Order)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let orders = self.orders();
            if orders.len() >= n {
                return orders;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} orders published: {orders:?}",
                orders.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Outbox for RecordingOutbox {
    fn send(&self, instance_id: &str, order: Order) -> BoxFuture<'_, Result<()>> {
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(ferry::error::Error::new(
                    ferry::error::Code::NetworkConnect,
                    "broker down (test)",
                ))
            });
        }
        self.sent
            .lock()
            .unwrap()
            .push((instance_id.to_string(), order));
        Box::pin(async { Ok(()) })
    }
}

/// Which store a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// `controller.sqlite` in the harness's tempdir.
    Sqlite,
    /// A database of its own (this URL) in the shared PostgreSQL cluster.
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database; `None` after a loud skip when PostgreSQL is missing (a
    /// failure under CI=true).
    pub fn postgres() -> Option<Backend> {
        crate::postgres::database().map(Backend::Postgres)
    }

    /// Another, empty store of the same kind.
    pub fn fresh(&self) -> Backend {
        match self {
            Backend::Sqlite => Backend::Sqlite,
            Backend::Postgres(_) => Backend::postgres().expect("PostgreSQL ran a moment ago"),
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub fleet: Arc<Fleet>,
    /// What the API and the broker ask about callers, read from the same store.
    pub credentials: StoreCredentials,
    pub outbox: Arc<RecordingOutbox>,
    config: FleetConfig,
    requests: AtomicU32,
}

impl Harness {
    pub async fn new(backend: &Backend, instances: &[&str]) -> Harness {
        Harness::with_expiry(backend, instances, Duration::from_secs(3600)).await
    }

    pub async fn with_expiry(backend: &Backend, instances: &[&str], expiry: Duration) -> Harness {
        let config = FleetConfig {
            expiry,
            ..FleetConfig::default()
        };
        Harness::with_config(backend, instances, config).await
    }

    pub async fn with_config(
        backend: &Backend,
        instances: &[&str],
        config: FleetConfig,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, credentials, outbox) = open(&dir, backend, &config).await;
        for id in instances {
            fleet.add_instance(id, false).await.unwrap();
        }
        Harness {
            dir,
            backend: backend.clone(),
            fleet,
            credentials,
            outbox,
            config,
            requests: AtomicU32::new(0),
        }
    }

    /// The same state under a new Fleet and store, as after a controller restart.
    pub async fn restart(self) -> Harness {
        let Harness {
            dir,
            backend,
            fleet,
            config,
            requests,
            ..
        } = self;
        drop(fleet);
        let (fleet, credentials, outbox) = open(&dir, &backend, &config).await;
        Harness {
            dir,
            backend,
            fleet,
            credentials,
            outbox,
            config,
            requests,
        }
    }

    pub fn request(&self, instances: &[&str], token: Option<&str>) -> SendFileRequest {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        SendFileRequest {
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            payload: TaskPayload {
                client_token: token.map(str::to_string),
                source_file_path: "/sdcard/Download/".into(),
                upload_type: "OSS".into(),
                upload_url: "oss://cloudphone-saved-bucket-example/send/a.txt".into(),
                upload_endpoint: Some("oss-cn-hangzhou.aliyuncs.com".into()),
                credentials: Some(Credentials {
                    access_key_id: "STS.id".into(),
                    access_key_secret: OSS_SECRET.into(),
                    security_token: Some(OSS_TOKEN.into()),
                }),
                ..TaskPayload::default()
            },
            request_id: format!("req-{n}"),
        }
    }

    pub async fn send(
        &self,
        instances: &[&str],
        token: Option<&str>,
    ) -> Result<SendFileResponse, ApiError> {
        self.fleet.send_file(self.request(instances, token)).await
    }

    pub async fn describe(&self, query: DescribeTasksQuery) -> DescribeTasksResponse {
        self.fleet.describe_tasks(query).await.unwrap()
    }

    /// One task's row.
    pub async fn row(&self, task_id: &str) -> TaskRow {
        let page = self
            .describe(DescribeTasksQuery {
                task_ids: vec![task_id.to_string()],
                ..Default::default()
            })
            .await;
        assert_eq!(page.data.len(), 1, "{task_id}: {page:?}");
        page.data.into_iter().next().unwrap()
    }

    pub async fn report(&self, instance: &str, task: TaskView) -> Result<()> {
        self.fleet
            .report(Report {
                instance_id: instance.to_string(),
                task,
            })
            .await
    }
}

/// Another controller on the same state: its own store (connection), Fleet and Outbox, as a
/// second replica behind the same database.
pub struct Replica {
    pub fleet: Arc<Fleet>,
}

impl Harness {
    pub async fn replica(&self) -> Replica {
        let (fleet, _, _) = open(&self.dir, &self.backend, &self.config).await;
        Replica { fleet }
    }
}

async fn open(
    dir: &tempfile::TempDir,
    backend: &Backend,
    config: &FleetConfig,
) -> (Arc<Fleet>, StoreCredentials, Arc<RecordingOutbox>) {
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => Arc::new(SqliteStore::open_dir(dir.path()).unwrap()),
        Backend::Postgres(url) => Arc::new(PgStore::open(url).await.unwrap()),
    };
    let outbox = Arc::new(RecordingOutbox::default());
    let fleet = Arc::new(Fleet::new(store.clone(), outbox.clone(), config.clone()));
    (fleet, StoreCredentials(store), outbox)
}

/// A TaskView as an agent reports it.
pub fn view(task_id: &str, phase: Phase, done: u64, total: Option<u64>) -> TaskView {
    TaskView {
        task_id: task_id.into(),
        client_token: None,
        task_status: phase.task_status().into(),
        phase,
        progress: total
            .filter(|t| *t > 0)
            .map(|t| (done * 100 / t) as u8)
            .unwrap_or(0),
        bytes_done: done,
        bytes_total: total,
        error_code: None,
        error_msg: None,
        result: None,
        notes: Vec::new(),
        payload: TaskPayload::default(),
        creation_time: "2026-12-02T00:00:00.000Z".into(),
        start_time: None,
        finish_time: None,
    }
}

pub fn done(task_id: &str) -> TaskView {
    TaskView {
        result: Some(TaskResult {
            files: vec![FileResult {
                path: "/sdcard/Download/a.txt".into(),
                size: 100,
                sha256: "ab".repeat(32),
                content_encoding: None,
            }],
            install: None,
            notes: Vec::new(),
        }),
        ..view(task_id, Phase::Success, 100, Some(100))
    }
}

pub fn failed(task_id: &str, code: &str, message: &str) -> TaskView {
    TaskView {
        error_code: Some(TaskCode::parse(code)),
        error_msg: Some(message.into()),
        ..view(
            task_id,
            if code == "Cancelled" {
                Phase::Cancelled
            } else {
                Phase::Failed
            },
            0,
            None,
        )
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}
