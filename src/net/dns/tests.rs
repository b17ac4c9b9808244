//! The resolver's order of steps and its error messages, against a temporary system root with
//! a byte-exact dnsproxyd stand-in (the DNS-server steps are covered by tests/android_dns.rs,
//! which runs a real server).

use super::*;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(root: &Path) -> Config {
    Config {
        system_root: Some(root.to_path_buf()),
        ..Config::default()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn write(root: &Path, device: &str, text: &str) {
    let path = root.join(device.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Serves one connection on ROOT/dev/socket/dnsproxyd: checks the request bytes, sends `answer`.
fn stand_in(root: &Path, expect: &'static [u8], answer: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let path = root.join("dev/socket/dnsproxyd");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        while request.last() != Some(&0) {
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        assert_eq!(request, expect, "{}", String::from_utf8_lossy(&request));
        conn.write_all(&answer).await.unwrap();
        // Like netd, keep the connection open: the client must not wait for EOF.
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
}

fn success_v4(ip: [u8; 4]) -> Vec<u8> {
    let mut out = b"222\0".to_vec();
    for v in [1i32, 0, 2, 1, 6, 16] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let mut sa = [0u8; 16];
    sa[0] = 2;
    sa[4..8].copy_from_slice(&ip);
    out.extend_from_slice(&sa);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out
}

#[tokio::test]
async fn nothing_available_names_every_step() {
    let root = tempfile::tempdir().unwrap();
    let resolver = AndroidResolver::new(&config(root.path()), &no_env);
    let err = resolver.resolve("files.ferry.test").await.unwrap_err();
    assert_eq!(err.code(), Code::NetworkDnsUnavailable);
    assert!(!err.transient);
    assert_eq!(
        err.to_string(),
        "no way to resolve files.ferry.test (tried dnsproxyd /dev/socket/dnsproxyd: absent; \
         hosts /etc/hosts, /system/etc/hosts: absent; resolv.conf /etc/resolv.conf: absent; \
         configured servers: none)"
    );
}

#[tokio::test]
async fn hosts_without_the_name_and_bad_server_entries_are_reported() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/system/etc/hosts", "127.0.0.1 localhost\n");
    write(root.path(), "/etc/resolv.conf", "search example\n");
    let mut config = config(root.path());
    config.dns.servers = vec!["dns.example".into()];
    let err = AndroidResolver::new(&config, &no_env)
        .resolve("files.ferry.test")
        .await
        .unwrap_err();
    let text = err.to_string();
    for part in [
        "hosts /etc/hosts, /system/etc/hosts: no entry",
        "resolv.conf /etc/resolv.conf: no nameserver line",
        "configured servers (ignored, not IP[:PORT]: dns.example): none",
    ] {
        assert!(text.contains(part), "{text}");
    }
}

#[tokio::test]
async fn dnsproxyd_answer_is_used_first() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "/system/etc/hosts",
        "10.9.9.9 files.ferry.test\n",
    );
    let server = stand_in(
        root.path(),
        b"getaddrinfo files.ferry.test ^ 1024 0 1 0 0\0",
        success_v4([10, 1, 2, 3]),
    );
    let resolver = AndroidResolver::new(&config(root.path()), &no_env);
    let ips = resolver.resolve("files.ferry.test").await.unwrap();
    assert_eq!(ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
    server.abort();
}

#[tokio::test]
async fn dnsproxyd_no_such_host_falls_through_then_is_network_dns() {
    let root = tempfile::tempdir().unwrap();
    let nodata = [
        b"401\0".as_slice(),
        &4i32.to_be_bytes(),
        &7i32.to_le_bytes(),
    ]
    .concat();
    let server = stand_in(
        root.path(),
        b"getaddrinfo gone.ferry.test ^ 1024 0 1 0 0\0",
        nodata,
    );
    let resolver = AndroidResolver::new(&config(root.path()), &no_env);
    let err = resolver.resolve("gone.ferry.test").await.unwrap_err();
    assert_eq!(err.code(), Code::NetworkDns);
    assert!(
        err.to_string().starts_with(
            "no such host gone.ferry.test (tried dnsproxyd /dev/socket/dnsproxyd: \
             no such host (EAI_NODATA, 7); hosts"
        ),
        "{err}"
    );
    server.abort();
    std::fs::remove_file(root.path().join("dev/socket/dnsproxyd")).unwrap();

    // A hosts entry still wins over netd's "no such host".
    let server = stand_in(
        root.path(),
        b"getaddrinfo gone.ferry.test ^ 1024 0 1 0 0\0",
        [
            b"401\0".as_slice(),
            &4i32.to_be_bytes(),
            &7i32.to_le_bytes(),
        ]
        .concat(),
    );
    write(root.path(), "/system/etc/hosts", "::1 Gone.Ferry.Test\n");
    let ips = resolver.resolve("gone.ferry.test").await.unwrap();
    assert_eq!(ips, vec!["::1".parse::<IpAddr>().unwrap()]);
    server.abort();
}

#[tokio::test]
async fn stale_socket_and_local_mode() {
    let root = tempfile::tempdir().unwrap();
    // A socket file nobody listens on: netd is not running.
    let path = root.path().join("dev/socket/dnsproxyd");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let err = AndroidResolver::new(&config(root.path()), &no_env)
        .resolve("x.ferry.test")
        .await
        .unwrap_err();
    assert!(err.transient);
    assert!(err.to_string().contains("connection refused"), "{err}");

    let local = |k: &str| (k == "ANDROID_DNS_MODE").then(|| "local".to_string());
    let err = AndroidResolver::new(&config(root.path()), &local)
        .resolve("x.ferry.test")
        .await
        .unwrap_err();
    assert!(!err.transient);
    assert!(
        err.to_string()
            .contains("dnsproxyd /dev/socket/dnsproxyd: skipped (ANDROID_DNS_MODE=local)"),
        "{err}"
    );
}

#[tokio::test]
async fn literals_and_localhost_need_no_lookup() {
    let root = tempfile::tempdir().unwrap();
    let resolver = AndroidResolver::new(&config(root.path()), &no_env);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        resolver.resolve("10.0.0.1").await.unwrap(),
        vec![ip("10.0.0.1")]
    );
    assert_eq!(resolver.resolve("[::1]").await.unwrap(), vec![ip("::1")]);
    assert_eq!(
        resolver.resolve("LocalHost.").await.unwrap(),
        vec![ip("127.0.0.1"), ip("::1")]
    );
}

/// AOSP policy lets a domain connect to netd's socket but not stat it (`getattr` on
/// `dnsproxyd_socket` is never granted): with every path stat refused, as an enforcing phone
/// refuses it, the lookup must still go through netd.
#[test]
fn dnsproxyd_is_reached_without_stat_of_its_socket() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path());
    let ips = crate::testing::without_path_stat(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = stand_in(
                root.path(),
                b"getaddrinfo files.ferry.test ^ 1024 0 1 0 0\0",
                success_v4([10, 1, 2, 3]),
            );
            let resolver = AndroidResolver::new(&config, &no_env);
            let ips = resolver.resolve("files.ferry.test").await;
            server.abort();
            ips.map_err(|e| e.to_string())
        })
    });
    assert_eq!(ips, Ok(vec!["10.1.2.3".parse::<IpAddr>().unwrap()]));
}

#[tokio::test]
async fn netd_socket_that_may_not_be_used_is_passed_over_like_bionic() {
    let root = tempfile::tempdir().unwrap();
    // A path through a regular file: connect fails with ENOTDIR, which means "not there".
    write(root.path(), "/dev/socket", "");
    let err = AndroidResolver::new(&config(root.path()), &no_env)
        .resolve("x.ferry.test")
        .await
        .unwrap_err();
    assert!(!err.transient, "{err}");
    assert!(
        err.to_string()
            .contains("dnsproxyd /dev/socket/dnsproxyd: absent"),
        "{err}"
    );
}
