//! A throwaway PostgreSQL cluster for tests: Debian's PostgreSQL 15 (`initdb`, `postgres`)
//! in a temporary folder, listening on a Unix socket in that folder and on 127.0.0.1 with a
//! password. PostgreSQL refuses to run as root, so under root the cluster belongs to a system
//! user `ferry-pg` (created when missing) and its programs run through `setpriv`.
//!
//! It stops by itself: a root shell supervises `postgres` and waits on a pipe from the test
//! process; when the pipe closes (the [`PgCluster`] is dropped, or the test process ends in
//! any way, a panic or SIGKILL included), the shell stops the server (fast shutdown) and
//! removes the folder. [`shared`] is one cluster per test binary; each test takes a fresh
//! database of it ([`database`]), so tests run in parallel without seeing each other.
//!
//! Missing PostgreSQL: [`shared`] returns `None` after `skip::skip` (a failure under
//! `CI=true`); scripts/test.sh installs `postgresql`.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian's PostgreSQL programs are: `FERRY_PG_BIN`, else version 15 (Debian 12's),
/// else the newest `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if preferred.join("postgres").exists() {
        return preferred;
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max();
    match newest {
        Some(v) => PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
        None => preferred,
    }
}

/// The system user the cluster runs as when the tests run as root.
pub const OS_USER: &str = "ferry-pg";
/// The database superuser (a password over TCP, trusted on the socket).
pub const DB_USER: &str = "ferry";

pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
    pub password: String,
    supervisor: Child,
    /// Closing it tells the supervisor to stop the server.
    stop: Option<ChildStdin>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program` run as the cluster's owner: through setpriv under root, else as we are.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={OS_USER}"),
            &format!("--regid={OS_USER}"),
            "--clear-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn ensure_os_user() {
    if !is_root() {
        return;
    }
    let exists = || {
        Command::new("id")
            .args(["-u", OS_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists() {
        return;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            OS_USER,
        ])
        .output()
        .expect("running useradd");
    // Another test binary may have created it meanwhile.
    assert!(
        out.status.success() || exists(),
        "useradd {OS_USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
    );
}

impl PgCluster {
    /// `None` when PostgreSQL is not installed; panics when it is but cannot start.
    pub fn start() -> Option<PgCluster> {
        let bin = bin_dir();
        if !bin.join("postgres").exists() || !bin.join("initdb").exists() {
            return None;
        }
        ensure_os_user();
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg(format!("{OS_USER}:{OS_USER}")).arg(&dir);
                    c
                },
                "chown the cluster folder",
            );
        }
        let password = format!("pw-{}", fastrand::u64(..));
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg(format!("{OS_USER}:{OS_USER}")).arg(&pwfile);
                    c
                },
                "chown the password file",
            );
        }
        let mut initdb = as_owner(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                DB_USER,
                "-A",
                "trust",
                "--auth-host=scram-sha-256",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env("LC_ALL", "C");
        run(initdb, "initdb");
        let port = free_port();
        let log = dir.join("postgres.log");
        // The supervisor: postgres in the background (its pid in `server.pid`), then a line
        // on stdin restarts it (`pause`: stops it until the next line) and the end of stdin
        // stops it and removes the folder.
        let script = r#"
            dir=$1; shift
            while :; do
                "$@" >>"$dir/postgres.log" 2>&1 &
                pid=$!
                echo "$pid" >"$dir/server.pid"
                read -r line || break
                kill -INT "$pid" 2>/dev/null
                wait "$pid"
                if [ "$line" = pause ]; then read -r _ || break; fi
            done
            kill -INT "$pid" 2>/dev/null
            wait "$pid"
            rm -rf "$dir"
        "#;
        let mut server = as_owner(&bin.join("postgres"));
        server
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(&dir)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test database need not survive a power cut.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]);
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&dir)
            .arg(server.get_program())
            .args(server.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the PostgreSQL supervisor");
        let stop = supervisor.stdin.take();
        let cluster = PgCluster {
            dir,
            port,
            password,
            supervisor,
            stop,
        };
        cluster.wait_ready(&log);
        Some(cluster)
    }

    /// Stops the server (fast shutdown: its connections are cut) and starts it again on the
    /// same port and data; returns once it accepts connections.
    pub fn restart(&mut self) {
        use std::io::Write;
        let pid_file = self.dir.join("server.pid");
        let before = std::fs::read_to_string(&pid_file).unwrap();
        let stop = self.stop.as_mut().expect("the supervisor's stdin");
        stop.write_all(b"restart\n")
            .and_then(|()| stop.flush())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&pid_file).unwrap_or_default() == before {
            assert!(Instant::now() < deadline, "PostgreSQL was not restarted");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ready(&self.dir.join("postgres.log"));
    }

    /// Stops the server (fast shutdown) until [`PgCluster::resume`]; returns once it is down.
    pub fn pause(&mut self) {
        use std::io::Write;
        let stop = self.stop.as_mut().expect("the supervisor's stdin");
        stop.write_all(b"pause\n")
            .and_then(|()| stop.flush())
            .unwrap();
        let pid = std::fs::read_to_string(self.dir.join("server.pid")).unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        // Signal 0: the process exists (the supervisor reaps it once it exited).
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(Instant::now() < deadline, "PostgreSQL did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server [`PgCluster::pause`] stopped; returns once it accepts connections.
    pub fn resume(&mut self) {
        use std::io::Write;
        let pid_file = self.dir.join("server.pid");
        let before = std::fs::read_to_string(&pid_file).unwrap();
        let stop = self.stop.as_mut().expect("the supervisor's stdin");
        stop.write_all(b"resume\n")
            .and_then(|()| stop.flush())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&pid_file).unwrap_or_default() == before {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL was not started again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ready(&self.dir.join("postgres.log"));
    }

    fn wait_ready(&self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-U", DB_USER])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if Instant::now() > deadline {
                let mut text = String::new();
                let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
                panic!("PostgreSQL did not accept connections within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The folder holding the socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// `db` over TCP on 127.0.0.1 with the password in the URL.
    pub fn tcp_url(&self, db: &str) -> String {
        format!(
            "postgres://{DB_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// `db` over the Unix socket (no password).
    pub fn socket_url(&self, db: &str) -> String {
        // A host that is a percent-encoded absolute path is a socket folder.
        let host = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://{DB_USER}@{host}:{}/{db}", self.port)
    }

    /// A new, empty database; its name.
    pub fn create_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut createdb = Command::new(bin_dir().join("createdb"));
        createdb.arg("-h").arg(&self.dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            DB_USER,
            &name,
        ]);
        run(createdb, "createdb");
        name
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.supervisor.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test binary's cluster, started on first use; `None` (after a loud skip, a failure
/// under CI=true) when PostgreSQL is not installed.
pub fn shared() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(PgCluster::start).as_ref();
    if cluster.is_none() {
        super::skip::skip(&format!(
            "PostgreSQL 15 is not installed ({} has no postgres/initdb); scripts/test.sh installs it (apt-get install postgresql)",
            bin_dir().display()
        ));
    }
    cluster
}

/// A fresh database of the shared cluster, as a socket URL.
pub fn database() -> Option<String> {
    let cluster = shared()?;
    Some(cluster.socket_url(&cluster.create_database()))
}
