//! TLS trust the Android way, on the real binary: an HTTPS server on 127.0.0.1 whose chain
//! comes from a test CA made now (rcgen), served by rustls in this process. The CA is placed
//! only in the phone's `/system/etc/security/cacerts`, as Android stores it (one PEM file per
//! certificate, `HASH.0`): ferry trusts the server then, and refuses it with `Network.Tls`,
//! at once and without retrying, when the CA is not there.
//!
//! Runs natively and, with `FERRY_TEST_CHROOT=1`, on the aarch64 build in the Android-like
//! chroot (see `cli_support/target.rs`).

mod cli_support;
#[path = "common/test_ca.rs"]
mod test_ca;

use cli_support::{run, text, Target};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A made-up `subject_hash_old` name; ferry reads every file of the folder, whatever its name.
const CA_FILE: &str = "/system/etc/security/cacerts/f3e2d1c0.0";
const BODY_LEN: usize = 100_000;

struct TestCa {
    /// PEM of the CA certificate: what goes into the phone's cacerts folder.
    ca_pem: String,
    /// The server's chain (leaf for 127.0.0.1, then the CA) and key.
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn make_ca() -> TestCa {
    // A SAN of type IP address, as reqwest checks it for https://127.0.0.1.
    let made = test_ca::make(&["127.0.0.1"]);
    TestCa {
        ca_pem: made.ca_pem,
        chain: vec![made.leaf_der.into(), made.ca_der.into()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_der.into()),
    }
}

/// An HTTPS/1.1 server on 127.0.0.1 that answers every GET with `BODY_LEN` bytes and counts
/// the TCP connections it accepted (a retried request would be a second one).
struct HttpsServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl HttpsServer {
    fn start(ca: &TestCa) -> HttpsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(ca.chain.clone(), ca.key.clone_key())
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                std::thread::spawn(move || serve(stream, config));
            }
        });
        HttpsServer { addr, connections }
    }

    fn url(&self) -> String {
        format!("https://{}/x", self.addr)
    }
}

/// One connection, one request; a failed handshake just ends the thread.
fn serve(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, &mut tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
    );
    let _ = tls.write_all(head.as_bytes());
    let _ = tls.write_all(&vec![b'a'; BODY_LEN]);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn fetch(t: &Target, url: &str, path: &str) -> std::process::Output {
    run(t.command().args([
        "fetch",
        "--url",
        url,
        "--source-path",
        path,
        "--json",
        "--quiet",
    ]))
}

#[test]
fn a_ca_in_the_android_system_store_is_trusted() {
    let ca = make_ca();
    let server = HttpsServer::start(&ca);
    let t = Target::new();
    t.write(CA_FILE, &ca.ca_pem);
    // A file in the folder that is no certificate is passed over, not fatal.
    t.write("/system/etc/security/cacerts/README", "not a certificate\n");
    let out = fetch(&t, &server.url(), "/data/local/tmp/x.bin");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["Files"][0]["Size"], BODY_LEN as u64, "{result}");
    let body = std::fs::read(t.host("/data/local/tmp/x.bin")).unwrap();
    assert_eq!(body, vec![b'a'; BODY_LEN]);
}

#[test]
fn without_the_ca_the_transfer_fails_with_network_tls_and_no_retry() {
    let ca = make_ca();
    let server = HttpsServer::start(&ca);
    let t = Target::new();
    let started = std::time::Instant::now();
    let out = fetch(&t, &server.url(), "/data/local/tmp/x.bin");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("Network.Tls: "), "{stderr}");
    assert!(
        stderr.contains("UnknownIssuer") || stderr.contains("certificate"),
        "{stderr}"
    );
    // A TLS failure is permanent: one connection, no backoff.
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "{stderr}");
    assert!(!stderr.contains("retries"), "{stderr}");
    assert!(started.elapsed() < t.timeout(Duration::from_secs(10)));
    assert!(!t.host("/data/local/tmp/x.bin").exists());
}

/// A system CA the user turned off (Android copies it, same file name, to
/// /data/misc/user/0/cacerts-removed) is not trusted: the transfer fails as without the CA.
#[test]
fn a_system_ca_listed_in_cacerts_removed_is_not_trusted() {
    let ca = make_ca();
    let server = HttpsServer::start(&ca);
    let t = Target::new();
    t.write(CA_FILE, &ca.ca_pem);
    t.write("/data/misc/user/0/cacerts-removed/f3e2d1c0.0", &ca.ca_pem);
    let out = fetch(&t, &server.url(), "/data/local/tmp/x.bin");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("Network.Tls: "), "{stderr}");
    assert!(!t.host("/data/local/tmp/x.bin").exists());
}
