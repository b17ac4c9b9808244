//! [`MotoServer`]: the second real S3 server of the OSS tests — moto's `moto_server` (PyPI
//! `moto[server]`, pinned by `ensure_moto` in scripts/lib/common.sh) on a free port of
//! 127.0.0.1, with its auth switched on. What it checks that s3s-fs does not: listings carry
//! ETags (so a resumed folder send can skip the objects it already landed), session tokens are
//! verified (an STS key with a wrong token is refused), IAM policies are enforced, and errors
//! carry a request id (`x-amzn-requestid`, `<RequestId>`).
//!
//! Set-up, before any test request (all through moto's own APIs, signed with SigV4 by
//! [`sign`]): IAM user `ferry-admin` with an access key and an allow-all policy (the harness
//! stores objects with it), role `ferry-phone` that may only read S3, then
//! `POST /moto-api/reset-auth` with body `0` (moto 5.2 reads a bare number, the count of
//! requests still let through unauthenticated), then STS `AssumeRole` of `ferry-phone` with
//! the admin key: the session credentials the phone gets ([`MotoServer::phone`]).
//!
//! Requests go to `BUCKET.oss.test:PORT` (moto takes the bucket from the Host's first label)
//! from ferry; the harness uses path style on `127.0.0.1:PORT`. moto's request recorder
//! (`MOTO_ENABLE_RECORDING`, one JSON line per request, written before moto handles it) is
//! what [`MotoServer::requests`] reads: the GETs and `Range` headers ferry sent.
//!
//! The binary comes from `FERRY_MOTO_SERVER`, else `/var/tmp/ferry-tools/moto-venv`; when
//! neither exists [`MotoServer::start`] skips (a failure under `CI=true`, see skip.rs). The
//! server is killed when the value is dropped, and by `PR_SET_PDEATHSIG` when the test dies.
//! A test crate including this file also has `cli_support` and `s3_server` (whose
//! `SeenRequest` it shares) at its root.

#![allow(dead_code)]

#[path = "sigv4.rs"]
mod sigv4;

use super::s3_server::{endpoint, hostnames, md5_hex, SeenRequest, BUCKET};
pub use sigv4::Keys;
use sigv4::{encode, encode_path, sign, SignInput};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `ensure_moto` (scripts/lib/common.sh) installs moto's server.
pub const DEFAULT_BIN: &str = "/var/tmp/ferry-tools/moto-venv/bin/moto_server";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server with auth on; killed on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
    /// Signs the harness's own writes (allow-all IAM user).
    admin: Keys,
    /// STS session credentials of the read-only role: what the tests give ferry.
    phone: Keys,
    log: PathBuf,
    recording: PathBuf,
    /// Holds the log and the recording; removed on drop.
    dir: tempfile::TempDir,
}

/// The moto binary: `FERRY_MOTO_SERVER`, else [`DEFAULT_BIN`]; what to run when neither is there.
pub fn moto_bin() -> Result<PathBuf, String> {
    match std::env::var_os("FERRY_MOTO_SERVER") {
        Some(path) if Path::new(&path).is_file() => Ok(path.into()),
        Some(path) => Err(format!(
            "FERRY_MOTO_SERVER={} is not a file; scripts/test.sh (ensure_moto in \
             scripts/lib/common.sh) installs moto",
            Path::new(&path).display()
        )),
        None if Path::new(DEFAULT_BIN).is_file() => Ok(DEFAULT_BIN.into()),
        None => Err(format!(
            "moto's S3 server is needed by this test and was not found: FERRY_MOTO_SERVER is \
             unset and {DEFAULT_BIN} does not exist. Run scripts/test.sh, or by hand: \
             `. scripts/lib/common.sh && ensure_moto`"
        )),
    }
}

impl MotoServer {
    /// moto on a free port with [`BUCKET`], the users and the phone's STS credentials set up
    /// and auth enforced; `None` (after a loud skip, a failure under `CI=true`) without moto.
    pub fn start() -> Option<MotoServer> {
        let bin = match moto_bin() {
            Ok(bin) => bin,
            Err(why) => {
                crate::cli_support::skip::skip(&why);
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("ferry-moto-")
            .tempdir_in(if Path::new("/var/tmp").is_dir() {
                PathBuf::from("/var/tmp")
            } else {
                std::env::temp_dir()
            })
            .expect("creating the moto folder");
        let recording = dir.path().join("requests.jsonl");
        let mut failures = Vec::new();
        // The probed port may be taken before moto binds it: moto then exits, try another.
        for attempt in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let mut child = spawn(&bin, port, &log, &recording);
            match wait_ready(&mut child, &log, port) {
                Ok(()) => {
                    let mut server = MotoServer {
                        child,
                        port,
                        admin: Keys {
                            // Any key passes while auth is off (moto's default).
                            id: "FERRYSETUP".into(),
                            secret: "setup".into(),
                            token: None,
                        },
                        phone: Keys {
                            id: String::new(),
                            secret: String::new(),
                            token: None,
                        },
                        log,
                        recording,
                        dir,
                    };
                    server.set_up();
                    return Some(server);
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("port {port}: {why}"));
                }
            }
        }
        panic!("moto ({}) did not start: {failures:#?}", bin.display());
    }

    fn set_up(&mut self) {
        let allow = |actions: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
            )
        };
        self.iam(&[("Action", "CreateUser"), ("UserName", "ferry-admin")]);
        let key = self.iam(&[("Action", "CreateAccessKey"), ("UserName", "ferry-admin")]);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "ferry-admin"),
            ("PolicyName", "all"),
            ("PolicyDocument", &allow(r#""*""#)),
        ]);
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
        let role = self.iam(&[
            ("Action", "CreateRole"),
            ("RoleName", "ferry-phone"),
            ("AssumeRolePolicyDocument", trust),
        ]);
        self.iam(&[
            ("Action", "PutRolePolicy"),
            ("RoleName", "ferry-phone"),
            ("PolicyName", "read"),
            (
                "PolicyDocument",
                &allow(r#"["s3:GetObject","s3:ListBucket"]"#),
            ),
        ]);
        self.create_bucket(BUCKET);
        self.admin = Keys {
            id: xml_text(&key, "AccessKeyId"),
            secret: xml_text(&key, "SecretAccessKey"),
            token: None,
        };
        // From here on every request must be signed by a known key (0 left unauthenticated).
        let (status, _, body) = self.http(
            "POST",
            "/moto-api/reset-auth",
            &[("content-type".into(), "text/plain".into())],
            b"0",
        );
        assert_eq!(
            status,
            200,
            "reset-auth: {}",
            String::from_utf8_lossy(&body)
        );
        let role_arn = xml_text(&role, "Arn");
        let creds = self.signed_form(
            "sts",
            &[
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", &role_arn),
                ("RoleSessionName", "ferry-phone-session"),
            ],
        );
        self.phone = Keys {
            id: xml_text(&creds, "AccessKeyId"),
            secret: xml_text(&creds, "SecretAccessKey"),
            token: Some(xml_text(&creds, "SessionToken")),
        };
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `UploadEndpoint` of a payload: `http://oss.test:PORT`.
    pub fn endpoint(&self) -> String {
        endpoint(self.port)
    }

    /// A hosts-file line mapping the endpoint and each bucket's virtual host to 127.0.0.1.
    pub fn hostnames(&self, buckets: &[&str]) -> String {
        hostnames(buckets)
    }

    /// The phone's STS session credentials (read-only role).
    pub fn phone(&self) -> &Keys {
        &self.phone
    }

    /// The allow-all IAM user's key (no token).
    pub fn admin(&self) -> &Keys {
        &self.admin
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.s3("PUT", &format!("/{bucket}"), b"");
    }

    /// Stores an object (creating or replacing it); returns its ETag (MD5, hex, no quotes).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let headers = self.s3("PUT", &format!("/{bucket}/{}", encode_path(key)), body);
        let etag = md5_hex(body);
        let sent = header(&headers, "etag").unwrap_or_default();
        assert_eq!(sent.trim_matches('"'), etag, "moto's ETag for {key}");
        etag
    }

    /// Same as `put_object` for an object that exists; the new content must differ.
    pub fn replace_object(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let (status, _, _) = self.signed(
            "HEAD",
            &format!("/{bucket}/{}", encode_path(key)),
            "s3",
            &[],
            b"",
        );
        assert_eq!(status, 200, "replacing {key}, which does not exist");
        self.put_object(bucket, key, body)
    }

    pub fn delete_object(&self, bucket: &str, key: &str) {
        self.s3("DELETE", &format!("/{bucket}/{}", encode_path(key)), b"");
    }

    /// Every request moto received so far (its recorder), in order; `uri` is path and query.
    pub fn requests(&self) -> Vec<SeenRequest> {
        let Ok(file) = File::open(&self.recording) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let entry: serde_json::Value = serde_json::from_str(&line).ok()?;
                let url = entry["url"].as_str()?;
                // `http://HOST/PATH?QUERY` → `/PATH?QUERY`.
                let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
                let uri = after_scheme
                    .find('/')
                    .map_or("/", |i| &after_scheme[i..])
                    .to_string();
                let headers = entry["headers"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").into()))
                    .collect();
                Some(SeenRequest {
                    method: entry["method"].as_str()?.to_string(),
                    uri,
                    headers,
                })
            })
            .collect()
    }

    /// moto's log (one line per request with its status, and tracebacks), for messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An IAM query-API call; panics unless moto answers 200. Returns the body.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut all = params.to_vec();
        all.push(("Version", "2010-05-08"));
        self.signed_form("iam", &all)
    }

    fn signed_form(&self, service: &str, params: &[(&str, &str)]) -> String {
        let body = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let content_type = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let (status, _, answer) = self.signed("POST", "/", service, &content_type, body.as_bytes());
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(status, 200, "{service} {params:?}: {answer}");
        answer
    }

    /// A signed S3 request of the harness; panics unless moto answers 2xx. Returns headers.
    fn s3(&self, method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let (status, headers, answer) = self.signed(method, path, "s3", &[], body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        headers
    }

    /// `path` is already percent-encoded (S3 signs it as sent).
    fn signed(
        &self,
        method: &str,
        path: &str,
        service: &str,
        extra: &[(String, String)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let host = format!("127.0.0.1:{}", self.port);
        let headers = sign(
            &self.admin,
            service,
            &SignInput {
                method,
                host: &host,
                path,
                headers: extra,
                body,
            },
        );
        self.http(method, path, &headers, body)
    }

    /// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("reading moto's answer");
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head from moto: {answer:?}"));
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line from moto: {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, answer[split + 4..].to_vec())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The text of the first `<name>` element (moto's IAM/STS answers).
fn xml_text(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
        + open.len();
    let end = start + xml[start..].find("</").unwrap();
    xml[start..end].to_string()
}

fn spawn(bin: &Path, port: u16, log: &Path, recording: &Path) -> Child {
    let out = File::options().create(true).append(true).open(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_ENABLE_RECORDING", "true")
        .env("MOTO_RECORDER_FILEPATH", recording)
        .env("PYTHONUNBUFFERED", "1")
        // Credentials or a region from the developer's environment must not leak in.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
        .current_dir(log.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

/// Waits for werkzeug's "Running on http://127.0.0.1:PORT" (printed once it is bound).
fn wait_ready(child: &mut Child, log: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let line = format!("Running on http://127.0.0.1:{port}");
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&line) {
            return Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("exited ({status}): {text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {START_TIMEOUT:?}: {text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
