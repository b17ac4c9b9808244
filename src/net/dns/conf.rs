//! Asking DNS servers directly: the `nameserver` lines of resolv.conf (present on desktops and
//! some custom images, never on stock Android) and the servers from ferry's config (the VPC's
//! resolver on a cloud phone, where internal OSS endpoints live). Queries go through hickory
//! with exactly these servers: its defaults (public servers, the host's own resolv.conf and
//! hosts file) are never used.

use super::Answer;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, ResolveErrorKind, Resolver};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The DNS port, for `nameserver` lines and config entries without one.
const DNS_PORT: u16 = 53;

/// The `nameserver` addresses of a resolv.conf, in order (port 53; an IPv6 zone is dropped).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let ip = words
            .next()
            .and_then(|w| w.split('%').next())
            .and_then(|w| w.parse::<IpAddr>().ok());
        if let Some(ip) = ip {
            let addr = SocketAddr::new(ip, DNS_PORT);
            if !servers.contains(&addr) {
                servers.push(addr);
            }
        }
    }
    servers
}

/// One `dns.servers` entry: `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_server(entry: &str) -> Option<SocketAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    entry.parse().ok()
}

pub fn list(servers: &[SocketAddr]) -> String {
    let words: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    words.join(", ")
}

/// A and AAAA for `host` from `servers` only, each query bounded by `timeout`.
pub async fn query(servers: &[SocketAddr], host: &str, timeout: Duration) -> Answer {
    let mut group = NameServerConfigGroup::new();
    for server in servers {
        // UDP first, TCP when a UDP answer is truncated, as a stub resolver does.
        let one = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        group.merge(one);
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), group);
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.cache_size = 0;
    opts.ndots = 0;
    let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    // The trailing dot makes the name absolute: no search domains are tried.
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    match resolver.lookup_ip(fqdn.as_str()).await {
        Ok(lookup) => {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for ip in lookup.iter() {
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            if addrs.is_empty() {
                Answer::NoSuchHost("no A or AAAA record".into())
            } else {
                Answer::Addrs(addrs)
            }
        }
        Err(e) => from_error(&e, timeout),
    }
}

fn from_error(e: &ResolveError, timeout: Duration) -> Answer {
    if e.is_nx_domain() {
        return Answer::NoSuchHost("no such host (NXDOMAIN)".into());
    }
    if e.is_no_records_found() {
        return Answer::NoSuchHost("no A or AAAA record".into());
    }
    let detail = match e.kind() {
        ResolveErrorKind::Proto(p) => match p.kind() {
            ProtoErrorKind::Timeout => format!("no answer within {} ms", timeout.as_millis()),
            ProtoErrorKind::Io(io) => format!("I/O error: {io}"),
            _ => p.to_string(),
        },
        _ => e.to_string(),
    };
    Answer::Failed {
        detail,
        transient: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# generated
search corp.example
nameserver 10.0.0.2
nameserver   fe80::1%eth0   ; zone dropped
;nameserver 10.9.9.9
nameserver bogus
options timeout:1 attempts:2
nameserver 10.0.0.2
nameserver 2001:db8::53";
        let want: Vec<SocketAddr> = ["10.0.0.2:53", "[fe80::1]:53", "[2001:db8::53]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(resolv_conf_servers(text), want);
        assert!(resolv_conf_servers("").is_empty());
    }

    #[test]
    fn config_server_forms() {
        let p = |s: &str| parse_server(s).map(|a| a.to_string());
        assert_eq!(p("100.100.2.136").as_deref(), Some("100.100.2.136:53"));
        assert_eq!(p(" 127.0.0.1:5353 ").as_deref(), Some("127.0.0.1:5353"));
        assert_eq!(p("2001:db8::1").as_deref(), Some("[2001:db8::1]:53"));
        assert_eq!(
            p("[2001:db8::1]:5353").as_deref(),
            Some("[2001:db8::1]:5353")
        );
        assert_eq!(p("dns.example"), None);
        assert_eq!(p(""), None);
    }
}
