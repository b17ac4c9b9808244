//! [`S3Server`]: a real S3 server for the OSS tests — s3s-fs 0.14.1 (crates.io) on
//! 127.0.0.1, with SigV4 on a fixed key pair and virtual-hosted-style addressing under
//! [`DOMAIN`] (requests go to `BUCKET.oss.test:PORT`, as OSS insists on). Its data lives in a
//! temporary folder; the server is killed when the value is dropped (and, through
//! `PR_SET_PDEATHSIG`, when the test process dies).
//!
//! The binary comes from `FERRY_S3S_FS` (exported by `scripts/test.sh`, whose `ensure_s3s_fs`
//! installs it), else from the cache `/var/tmp/ferry-tools/bin/s3s-fs`; a test that needs it
//! panics naming both when neither exists — it never skips silently.
//!
//! How s3s-fs stores things (read from its source, checked against the running server):
//! - object `KEY` of bucket `B` is the plain file `ROOT/B/KEY`; a bucket is a folder;
//! - the ETag is `"e_tag"` of `ROOT/.bucket-{b64url(B)}.object-{b64url(KEY)}.internal.json`
//!   when that file exists, else the MD5 of the content computed on every GET/HEAD;
//! - Last-Modified is the file's mtime; listings carry key, size and date, no ETag.
//!
//! So this harness writes objects as files, plus the `.internal.json` with the content's MD5
//! (what a PUT would store), so large objects are not re-hashed on each ranged GET. A
//! replacement removes the old ETag first, renames the new content in, then writes the new
//! ETag: at every moment a request sees a matching content/ETag pair.
//!
//! Ferry's resolver must map the bucket host to 127.0.0.1: put [`S3Server::hostnames`] into
//! the target's hosts file (`Target::add_hosts`). The server also accepts path-style requests
//! on `127.0.0.1:PORT`, for tools without a custom resolver.
//!
//! s3s-fs logs every request (`s3s::service=debug`, one line each); [`S3Server::requests`]
//! parses them so tests can see the `Range` and `x-amz-security-token` ferry sent.

// Each test binary uses a different subset of this helper.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The key pair the server accepts (no other). The secret has `/` and `+` like real ones.
pub const ACCESS_KEY_ID: &str = "FERRYTESTAKID0000001";
pub const ACCESS_KEY_SECRET: &str = "ferry/test+Secret0123456789abcdefghijklmn";
/// s3s-fs ignores session tokens; the tests check that ferry sends it anyway.
pub const SECURITY_TOKEN: &str = "ferry-test-sts-token-CAIS0123456789";
/// Base domain of virtual-hosted-style requests.
pub const DOMAIN: &str = "oss.test";

/// The `UploadEndpoint` of a server on `port`: `http://oss.test:PORT`.
pub fn endpoint(port: u16) -> String {
    format!("http://{DOMAIN}:{port}")
}

/// A hosts-file line mapping the endpoint and each bucket's virtual host to 127.0.0.1.
pub fn hostnames(buckets: &[&str]) -> String {
    let mut line = format!("127.0.0.1 {DOMAIN}");
    for bucket in buckets {
        line.push_str(&format!(" {bucket}.{DOMAIN}"));
    }
    line.push('\n');
    line
}
/// The bucket most tests use (the API requires the `cloudphone-saved-bucket-` prefix).
pub const BUCKET: &str = "cloudphone-saved-bucket-test";

/// Where `ensure_s3s_fs` (scripts/lib/common.sh) installs s3s-fs.
pub const DEFAULT_BIN: &str = "/var/tmp/ferry-tools/bin/s3s-fs";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The s3s-fs binary: `FERRY_S3S_FS`, else [`DEFAULT_BIN`]; panics (with what to run) when
/// there is none.
pub fn s3s_fs_bin() -> PathBuf {
    match std::env::var_os("FERRY_S3S_FS") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "FERRY_S3S_FS={} is not a file; scripts/test.sh (ensure_s3s_fs in \
                 scripts/lib/common.sh) installs s3s-fs",
                path.display()
            );
            path
        }
        None if Path::new(DEFAULT_BIN).is_file() => DEFAULT_BIN.into(),
        None => panic!(
            "s3s-fs is needed by the OSS tests and was not found: FERRY_S3S_FS is unset and \
             {DEFAULT_BIN} does not exist. Run scripts/test.sh (its ensure_s3s_fs installs \
             it), or by hand: `. scripts/lib/common.sh && ensure_rust && ensure_s3s_fs`"
        ),
    }
}

/// One request as s3s-fs logged it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query as sent (`/send/a.bin?x-id=GetObject`), percent-encoded.
    pub uri: String,
    /// Header names lowercased, in the server's order.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }

    /// The `Host` header's bucket part (`BUCKET.oss.test:PORT` → `BUCKET`).
    pub fn bucket(&self) -> Option<&str> {
        let host = self.header("host")?;
        host.split_once(&format!(".{DOMAIN}:")).map(|(b, _)| b)
    }

    /// The path without query, percent-decoded (`/send/sub dir/ü.bin`).
    pub fn path(&self) -> String {
        percent_decode(self.uri.split('?').next().unwrap_or_default())
    }
}

/// A running s3s-fs; killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    /// The served folder (`ROOT/BUCKET/KEY`).
    root: PathBuf,
    log: PathBuf,
    /// Holds the root and the log; removed on drop.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// s3s-fs on a free port of 127.0.0.1 with [`BUCKET`] created, ready to serve.
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let base = Path::new("/var/tmp");
        let dir = tempfile::Builder::new()
            .prefix("ferry-s3-")
            .tempdir_in(if base.is_dir() {
                base.to_path_buf()
            } else {
                std::env::temp_dir()
            })
            .expect("creating the s3s-fs folder");
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let mut failures = Vec::new();
        // The port is free when probed but another process may take it before s3s-fs binds:
        // then s3s-fs exits at once and the next attempt picks another.
        for attempt in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("s3s-fs-{attempt}.log"));
            let mut child = spawn(&bin, &root, port, &log);
            match wait_ready(&mut child, &log) {
                Ok(()) => {
                    let server = S3Server {
                        child,
                        port,
                        root,
                        log,
                        dir,
                    };
                    server.create_bucket(BUCKET);
                    return server;
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("port {port}: {why}"));
                }
            }
        }
        panic!("s3s-fs ({}) did not start: {failures:#?}", bin.display());
    }

    /// Restarts the server on the same port and data with another key pair: what a client
    /// holding the old (now expired) credentials sees when its STS token is rotated away.
    pub fn restart_with_keys(&mut self, key_id: &str, secret: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = s3s_fs_bin();
        for attempt in 0..50 {
            // A fresh log: readiness is read from it (requests() then shows the new run only).
            let log = self
                .dir
                .path()
                .join(format!("s3s-fs-restart-{attempt}.log"));
            let mut child = spawn_with_keys(&bin, &self.root, self.port, &log, key_id, secret);
            match wait_ready(&mut child, &log) {
                Ok(()) => {
                    self.child = child;
                    self.log = log;
                    return;
                }
                // The old listener's port may linger for a moment.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("s3s-fs did not restart on port {}", self.port);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `UploadEndpoint` of a payload: `http://oss.test:PORT`.
    pub fn endpoint(&self) -> String {
        endpoint(self.port)
    }

    /// The path-style endpoint `http://127.0.0.1:PORT`, for tools with no custom resolver.
    pub fn path_style_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A hosts-file line mapping the endpoint and each bucket's virtual host to 127.0.0.1.
    pub fn hostnames(&self, buckets: &[&str]) -> String {
        hostnames(buckets)
    }

    /// The folder s3s-fs serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `bucket/key`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        assert_safe_key(key);
        self.root.join(bucket).join(key)
    }

    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).unwrap();
    }

    /// Removes a bucket with everything in it.
    pub fn delete_bucket(&self, bucket: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(bucket));
    }

    /// Stores an object (creating or replacing it); returns its ETag (the MD5, hex, no quotes).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let tmp = self.temp_path();
        std::fs::write(&tmp, body).unwrap();
        let etag = md5_hex(body);
        self.install(bucket, key, &tmp, &etag);
        etag
    }

    /// Replaces an existing object with new content; returns the new ETag, which differs.
    pub fn replace_object(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let old = self
            .etag(bucket, key)
            .expect("replacing an object that does not exist");
        let new = self.put_object(bucket, key, body);
        assert_ne!(old, new, "the replacement has the same content (and ETag)");
        new
    }

    /// Stores a large object of `mib` MiB made of one pseudo-random 1 MiB block (from `seed`)
    /// whose first 8 bytes are replaced by the block's index, so every MiB differs (a range
    /// put at the wrong offset shows) yet it takes no time to make. Hashes with coreutils
    /// (fast even when the tests are built without optimisation).
    pub fn put_large_object(&self, bucket: &str, key: &str, mib: u64, seed: u64) -> LargeObject {
        let tmp = self.temp_path();
        write_large(&tmp, mib, seed);
        let md5 = coreutils_digest("md5sum", &tmp);
        let sha256 = coreutils_digest("sha256sum", &tmp);
        self.install(bucket, key, &tmp, &md5);
        LargeObject {
            size: mib << 20,
            md5,
            sha256,
            path: self.object_path(bucket, key),
        }
    }

    /// Deletes an object (a no-op when absent).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let _ = std::fs::remove_file(self.internal_info(bucket, key));
        let _ = std::fs::remove_file(self.object_path(bucket, key));
    }

    /// The ETag the server sends for an object (no quotes), `None` when it does not exist.
    pub fn etag(&self, bucket: &str, key: &str) -> Option<String> {
        let body = std::fs::read(self.object_path(bucket, key)).ok()?;
        let info = std::fs::read(self.internal_info(bucket, key)).ok();
        let stored = info
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| v["e_tag"].as_str().map(str::to_string));
        Some(stored.unwrap_or_else(|| md5_hex(&body)))
    }

    /// Every request s3s-fs has logged so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        let file = File::open(&self.log).expect("reading the s3s-fs log");
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| parse_request_line(&line))
            .collect()
    }

    /// The GETs of `bucket/key` (object reads, not listings) among `requests`.
    pub fn object_gets<'a>(
        requests: &'a [SeenRequest],
        bucket: &str,
        key: &str,
    ) -> Vec<&'a SeenRequest> {
        let path = format!("/{key}");
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.bucket() == Some(bucket) && r.path() == path)
            .collect()
    }

    /// The server's log (requests and errors), for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn internal_info(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64url(bucket.as_bytes()),
            b64url(key.as_bytes())
        ))
    }

    /// A fresh file name in the root (same filesystem, for rename), outside every bucket and
    /// not of the `.tmp.*.internal.part` form s3s-fs cleans up at start.
    fn temp_path(&self) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".ferry-put-{}-{n}", std::process::id()))
    }

    /// Moves `tmp` into place as `bucket/key` with ETag `etag`; see the module docs for the
    /// order.
    fn install(&self, bucket: &str, key: &str, tmp: &Path, etag: &str) {
        let dest = self.object_path(bucket, key);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let info = self.internal_info(bucket, key);
        let _ = std::fs::remove_file(&info);
        std::fs::rename(tmp, &dest).unwrap();
        let info_tmp = self.temp_path();
        std::fs::write(&info_tmp, serde_json::json!({ "e_tag": etag }).to_string()).unwrap();
        std::fs::rename(&info_tmp, &info).unwrap();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A large object stored by [`S3Server::put_large_object`].
#[derive(Clone, Debug)]
pub struct LargeObject {
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    /// Its file in the server's root (to compare a download with `cmp`).
    pub path: PathBuf,
}

/// Writes `mib` MiB as described at [`S3Server::put_large_object`].
pub fn write_large(path: &Path, mib: u64, seed: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    for chunk in block.chunks_mut(8) {
        // xorshift64*: cheap and good enough to defeat compression and dedup.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    for i in 0..mib {
        block[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&block).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
}

/// `md5sum`/`sha256sum FILE`'s hex digest.
pub fn coreutils_digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().expect(tool);
    assert!(out.status.success(), "{tool} {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The harness writes files: a key that is not a plain relative path cannot be one.
fn assert_safe_key(key: &str) {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    assert!(
        ok,
        "s3s-fs cannot store key {key:?} (it is a file path); use a stand-in"
    );
}

fn spawn(bin: &Path, root: &Path, port: u16, log: &Path) -> Child {
    spawn_with_keys(bin, root, port, log, ACCESS_KEY_ID, ACCESS_KEY_SECRET)
}

fn spawn_with_keys(
    bin: &Path,
    root: &Path,
    port: u16,
    log: &Path,
    key_id: &str,
    secret: &str,
) -> Child {
    let out = File::options().create(true).append(true).open(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", key_id, "--secret-key", secret])
        // Virtual-hosted style under oss.test:PORT (the port is part of the Host header it
        // matches); 127.0.0.1:PORT as a second base domain keeps path style working there
        // (otherwise s3s-fs would take "127.0.0.1:PORT" for a bucket name).
        .args(["--domain", &format!("{DOMAIN}:{port}")])
        .args(["--domain", &format!("127.0.0.1:{port}")])
        .arg(root)
        .env("RUST_LOG", "info,s3s::service=debug")
        .env_remove("RUST_BACKTRACE")
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

/// Waits for s3s-fs's "server is running at" line (printed after it bound the port).
fn wait_ready(child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("server is running at") {
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

/// Parses s3s's `req: Request { method: GET, uri: /k, version: HTTP/1.1, headers: {"host":
/// "…", …}, body: … }` debug line.
fn parse_request_line(line: &str) -> Option<SeenRequest> {
    let rest = &line[line.find("req: Request { method: ")? + "req: Request { method: ".len()..];
    let (method, rest) = rest.split_once(", uri: ")?;
    let (uri, rest) = rest.split_once(", version: ")?;
    let headers_text = &rest[rest.find("headers: {")? + "headers: {".len()..];
    let mut headers = Vec::new();
    let mut chars = headers_text.chars();
    // A sequence of `"name": "value"` separated by ", ", ended by `}`.
    while let Some(name) = next_quoted(&mut chars) {
        let Some(value) = next_quoted(&mut chars) else {
            break;
        };
        headers.push((name.to_ascii_lowercase(), value));
    }
    Some(SeenRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
    })
}

/// The next Debug-quoted string, skipping what precedes its opening quote; `None` at the `}`
/// that closes the header map.
fn next_quoted(chars: &mut std::str::Chars<'_>) -> Option<String> {
    loop {
        match chars.next()? {
            '"' => break,
            '}' => return None,
            _ => {}
        }
    }
    let mut out = String::new();
    loop {
        match chars.next()? {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(Ok(b))) = (bytes[i], hex.map(|h| u8::from_str_radix(h, 16))) {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
