//! Name resolution the Android way, through the real binary (`ferry fetch`) on a [`Target`]:
//! natively with `--system-root`, or the aarch64 build in the Android-like chroot
//! (`FERRY_TEST_CHROOT=1`). Each source the resolver tries gets its own case:
//! a dnsproxyd stand-in speaking netd's protocol byte for byte, the hosts file, a real DNS
//! server (Debian's dnsmasq) named in the config and in resolv.conf, and nothing at all.
//!
//! dnsmasq comes from the Debian package `dnsmasq-base` (scripts/test.sh installs it); without
//! it the two server cases skip with a loud message. Every server here listens on loopback
//! only and stops when its test ends.

mod cli_support;
mod common;

use cli_support::{text, Target};
use common::http_server::{Resource, TestServer};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BODY: &[u8] = b"resolved the Android way\n";

/// A file server on 127.0.0.1 serving [`BODY`] at `/x`.
fn files() -> TestServer {
    let server = TestServer::start_blocking();
    server.put("/x", Resource::new(BODY));
    server
}

/// `ferry [--config CONFIG] fetch --url URL --source-path /sdcard/Download/x.bin`.
fn fetch(t: &Target, config: Option<&str>, url: &str) -> Output {
    let mut cmd = t.command();
    if let Some(toml) = config {
        t.write("/data/local/tmp/ferry.toml", toml);
        cmd.arg("--config").arg(t.arg("/data/local/tmp/ferry.toml"));
    }
    cmd.args(["fetch", "--quiet", "--url", url])
        .args(["--source-path", "/sdcard/Download/x.bin"]);
    cmd.output().expect("running ferry fetch")
}

fn assert_fetched(t: &Target, out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(t.host("/sdcard/Download/x.bin")).unwrap(),
        BODY
    );
}

/// netd's dnsproxyd as bionic sees it (AOSP DnsProxyListener): a thread that answers each
/// `getaddrinfo` with `"222\0"` + one IPv4 sockaddr for `known`, else `"401\0"` EAI_NODATA,
/// and records every request byte for byte. Stops when dropped.
struct DnsProxyd {
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsProxyd {
    fn start(t: &Target, known: &'static str, ip: Ipv4Addr) -> DnsProxyd {
        let listener = UnixListener::bind(t.host("/dev/socket/dnsproxyd")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve(conn, known, ip, &seen),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        DnsProxyd {
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for DnsProxyd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut conn: UnixStream, known: &str, ip: Ipv4Addr, seen: &Mutex<Vec<Vec<u8>>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while request.last() != Some(&0) {
        match conn.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => break,
        }
    }
    let host = String::from_utf8_lossy(&request)
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push(request);
    let mut answer = Vec::new();
    if host == known {
        answer.extend_from_slice(b"222\0");
        // more, flags, AF_INET, SOCK_STREAM, IPPROTO_TCP, sockaddr_in length
        for v in [1i32, 0, 2, 1, 6, 16] {
            answer.extend_from_slice(&v.to_be_bytes());
        }
        let mut sockaddr = [0u8; 16];
        sockaddr[..2].copy_from_slice(&2u16.to_le_bytes());
        sockaddr[4..8].copy_from_slice(&ip.octets());
        answer.extend_from_slice(&sockaddr);
        answer.extend_from_slice(&0i32.to_be_bytes()); // no canonical name
        answer.extend_from_slice(&0i32.to_be_bytes()); // end of list
    } else {
        answer.extend_from_slice(b"401\0");
        answer.extend_from_slice(&4i32.to_be_bytes());
        answer.extend_from_slice(&7i32.to_le_bytes()); // EAI_NODATA, in netd's byte order
    }
    let _ = conn.write_all(&answer);
    // netd keeps the connection open; the client must stop reading by itself.
    let _ = conn.read(&mut byte);
}

#[test]
fn dnsproxyd_stand_in_resolves_for_the_binary() {
    let t = Target::new();
    let proxy = DnsProxyd::start(&t, "files.ferry.test", Ipv4Addr::LOCALHOST);
    let server = files();
    let url = format!("http://files.ferry.test:{}/x", server.addr().port());
    let out = fetch(&t, None, &url);
    assert_fetched(&t, &out);
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    for request in requests {
        assert_eq!(
            request,
            b"getaddrinfo files.ferry.test ^ 1024 0 1 0 0\0",
            "{:?}",
            String::from_utf8_lossy(&request)
        );
    }
}

#[test]
fn hosts_file_alone_resolves() {
    let t = Target::new();
    let hosts =
        "127.0.0.1 localhost\n::1 ip6-localhost\n127.0.0.1\tmirror HOSTS.ferry.test # pinned\n";
    t.write("/system/etc/hosts", hosts);
    let server = files();
    let url = format!("http://hosts.ferry.test:{}/x", server.addr().port());
    assert_fetched(&t, &fetch(&t, None, &url));
}

#[test]
fn nothing_available_is_dns_unavailable_naming_each_step() {
    let t = Target::new();
    let out = fetch(&t, None, "http://none.ferry.test:9/x");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = "Network.DnsUnavailable: http://none.ferry.test:9/x: no way to resolve \
         none.ferry.test (tried dnsproxyd /dev/socket/dnsproxyd: absent; hosts /etc/hosts, \
         /system/etc/hosts: no entry; resolv.conf /etc/resolv.conf: absent; configured \
         servers: none)";
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn configured_dns_server_resolves_and_nxdomain_is_network_dns() {
    let Some(dnsmasq) = Dnsmasq::start(Ipv4Addr::LOCALHOST, None) else {
        return;
    };
    let t = Target::new();
    let config = format!("[dns]\nservers = [\"{}\"]\n", dnsmasq.addr);
    let server = files();
    let url = format!("http://cfg.ferry.test:{}/x", server.addr().port());
    assert_fetched(&t, &fetch(&t, Some(&config), &url));

    let out = fetch(&t, Some(&config), "http://nx.ferry.test:9/x");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Network.Dns: http://nx.ferry.test:9/x: no such host nx.ferry.test"),
        "{stderr}"
    );
    let configured = format!(
        "configured servers {}: no such host (NXDOMAIN)",
        dnsmasq.addr
    );
    assert!(stderr.contains(&configured), "{stderr}");
}

#[test]
fn resolv_conf_nameserver_resolves() {
    // resolv.conf has no port: the server must listen on port 53, on a loopback address of
    // its own so it cannot collide with a resolver the machine already runs.
    let pid = std::process::id();
    let candidates: Vec<Ipv4Addr> = (0..4u8)
        .map(|i| Ipv4Addr::new(127, 53, (pid >> 8) as u8, pid as u8 ^ i))
        .collect();
    let Some(&ip) = candidates.iter().find(|ip| port_free(**ip, 53)) else {
        cli_support::skip::skip(&format!(
            "resolv_conf_nameserver_resolves: port 53 is taken on {candidates:?}"
        ));
        return;
    };
    let Some(_dnsmasq) = Dnsmasq::start(ip, Some(53)) else {
        return;
    };
    let t = Target::new();
    t.write(
        "/system/etc/resolv.conf",
        format!("# as on a desktop\nnameserver {ip}\n"),
    );
    let server = files();
    let url = format!("http://cfg.ferry.test:{}/x", server.addr().port());
    assert_fetched(&t, &fetch(&t, None, &url));
}

fn port_free(ip: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((ip, port));
    UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok()
}

/// dnsmasq on `ip:port` (a free port when `None`) answering `cfg.ferry.test` with 127.0.0.1
/// and NXDOMAIN for `nx.ferry.test`; nothing else (no upstream, no hosts file). Killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// `None` (after a loud message) when dnsmasq is not installed.
    fn start(ip: Ipv4Addr, port: Option<u16>) -> Option<Dnsmasq> {
        let Some(bin) = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            cli_support::skip::skip(
                "dnsmasq is not installed (Debian package dnsmasq-base; scripts/test.sh \
                 installs it), so the DNS-server path is NOT tested",
            );
            return None;
        };
        for _ in 0..5 {
            let port = port.unwrap_or_else(|| free_port(ip));
            let addr = SocketAddr::from((ip, port));
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
            ])
            .args(["--log-facility=-", "--bind-interfaces"])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--port={port}"))
            .args([
                "--address=/cfg.ferry.test/127.0.0.1",
                "--address=/nx.ferry.test/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            // Dies with the test thread even if the test process is killed.
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let child = cmd.spawn().expect("starting dnsmasq");
            let mut dnsmasq = Dnsmasq { child, addr };
            if dnsmasq.wait_ready() {
                return Some(dnsmasq);
            }
        }
        panic!("dnsmasq did not start on {ip}");
    }

    /// dnsmasq serves TCP as well: a connection means it is up.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                eprintln!("dnsmasq exited ({status}): {err}");
                return false;
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: Ipv4Addr) -> u16 {
    let udp = UdpSocket::bind((ip, 0)).unwrap();
    udp.local_addr().unwrap().port()
}

/// HTTP(S)_PROXY/ALL_PROXY in the environment are not used: a proxy would resolve names
/// itself, past the address policy (and would receive the link's userinfo).
#[test]
fn proxy_variables_in_the_environment_are_not_used() {
    let t = Target::new();
    t.add_hosts("127.0.0.1 proxied.ferry.test");
    let server = files();
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.local_addr().unwrap().port());
    let url = format!("http://proxied.ferry.test:{}/x", server.addr().port());
    let mut cmd = t.command();
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env(var, &proxy_url);
    }
    cmd.args(["fetch", "--quiet", "--url", &url])
        .args(["--source-path", "/sdcard/Download/x.bin"]);
    let out = cmd.output().expect("running ferry fetch");
    assert_fetched(&t, &out);
    assert_eq!(
        proxy.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the proxy from the environment was used"
    );
}
