//! Name resolution for a static binary on Android, where libc's resolver finds nothing: there
//! is no `/etc/resolv.conf`, and the phone's names live behind netd.
//!
//! [`AndroidResolver`] tries, in order, and stops at the first that knows the name:
//! 1. netd's `/dev/socket/dnsproxyd` ([`dnsproxyd`]), what bionic's `getaddrinfo` asks;
//!    skipped when `ANDROID_DNS_MODE=local`, as bionic does;
//! 2. the hosts files ([`hosts`]);
//! 3. the `nameserver`s of resolv.conf, when the file exists ([`conf`]);
//! 4. the servers from the config (`dns.servers`).
//!
//! A step that answers "no such host" does not stop the search (a hosts entry may still pin
//! the name); each exchange with netd or a server is bounded by `dns.timeout_ms`. IP literals
//! and `localhost` are answered without asking anyone.
//!
//! There is never a built-in public server: internal OSS endpoints resolve only through the
//! VPC's own resolver, and a public one would leak names. When nothing answers, the error names
//! the host and each step with what happened to it, so the operator knows what to configure:
//! `Network.Dns` when some resolver said the name does not exist, else
//! `Network.DnsUnavailable`; retried only when a step failed in a way that can pass (timeout,
//! netd down), not when there was simply nothing to ask.

pub mod conf;
pub mod dnsproxyd;
pub mod hosts;

use crate::config::Config;
use crate::error::Code;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What one resolution step established; shared by netd's proxy and the DNS servers.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Addrs(Vec<IpAddr>),
    /// The resolver says the name does not exist or has no A/AAAA record.
    NoSuchHost(String),
    /// Nothing to ask: netd's socket cannot be connected to because it is not there or this
    /// process may not use it (bionic then falls back the same way).
    Absent(String),
    /// No answer now (timeouts, refused connections, netd down, ...).
    Failed {
        detail: String,
        transient: bool,
    },
}

/// The resolver's failure; `source::http` finds it in reqwest's error chain to pick the code.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DnsError {
    pub host: String,
    /// A server said the name does not exist; otherwise nothing could answer.
    pub no_such_host: bool,
    /// Whether asking again later may work (a step failed rather than being absent).
    pub transient: bool,
    /// Each step tried, with its outcome: ("hosts /etc/hosts", "no entry").
    pub attempts: Vec<(String, String)>,
}

impl DnsError {
    pub fn code(&self) -> Code {
        if self.no_such_host {
            Code::NetworkDns
        } else {
            Code::NetworkDnsUnavailable
        }
    }

    fn describe(&self) -> String {
        let steps: Vec<String> = self
            .attempts
            .iter()
            .map(|(what, outcome)| format!("{what}: {outcome}"))
            .collect();
        let head = if self.no_such_host {
            format!("no such host {}", self.host)
        } else {
            format!("no way to resolve {}", self.host)
        };
        format!("{head} (tried {})", steps.join("; "))
    }
}

/// How one step ended when it did not produce addresses.
enum Miss {
    /// Not there or not configured: nothing to retry.
    Absent(String),
    /// Looked, the name is not listed (hosts files).
    NoEntry,
    /// A resolver said the name does not exist.
    NoSuchHost(String),
    Failed(String, bool),
}

/// The four sources, with their device paths mapped to this machine (`--system-root`).
#[derive(Clone, Debug)]
pub struct AndroidResolver {
    /// `(device path, host path)`, or `(step, why)` when disabled in config or skipped
    /// because of `ANDROID_DNS_MODE=local`.
    dnsproxyd: Result<(String, PathBuf), (String, String)>,
    hosts_files: Vec<(String, PathBuf)>,
    resolv_conf: (String, PathBuf),
    servers: Vec<SocketAddr>,
    /// Entries of `dns.servers` that are not `IP[:PORT]`, reported instead of ignored.
    bad_servers: Vec<String>,
    timeout: Duration,
}

impl AndroidResolver {
    /// `env` is read for `ANDROID_DNS_MODE` (tests pass their own).
    pub fn new(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let dns = &config.dns;
        let mapped = |p: &String| (p.clone(), config.system_path(p));
        let dnsproxyd = if dns.dnsproxyd_socket.is_empty() {
            Err((
                "dnsproxyd".into(),
                "disabled (dns.dnsproxyd_socket is empty)".into(),
            ))
        } else if env("ANDROID_DNS_MODE").as_deref() == Some("local") {
            let what = format!("dnsproxyd {}", dns.dnsproxyd_socket);
            Err((what, "skipped (ANDROID_DNS_MODE=local)".into()))
        } else {
            Ok(mapped(&dns.dnsproxyd_socket))
        };
        let (servers, bad_servers): (Vec<_>, Vec<_>) = dns
            .servers
            .iter()
            .map(|s| conf::parse_server(s).ok_or_else(|| s.clone()))
            .partition(|r| r.is_ok());
        AndroidResolver {
            dnsproxyd,
            hosts_files: dns.hosts_files.iter().map(mapped).collect(),
            resolv_conf: mapped(&dns.resolv_conf),
            servers: servers.into_iter().flatten().collect(),
            bad_servers: bad_servers.into_iter().filter_map(|r| r.err()).collect(),
            timeout: Duration::from_millis(dns.timeout_ms.max(1)),
        }
    }

    /// The addresses of `host` from the first source that knows it.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ips) = without_lookup(host) {
            return Ok(ips);
        }
        let mut attempts = Vec::new();
        let mut note = |what: String, miss: Miss| attempts.push((what, miss));

        match &self.dnsproxyd {
            Err((what, why)) => note(what.clone(), Miss::Absent(why.clone())),
            Ok((device, path)) => {
                let what = format!("dnsproxyd {device}");
                // No stat first: the policy lets a domain connect to the socket, not getattr it.
                match dnsproxyd::query(path, host, self.timeout).await {
                    Answer::Addrs(ips) if !ips.is_empty() => return Ok(ips),
                    Answer::Addrs(_) => note(what, Miss::NoSuchHost("an empty answer".into())),
                    Answer::NoSuchHost(d) => note(what, Miss::NoSuchHost(d)),
                    Answer::Absent(why) => note(what, Miss::Absent(why)),
                    Answer::Failed { detail, transient } => {
                        note(what, Miss::Failed(detail, transient))
                    }
                }
            }
        }

        let (ips, miss) = self.lookup_hosts_files(host).await;
        if !ips.is_empty() {
            return Ok(ips);
        }
        let devices: Vec<&str> = self.hosts_files.iter().map(|(d, _)| d.as_str()).collect();
        note(format!("hosts {}", devices.join(", ")), miss);

        let (device, path) = &self.resolv_conf;
        let what = format!("resolv.conf {device}");
        match read_optional(path.clone()).await {
            Ok(None) => note(what, Miss::Absent("absent".into())),
            Err(e) => note(what, Miss::Failed(format!("unreadable: {e}"), false)),
            Ok(Some(text)) => {
                let servers = conf::resolv_conf_servers(&text);
                if servers.is_empty() {
                    note(what, Miss::Absent("no nameserver line".into()));
                } else {
                    let what = format!("{what} ({})", conf::list(&servers));
                    match self.ask(&servers, host).await {
                        Ok(ips) => return Ok(ips),
                        Err(miss) => note(what, miss),
                    }
                }
            }
        }

        let mut what = "configured servers".to_string();
        if !self.bad_servers.is_empty() {
            what = format!(
                "{what} (ignored, not IP[:PORT]: {})",
                self.bad_servers.join(", ")
            );
        }
        if self.servers.is_empty() {
            note(what, Miss::Absent("none".into()));
        } else {
            let what = format!("{what} {}", conf::list(&self.servers));
            match self.ask(&self.servers, host).await {
                Ok(ips) => return Ok(ips),
                Err(miss) => note(what, miss),
            }
        }
        Err(failure(host, attempts))
    }

    async fn ask(&self, servers: &[SocketAddr], host: &str) -> Result<Vec<IpAddr>, Miss> {
        match conf::query(servers, host, self.timeout).await {
            Answer::Addrs(ips) => Ok(ips),
            Answer::NoSuchHost(d) => Err(Miss::NoSuchHost(d)),
            Answer::Absent(why) => Err(Miss::Absent(why)),
            Answer::Failed { detail, transient } => Err(Miss::Failed(detail, transient)),
        }
    }

    /// Every hosts file in order; the first that lists the name wins. Read off the async
    /// workers (small files, but a slow flash read must not stall transfers).
    async fn lookup_hosts_files(&self, host: &str) -> (Vec<IpAddr>, Miss) {
        let files = self.hosts_files.clone();
        let host = host.to_string();
        let read = tokio::task::spawn_blocking(move || {
            let mut present = 0;
            let mut errors = Vec::new();
            for (device, path) in &files {
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        present += 1;
                        let ips = hosts::lookup(&text, &host);
                        if !ips.is_empty() {
                            return (ips, Miss::NoEntry);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => errors.push(format!("{device} unreadable: {e}")),
                }
            }
            let miss = match (present, errors.is_empty()) {
                (_, false) => Miss::Failed(errors.join(", "), false),
                (0, true) if !files.is_empty() => Miss::Absent("absent".into()),
                (0, true) => Miss::Absent("none configured".into()),
                _ => Miss::NoEntry,
            };
            (Vec::new(), miss)
        });
        read.await.unwrap_or_else(|e| {
            (
                Vec::new(),
                Miss::Failed(format!("reader failed: {e}"), false),
            )
        })
    }
}

/// IP literals (with or without brackets) and `localhost` need no lookup.
fn without_lookup(host: &str) -> Option<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    (hosts::normalize(host) == "localhost").then(|| {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    })
}

async fn read_optional(path: PathBuf) -> std::io::Result<Option<String>> {
    let read = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    });
    read.await.map_err(std::io::Error::other)?
}

/// The error for a host no step could resolve: `Network.Dns` when some resolver said the
/// name does not exist, else `Network.DnsUnavailable`.
fn failure(host: &str, attempts: Vec<(String, Miss)>) -> DnsError {
    let no_such_host = attempts
        .iter()
        .any(|(_, m)| matches!(m, Miss::NoSuchHost(_)));
    let transient = attempts
        .iter()
        .any(|(_, m)| matches!(m, Miss::Failed(_, true)));
    let attempts = attempts
        .into_iter()
        .map(|(what, miss)| {
            let outcome = match miss {
                Miss::Absent(why) => why,
                Miss::NoEntry => "no entry".into(),
                Miss::NoSuchHost(d) => d,
                Miss::Failed(d, _) => d,
            };
            (what, outcome)
        })
        .collect();
    DnsError {
        host: host.to_string(),
        no_such_host,
        transient,
        attempts,
    }
}

#[cfg(test)]
mod tests;
