//! The fleet as real processes, for tests/fleet_e2e.rs: a controller state folder with an
//! AccessKey and N phones (`instance add`); `ferry-controller serve` with its embedded broker,
//! or with Debian's mosquitto (`serve --broker`, auth and ACL from `mosquitto-files`), or on
//! a 3-node NATS cluster (users from `nats-files`, the agents listing every node); one
//! `ferry daemon` per phone on its own device root, each started, killed (-9) and restarted at
//! will; and the API clients (Alibaba's Python SDK, ferry-controller's own signed client).
//! For tests/fleet_replicas.rs: a broker the test runs itself ([`Broker::External`], a NATS
//! cluster), `--database` for every command ([`Fleet::prepare`]) and more `serve` replicas on
//! the same state ([`Fleet::add_replica`]), each with its own API port and log.
//! Every process is killed when its handle drops, so no test leaves one behind.

#![allow(dead_code)]

use crate::common::http_server::{Resource, TestServer};
use crate::common::mosquitto::{self, Mosquitto, Peer};
use crate::nats::NatsCluster;
use crate::skip;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_ferry-controller");
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// How long a batch, a log line or a start may take before the test gives up.
pub const WAIT: Duration = Duration::from_secs(180);

/// Which broker carries the fleet's MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    /// The controller's own (`serve --mqtt-listen`): it lives and dies with the controller.
    Embedded,
    /// Debian's mosquitto with the files `mosquitto-files` writes (`serve --broker`).
    Mosquitto,
    /// One the test runs (a NATS cluster): `serve` gets its flags from `serve_extra`, and
    /// agents dial what [`Fleet::set_agent_broker`] wrote.
    External,
    /// A 3-node NATS cluster with the users `nats-files` writes: the controller with
    /// `serve --nats` (every node), every agent with `brokers = [...]` listing the three nodes.
    Nats,
}

/// One `serve` process: its API address, its own flags and log.
struct Replica {
    api: String,
    extra: Vec<String>,
    log: String,
    proc: Option<Proc>,
}

/// A child process killed (-9) when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct Fleet {
    /// The registered phones, `PREFIX00`, `PREFIX01`, …
    pub ids: Vec<String>,
    /// Where agents dial: the embedded broker's port or mosquitto's.
    mqtt: u16,
    ak: (String, String),
    broker: Broker,
    /// Flags of every ferry-controller command (`--database`).
    state_extra: Vec<String>,
    serve_extra: Vec<String>,
    mosquitto: Option<Mosquitto>,
    /// The `serve` replicas; the first is "the controller".
    controllers: Vec<Replica>,
    nats: Option<NatsCluster>,
    agents: HashMap<String, Proc>,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// `phones` phones registered (none started yet) and the controller serving with
    /// `serve_extra` flags; `None` when mosquitto is wanted and missing (a skip, a failure
    /// under CI=true).
    pub fn start(
        broker: Broker,
        prefix: &str,
        phones: usize,
        serve_extra: &[&str],
    ) -> Option<Self> {
        let mut fleet = Self::prepare(broker, prefix, phones, &[], serve_extra)?;
        fleet.start_controller();
        Some(fleet)
    }

    /// [`Fleet::start`] without starting the controller, every ferry-controller command
    /// given `state_extra` too (`--database URL`).
    pub fn prepare(
        broker: Broker,
        prefix: &str,
        phones: usize,
        state_extra: &[&str],
        serve_extra: &[&str],
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("controller");
        let line = run_ok(
            Command::new(CONTROLLER)
                .args(["access-key", "create", "--state-dir"])
                .arg(&state)
                .args(state_extra),
        );
        let mut words = line.split_whitespace();
        let ak = (
            words.next().unwrap().to_string(),
            words.next().unwrap().to_string(),
        );
        let ids: Vec<String> = (0..phones).map(|i| format!("{prefix}{i:02}")).collect();
        let mut mqtt = free_port();
        for id in &ids {
            let toml = run_ok(
                Command::new(CONTROLLER)
                    .args(["instance", "add", "--state-dir"])
                    .arg(&state)
                    .args(state_extra)
                    .args(["--broker", &format!("mqtt://127.0.0.1:{mqtt}"), id]),
            );
            assert!(toml.starts_with("[fleet]\n"), "{toml}");
            std::fs::write(dir.path().join(format!("{id}.toml")), toml).unwrap();
            std::fs::create_dir_all(dir.path().join("devices").join(id).join("sdcard/Download"))
                .unwrap();
        }
        let mut nats = None;
        let mosquitto = match broker {
            Broker::Embedded | Broker::External => None,
            Broker::Nats => {
                let file = dir.path().join("nats-users.conf");
                run_ok(
                    Command::new(CONTROLLER)
                        .args(["nats-files", "--state-dir"])
                        .arg(&state)
                        .arg("--out")
                        .arg(&file),
                );
                let Some(cluster) = NatsCluster::start(3, &users_entries(&file)) else {
                    skip::skip("nats-server is not installed (scripts/test.sh installs it)");
                    return None;
                };
                mqtt = url_port(&cluster.mqtt_url(0));
                let urls = cluster.mqtt_urls();
                for id in &ids {
                    set_brokers(&dir.path().join(format!("{id}.toml")), &urls);
                }
                nats = Some(cluster);
                None
            }
            Broker::Mosquitto => {
                let files = dir.path().join("mosquitto");
                run_ok(
                    Command::new(CONTROLLER)
                        .args(["mosquitto-files", "--state-dir"])
                        .arg(&state)
                        .arg("--out")
                        .arg(&files),
                );
                let Some(m) = Mosquitto::start(mosquitto::Options {
                    password_file: Some(files.join("passwd")),
                    acl_file: Some(files.join("acl")),
                    ..mosquitto::Options::default()
                }) else {
                    skip::skip("mosquitto is not installed (Debian package mosquitto)");
                    return None;
                };
                // The agents dial the broker as it really is (instance add printed the URL
                // it was given before mosquitto had a port).
                mqtt = m.port;
                for id in &ids {
                    set_broker_line(&dir.path().join(format!("{id}.toml")), &m.url());
                }
                Some(m)
            }
        };
        let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Some(Fleet {
            ids,
            mqtt,
            ak,
            broker,
            state_extra: strings(state_extra),
            serve_extra: strings(serve_extra),
            mosquitto,
            controllers: vec![Replica {
                api: format!("127.0.0.1:{}", free_port()),
                extra: Vec::new(),
                log: "controller".into(),
                proc: None,
            }],
            nats,
            agents: HashMap::new(),
            dir,
        })
    }

    /// The broker phone `id`'s agent dials (for [`Broker::External`]).
    pub fn set_agent_broker(&self, id: &str, url: &str) {
        set_broker_line(&self.path(&format!("{id}.toml")), url);
    }

    /// [`Fleet::start`] with no extra flags and every phone's agent started.
    pub fn online(broker: Broker, prefix: &str, phones: usize) -> Option<Self> {
        let mut fleet = Self::start(broker, prefix, phones, &[])?;
        let ids = fleet.ids.clone();
        fleet.start_agents(&ids);
        Some(fleet)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `serve` on the same state, ports and broker; returns once the API listens.
    pub fn start_controller(&mut self) {
        self.start_replica(0);
    }

    /// Another `serve` on the same state and broker with its own API port and `extra` flags
    /// (log `controller-N`), started; its index.
    pub fn add_replica(&mut self, extra: &[&str]) -> usize {
        let i = self.controllers.len();
        self.controllers.push(Replica {
            api: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: format!("controller-{i}"),
            proc: None,
        });
        self.start_replica(i);
        i
    }

    /// Flags of replica `i` alone (the first's, before [`Fleet::start_controller`]).
    pub fn set_replica_flags(&mut self, i: usize, extra: &[&str]) {
        self.controllers[i].extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts replica `i` again; returns once its API listens.
    pub fn start_replica(&mut self, i: usize) {
        let replica = &self.controllers[i];
        assert!(replica.proc.is_none(), "replica {i} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{}.log", replica.log)))
            .unwrap();
        let mut cmd = Command::new(CONTROLLER);
        cmd.args(["serve", "--state-dir"])
            .arg(self.path("controller"))
            .args(&self.state_extra)
            .args(["--listen", &replica.api]);
        match (&self.mosquitto, &self.nats, self.broker) {
            (Some(m), _, _) => cmd.args(["--broker", &m.url()]),
            // On NATS the controller reads agent messages from JetStream (`--nats`): an MQTT
            // subscription's session lives on the cluster and can stall while a node dies.
            // Agents take orders at QoS 0 there (README): what a dying node drops is sent
            // again after --resend-secs.
            (None, Some(n), _) => cmd.args([
                "--broker",
                &n.mqtt_urls().join(","),
                "--nats",
                &n.nats_urls().join(","),
                "--resend-secs",
                "3",
            ]),
            (None, None, Broker::External) => &mut cmd,
            (None, None, _) => cmd.args(["--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt)]),
        };
        cmd.args(&self.serve_extra).args(&replica.extra);
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&replica.api).is_err() {
            assert!(Instant::now() < deadline, "replica {i} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.controllers[i].proc = Some(Proc(child));
    }

    /// kill -9 replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        self.controllers[i].proc.take().expect("the replica runs");
    }

    /// The API's `IP:PORT`.
    pub fn api(&self) -> &str {
        &self.controllers[0].api
    }

    /// Replica `i`'s API `IP:PORT`.
    pub fn api_of(&self, i: usize) -> &str {
        &self.controllers[i].api
    }

    /// The API AccessKey (id, secret).
    pub fn access_key(&self) -> (&str, &str) {
        (&self.ak.0, &self.ak.1)
    }

    /// The external broker, when the fleet runs on mosquitto.
    pub fn mosquitto(&mut self) -> Option<&mut Mosquitto> {
        self.mosquitto.as_mut()
    }

    /// The NATS cluster, when the fleet runs on one.
    pub fn nats(&mut self) -> Option<&mut NatsCluster> {
        self.nats.as_mut()
    }

    /// Replaces one phone's broker list (takes effect at its agent's next start).
    pub fn set_agent_brokers(&self, id: &str, urls: &[String]) {
        set_brokers(&self.path(&format!("{id}.toml")), urls);
    }

    /// Sends SIGTERM to the controller (it keeps running while it drains).
    pub fn sigterm_controller(&self) {
        let child = &self.controllers[0]
            .proc
            .as_ref()
            .expect("the controller runs")
            .0;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the controller to exit (after [`Fleet::sigterm_controller`]): its status.
    pub async fn wait_controller_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let proc = self.controllers[0]
                .proc
                .as_mut()
                .expect("the controller runs");
            if let Some(status) = proc.0.try_wait().unwrap() {
                self.controllers[0].proc = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the controller never exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 the controller (and with it the embedded broker).
    pub fn kill_controller(&mut self) {
        self.kill_replica(0);
    }

    /// Restarts the broker: mosquitto is stopped and started on its port and saved state;
    /// the embedded broker lives in the controller, so the controller is killed (-9) and
    /// started again.
    pub fn restart_broker(&mut self) {
        match &mut self.mosquitto {
            Some(m) => m.restart(),
            None => {
                assert_ne!(
                    self.broker,
                    Broker::External,
                    "the test restarts its broker"
                );
                self.kill_controller();
                self.start_controller();
            }
        }
    }

    pub fn start_agent(&mut self, id: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{id}.log")))
            .unwrap();
        let child = Command::new(FERRY)
            .arg("--config")
            .arg(self.path(&format!("{id}.toml")))
            .arg("--state-dir")
            .arg(self.dir.path().join("agents").join(id))
            .arg("--device-root")
            .arg(self.device(id))
            .args(["daemon", "--listen", "off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(self.agents.insert(id.to_string(), Proc(child)).is_none());
    }

    pub fn start_agents(&mut self, ids: &[String]) {
        for id in ids {
            self.start_agent(id);
        }
    }

    /// kill -9 one agent.
    pub fn kill_agent(&mut self, id: &str) {
        self.agents.remove(id).expect("the agent runs");
    }

    pub fn device(&self, id: &str) -> PathBuf {
        self.dir.path().join("devices").join(id)
    }

    /// The agent's `[fleet] password`: its broker credentials.
    pub fn agent_password(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{id}.toml"))).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("password = "))
            .expect("a password line");
        line.trim_matches('"').to_string()
    }

    /// The controller's own broker password (what `serve` logs in with).
    pub fn controller_password(&self) -> String {
        std::fs::read_to_string(self.path("controller/broker-controller.secret"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The users of a NATS account for this fleet, as `ferry-controller nats-files` writes
    /// them (bcrypt passwords, per-agent permissions): the entries inside its `users: [...]`.
    /// It also fixes the controller's password, as `serve` would.
    pub fn nats_users(&self) -> String {
        let out = self.path("nats-users.conf");
        run_ok(
            Command::new(CONTROLLER)
                .args(["nats-files", "--state-dir"])
                .arg(self.path("controller"))
                .args(&self.state_extra)
                .arg("--out")
                .arg(&out),
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let entries: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("{user:"))
            .collect();
        assert_eq!(entries.len(), self.ids.len() + 1, "{text}");
        entries.join("\n") + "\n"
    }

    /// A plain MQTT client on the fleet's broker, as `user`.
    pub fn mqtt_client(&self, client_id: &str, user: &str, password: &str) -> Peer {
        Peer::connect(self.mqtt, client_id, user, password, &[])
    }

    /// One SDK call through tests/sdk/drive.py; its single outcome.
    pub fn sdk(&self, python: &Path, call: &str, request: Value) -> Value {
        self.sdk_at(0, python, call, request)
    }

    /// [`Fleet::sdk`] on replica `i`.
    pub fn sdk_at(&self, i: usize, python: &Path, call: &str, request: Value) -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive.py");
        let out = Command::new(python)
            .arg(script)
            .args([
                &self.controllers[i].api,
                &self.ak.0,
                &self.ak.1,
                call,
                "--request",
            ])
            .arg(request.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "drive.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut outcomes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        outcomes.remove(0)
    }

    /// ferry-controller's own signed client, `ARGS --json`; `None` when it fails (the
    /// controller may be restarting).
    pub fn try_client(&self, args: &[&str]) -> Option<Value> {
        self.try_client_at(0, args)
    }

    /// [`Fleet::try_client`] on replica `i`.
    pub fn try_client_at(&self, i: usize, args: &[&str]) -> Option<Value> {
        let ak_file = self.path("ak");
        std::fs::write(&ak_file, format!("{} {}", self.ak.0, self.ak.1)).unwrap();
        let out = Command::new(CONTROLLER)
            .args(args)
            .args(["--json", "--endpoint", &self.controllers[i].api])
            .arg("--access-key-file")
            .arg(&ak_file)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn client(&self, args: &[&str]) -> Value {
        self.client_at(0, args)
    }

    pub fn client_at(&self, i: usize, args: &[&str]) -> Value {
        self.try_client_at(i, args)
            .unwrap_or_else(|| panic!("ferry-controller {args:?} on replica {i} failed"))
    }

    /// SendFile of `url` to `/sdcard/Download/NAME` on `ids` through the signed client: the
    /// batch id and each phone's child task id.
    pub fn send_file(
        &self,
        ids: &[String],
        name: &str,
        url: &str,
    ) -> (String, HashMap<String, String>) {
        let mut args = vec!["send-file"];
        for id in ids {
            args.extend(["--instance", id.as_str()]);
        }
        let path = format!("/sdcard/Download/{name}");
        args.extend(["--source-file-path", &path, "--upload-type", "DOWNLOAD_URL"]);
        args.extend(["--upload-url", url]);
        let sent = self.client(&args);
        let children = sent["Data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let id = c["AndroidInstanceId"].as_str().unwrap().to_string();
                (id, c["TaskId"].as_str().unwrap().to_string())
            })
            .collect::<HashMap<_, _>>();
        assert_eq!(children.len(), ids.len(), "{sent}");
        (sent["TaskId"].as_str().unwrap().to_string(), children)
    }

    /// The batch row (level 1); Null while the controller is away.
    pub fn batch(&self, batch: &str) -> Value {
        self.batch_at(0, batch)
    }

    /// [`Fleet::batch`] on replica `i`.
    pub fn batch_at(&self, i: usize, batch: &str) -> Value {
        self.try_client_at(i, &["describe-tasks", "--task-id", batch])
            .map_or(Value::Null, |answer| answer["Data"][0].clone())
    }

    /// The batch's per-phone rows (level 2).
    pub fn children(&self, batch: &str) -> Vec<Value> {
        self.children_at(0, batch)
    }

    /// [`Fleet::children`] on replica `i`.
    pub fn children_at(&self, i: usize, batch: &str) -> Vec<Value> {
        let page = self.client_at(i, &children_args(batch));
        page["Data"].as_array().unwrap().clone()
    }

    /// One task's row.
    pub fn task(&self, task: &str) -> Value {
        self.client(&["describe-tasks", "--task-id", task])["Data"][0].clone()
    }

    /// Waits for the batch to end (FINISHED or FAILED); its row.
    pub async fn wait_batch_end(&self, batch: &str) -> Value {
        self.wait_batch_end_at(0, batch).await
    }

    /// [`Fleet::wait_batch_end`] asking replica `i`.
    pub async fn wait_batch_end_at(&self, i: usize, batch: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let row = self.batch_at(i, batch);
            if row["TaskStatus"] == "FINISHED" || row["TaskStatus"] == "FAILED" {
                return row;
            }
            if Instant::now() >= deadline {
                panic!("the batch never ended: {row}\n{}", self.stuck(i, batch));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// For a failure message: each child of `batch` not yet final (replica `i`'s view) with
    /// the end of its phone's log.
    fn stuck(&self, i: usize, batch: &str) -> String {
        let mut out = String::new();
        for child in self
            .try_client_at(i, &children_args(batch))
            .map_or_else(Vec::new, |page| {
                page["Data"].as_array().cloned().unwrap_or_default()
            })
        {
            if child["TaskStatus"] == "FINISHED" || child["TaskStatus"] == "FAILED" {
                continue;
            }
            let phone = child["InstanceId"].as_str().unwrap_or("?").to_string();
            let log = self.log(&phone);
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            out.push_str(&format!(
                "{phone} {}: {:#?}\n",
                child["TaskStatus"],
                tail.iter().rev().collect::<Vec<_>>()
            ));
        }
        out
    }

    /// What `who` (`controller` or a phone's id) logged so far.
    pub fn log(&self, who: &str) -> String {
        // Lossy: one stray byte must not hide the whole log.
        let bytes = std::fs::read(self.path(&format!("{who}.log"))).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What the broker logged: mosquitto's log, or the controller's for the embedded one.
    pub fn broker_log(&self) -> String {
        match &self.mosquitto {
            Some(m) => m.log_text(),
            None => self.log("controller"),
        }
    }

    /// Waits until `log()` holds `needle` at least `times` times.
    pub async fn wait_log(&self, what: &str, log: impl Fn() -> String, needle: &str, times: usize) {
        let deadline = Instant::now() + WAIT;
        while log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?} ({what})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Rewrites an agent config's `broker = ` line.
fn set_broker_line(path: &Path, url: &str) {
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.starts_with("broker = ") {
            true => format!("broker = \"{url}\"\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// `GET path` on an ops address (`--ops-listen`): status and body; `None` when nothing
/// listens there.
pub fn ops_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, body.to_string()))
}

/// The `/metrics` samples, `name{labels}` → value.
pub fn metrics(addr: &str) -> HashMap<String, f64> {
    let (status, text) = ops_get(addr, "/metrics").expect("the ops endpoint answers");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect()
}

/// Waits until `/readyz` on `addr` answers 200.
pub async fn wait_ready(addr: &str) {
    let deadline = Instant::now() + WAIT;
    while ops_get(addr, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "{addr} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The entries of the `users: [...]` list `nats-files` wrote (nats-server includes the file in
/// an account's map; the test cluster's config takes the entries).
fn users_entries(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let start = text.find("users: [\n").expect("a users list") + "users: [\n".len();
    let end = start + text[start..].find("\n]").expect("the list's end") + 1;
    text[start..end].to_string()
}

fn url_port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Rewrites an agent's `[fleet]` TOML to list `urls` as `brokers`, taking orders at QoS 0
/// as README says to on NATS.
fn set_brokers(path: &Path, urls: &[String]) {
    let list = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(
            |l| match l.starts_with("broker = ") || l.starts_with("brokers = ") {
                true => format!("brokers = [{list}]\norder_qos = 0\n"),
                false if l.starts_with("order_qos = ") => String::new(),
                false => format!("{l}\n"),
            },
        )
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Serves `len` bytes of a fixed pattern at `path`, each response throttled to `rate` bytes/s
/// (so a batch is still mid-flight when a test kills something); returns the body.
pub fn serve_body(server: &TestServer, path: &str, len: u32, rate: Option<u64>) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
    server.put(path, Resource::new(body.clone()));
    server.set_rate(path, rate);
    body
}

/// Requests for `path` from byte 0 (whole fetches) and from a later byte (resumed ones): "ran
/// once" is one request from byte 0 per phone.
pub fn fetches(server: &TestServer, path: &str) -> (usize, usize) {
    let requests = server.requests(path);
    let from_zero = requests
        .iter()
        .filter(|r| r.range().is_none_or(|(first, _)| first == 0))
        .count();
    (from_zero, requests.len() - from_zero)
}

/// Waits until `path` was requested at least `n` times: every phone is fetching.
pub async fn wait_fetching(server: &TestServer, path: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while server.requests(path).len() < n {
        assert!(
            Instant::now() < deadline,
            "the phones never started fetching"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `describe-tasks` arguments listing a batch's per-phone rows (level 2, up to 100).
fn children_args(batch: &str) -> [&str; 7] {
    [
        "describe-tasks",
        "--parent-task-id",
        batch,
        "--level",
        "2",
        "--max-results",
        "100",
    ]
}
