//! A real mosquitto broker (Debian's package) on 127.0.0.1 for every fleet test (the agent's,
//! the controller's delivery, the whole fleet): started on a free port with a generated
//! config, optionally with a password file and an ACL (the fleet's, see [`fleet_auth`], or the
//! files `mosquitto-files` writes, see [`Mosquitto::start_in`]), persistence on (sessions and
//! retained messages survive [`Mosquitto::restart`], as on a production broker), stopped when
//! dropped. [`Peer`] is a blocking MQTT client that records every message it receives, for
//! tests acting as the controller. TLS files come from tests/common/test_ca.rs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The broker binary, if installed (`apt-get install mosquitto`).
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// mosquitto_passwd file; None = anonymous clients allowed.
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    /// PEM files of a TLS listener: `(cafile, certfile, keyfile)`; None = plain TCP.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// More config lines (`use_username_as_clientid true`…).
    pub extra: String,
}

pub struct Mosquitto {
    /// The listener of [`Options`] (TLS when `tls` is set).
    pub port: u16,
    /// With TLS, a second, plain listener on 127.0.0.1 (for the test's own clients).
    pub plain_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts the broker; `None` when mosquitto is not installed (the caller skips/fails
    /// through `skip`).
    pub fn start(options: Options) -> Option<Mosquitto> {
        Self::start_in(|_| options)
    }

    /// Like [`Mosquitto::start`], the options made from the broker's own folder (to write a
    /// password or ACL file there first: it lives as long as the broker).
    pub fn start_in(options: impl FnOnce(&Path) -> Options) -> Option<Mosquitto> {
        binary()?;
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        let port = free_port();
        let plain_port = options.tls.as_ref().map(|_| free_port());
        let mut conf = String::new();
        if let Some(plain) = plain_port {
            conf.push_str(&format!(
                "per_listener_settings false\nlistener {plain} 127.0.0.1\n"
            ));
        }
        // As root, mosquitto would drop to its own user, which cannot read the test's folders.
        conf.push_str(&format!(
            "listener {port} 127.0.0.1\nuser root\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_inflight_messages 4096\nlog_dest stderr\nlog_type all\n",
            dir.path().display()
        ));
        if let Some((ca, cert, key)) = &options.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                ca.display(),
                cert.display(),
                key.display()
            ));
        }
        match &options.password_file {
            Some(file) => conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            )),
            None => conf.push_str("allow_anonymous true\n"),
        }
        if let Some(acl) = &options.acl_file {
            conf.push_str(&format!("acl_file {}\n", acl.display()));
        }
        conf.push_str(&options.extra);
        conf.push('\n');
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let log = dir.path().join("mosquitto.log");
        let mut broker = Mosquitto {
            port,
            plain_port,
            dir,
            child: None,
            log,
        };
        broker.launch();
        Some(broker)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary().expect("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited at start ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (mosquitto saves its sessions and retained messages) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Stop, then start again on the same port with the same config and saved state.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The fleet's broker ACL (protocol v1): an agent (username = InstanceId) reads only its
/// order topic and writes only its report, hello and presence topics; `controller` reads
/// every agent's report/hello/presence and writes every order topic.
pub const FLEET_ACL: &str = "\
user controller
topic read ferry/v1/i/+/report
topic read ferry/v1/i/+/hello
topic read ferry/v1/i/+/presence
topic write ferry/v1/i/+/order

pattern read ferry/v1/i/%u/order
pattern write ferry/v1/i/%u/report
pattern write ferry/v1/i/%u/hello
pattern write ferry/v1/i/%u/presence
";

/// Writes a password file (with Debian's `mosquitto_passwd`) for `users` and the
/// [`FLEET_ACL`] into `dir`; returns the broker options using them.
pub fn fleet_auth(dir: &Path, users: &[(&str, &str)]) -> Options {
    let password_file = dir.join("passwd");
    std::fs::write(&password_file, "").unwrap();
    for (user, password) in users {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&password_file)
            .args([user, password])
            .status()
            .expect("running mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd for {user}");
    }
    let acl_file = dir.join("acl");
    std::fs::write(&acl_file, FLEET_ACL).unwrap();
    Options {
        password_file: Some(password_file),
        acl_file: Some(acl_file),
        tls: None,
        extra: String::new(),
    }
}

/// One received message.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub retain: bool,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<Message>>,
    arrived: Condvar,
}

/// A blocking MQTT client (rumqttc) with a persistent session that subscribes to `filters`
/// on every connection and records every message; it reconnects by itself.
pub struct Peer {
    pub client: rumqttc::Client,
    inbox: Arc<Inbox>,
}

impl Peer {
    /// Connects as `user` under client id `client_id` (one persistent session per id).
    pub fn connect(
        port: u16,
        client_id: &str,
        user: &str,
        password: &str,
        filters: &[String],
    ) -> Peer {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_credentials(user, password);
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        let inbox = Arc::new(Inbox::default());
        let (sink, subscriber, filters) = (inbox.clone(), client.clone(), filters.to_vec());
        std::thread::spawn(move || loop {
            match connection.recv() {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_)))) => {
                    for f in &filters {
                        let _ = subscriber.try_subscribe(f.clone(), rumqttc::QoS::AtLeastOnce);
                    }
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p)))) => {
                    let body = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                    });
                    sink.messages.lock().unwrap().push(Message {
                        topic: p.topic.clone(),
                        retain: p.retain,
                        body,
                    });
                    sink.arrived.notify_all();
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return,
            }
        });
        Peer { client, inbox }
    }

    pub fn publish(&self, topic: &str, body: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_vec())
            .unwrap();
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.inbox.messages.lock().unwrap().clone()
    }

    /// Waits for the first message (from index `from`) that `pred` accepts.
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Message) -> bool,
    ) -> (usize, Message) {
        let deadline = Instant::now() + timeout;
        let mut messages = self.inbox.messages.lock().unwrap();
        loop {
            if let Some(i) = (from..messages.len()).find(|&i| pred(&messages[i])) {
                return (i, messages[i].clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; got {:#?}",
                *messages
            );
            messages = self.inbox.arrived.wait_timeout(messages, left).unwrap().0;
        }
    }

    pub fn wait(&self, timeout: Duration, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        self.wait_from(0, timeout, what, pred).1
    }

    pub fn disconnect(&self) {
        let _ = self.client.disconnect();
    }
}
