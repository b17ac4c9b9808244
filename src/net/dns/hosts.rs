//! Hosts files (`/etc/hosts`, Android's `/system/etc/hosts`): what a phone image pins by name
//! without any DNS server. Parsed like glibc and bionic read them: `#` starts a comment, the
//! first word is an IPv4 or IPv6 address, every further word is a name or alias, names match
//! case-insensitively, and every line naming the host contributes its address.

use std::net::IpAddr;

/// Addresses listed for `host` in one hosts file's text, in file order, without duplicates.
pub fn lookup(text: &str, host: &str) -> Vec<IpAddr> {
    let host = normalize(host);
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(parse_ip) else {
            continue;
        };
        if words.any(|name| normalize(name) == host) && !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// Lowercase, without the root's trailing dot (`Files.Ferry.Test.` is `files.ferry.test`).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An address word; a zone (`fe80::1%wlan0`) is dropped, as a `SocketAddr` here has no use
/// for an interface name.
fn parse_ip(word: &str) -> Option<IpAddr> {
    word.split('%').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "\
# Android's stock file
127.0.0.1       localhost
::1             ip6-localhost localhost
10.0.0.5\tOSS-Internal.Example.com  oss   # trailing comment
#10.9.9.9 commented.example
not-an-ip       bogus.example
2001:db8::5     oss-internal.example.com.
10.0.0.5        oss-internal.example.com
fe80::1%eth0    scoped.example
   10.0.0.6 indented.example";

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn names_aliases_case_and_both_families() {
        assert_eq!(
            lookup(HOSTS, "oss-internal.example.COM"),
            ips(&["10.0.0.5", "2001:db8::5"])
        );
        assert_eq!(lookup(HOSTS, "oss"), ips(&["10.0.0.5"]));
        assert_eq!(lookup(HOSTS, "localhost"), ips(&["127.0.0.1", "::1"]));
        assert_eq!(lookup(HOSTS, "indented.example."), ips(&["10.0.0.6"]));
        assert_eq!(lookup(HOSTS, "scoped.example"), ips(&["fe80::1"]));
    }

    #[test]
    fn comments_and_junk_never_match() {
        assert!(lookup(HOSTS, "commented.example").is_empty());
        assert!(lookup(HOSTS, "bogus.example").is_empty());
        assert!(lookup(HOSTS, "trailing").is_empty());
        assert!(lookup(HOSTS, "comment").is_empty());
        assert!(lookup(HOSTS, "10.0.0.5").is_empty());
        assert!(lookup("", "x").is_empty());
    }
}
