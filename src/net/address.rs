//! The address policy: link-local and cloud-metadata addresses (and IPv6 forms that carry
//! them) are never contacted unless `allow_link_local` says so, and link text that would reach a
//! host it does not spell out is refused before any URL parser reads it.

use crate::error::{Code, Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Alibaba Cloud's instance metadata service.
const METADATA_V4: [u8; 4] = [100, 100, 100, 200];

/// Whether `ip` is a link-local or metadata address that payloads may not reach by default.
/// An IPv6 address that carries an IPv4 one (see [`embedded_ipv4`]) is refused when that IPv4
/// address is: a NAT64 gateway or a 6to4/Teredo relay would otherwise carry the connection
/// to it.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_refused(v4),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                // AWS-style IPv6 metadata endpoint fd00:ec2::254.
                || v6.segments()[..2] == [0xfd00, 0x0ec2]
                || embedded_ipv4(v6).into_iter().any(v4_refused)
        }
    }
}

fn v4_refused(v4: Ipv4Addr) -> bool {
    v4.is_link_local() || v4.octets() == METADATA_V4
}

/// The IPv4 addresses an IPv6 address may stand for: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and the local-use `64:ff9b:1::/48`
/// (every RFC 6052 position, as the prefix length is the operator's choice), 6to4
/// `2002:AABB:CCDD::/48`, Teredo `2001:0::/32` (server in bits 32..64, client in bits
/// 96..128 inverted), SIIT's IPv4-translated `::ffff:0:a.b.c.d`, and ISATAP interface
/// identifiers `…:0:5efe:a.b.c.d` / `…:200:5efe:a.b.c.d` under any prefix.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = v6.octets();
    let seg = v6.segments();
    let v4 = |b: [u8; 4]| Ipv4Addr::from(b);
    let last = v4([o[12], o[13], o[14], o[15]]);
    let mut found = Vec::new();
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
        found.push(last);
    }
    if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        found.push(last);
    }
    if (seg[4] == 0 || seg[4] == 0x200) && seg[5] == 0x5efe {
        found.push(last);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        found.push(last);
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 2.2: /48, /56 and /64 skip bits 64..72; /96 takes the last 32 bits.
        found.push(v4([o[6], o[7], o[9], o[10]]));
        found.push(v4([o[7], o[9], o[10], o[11]]));
        found.push(v4([o[9], o[10], o[11], o[12]]));
        found.push(last);
    }
    if seg[0] == 0x2002 {
        found.push(v4([o[2], o[3], o[4], o[5]]));
    }
    if seg[..2] == [0x2001, 0] {
        found.push(v4([o[4], o[5], o[6], o[7]]));
        found.push(v4([!o[12], !o[13], !o[14], !o[15]]));
    }
    found
}

/// Why the raw text of an http(s) link, or of a redirect's `Location` (which may be
/// relative), would reach a host it does not spell out, or `None` when it is clear. The URL
/// standard reads `http:///x`, `http:x`, `///x` and `\\x` as naming host `x`; such text, tabs
/// or line breaks inside (which parsers drop), backslashes before the query (read as `/`)
/// and an empty host are refused here, on the text, because the parsed URL no longer shows
/// them.
pub fn link_text_problem(text: &str) -> Option<&'static str> {
    let text = text.trim_matches(|c: char| c <= ' ');
    if text.contains(['\t', '\n', '\r']) {
        return Some("it holds a tab or line break");
    }
    let before_query = &text[..text.find(['?', '#']).unwrap_or(text.len())];
    if before_query.contains('\\') {
        return Some("it holds a backslash, which URL parsers read as /");
    }
    let slash = |c: char| c == '/' || c == '\\';
    let scheme_end = text.find(':').filter(|&i| {
        let s = &text[..i];
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    let after_scheme = match scheme_end {
        Some(i) if matches!(text[..i].to_ascii_lowercase().as_str(), "http" | "https") => {
            let rest = &text[i + 1..];
            if !rest.starts_with("//") {
                return Some("the scheme is not followed by // and a host");
            }
            &rest[2..]
        }
        // Another scheme: the caller refuses it by name.
        Some(_) => return None,
        None => {
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(a), Some(b)) if slash(a) && slash(b) => &text[2..],
                // A path, a query or nothing: the host stays the one already used.
                _ => return None,
            }
        }
    };
    if after_scheme.starts_with(slash) {
        return Some("it names no host (three or more slashes)");
    }
    let authority = &after_scheme[..after_scheme
        .find(|c: char| slash(c) || c == '?' || c == '#')
        .unwrap_or(after_scheme.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => host_port,
    };
    host.is_empty().then_some("it names no host")
}

/// The error the resolver returns; found again in reqwest's error chain to pick the code.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}, a link-local or metadata address that ferry does not contact (set allow_link_local = true to permit it)")]
pub struct AddressNotAllowed {
    pub host: String,
    pub ip: IpAddr,
}

/// Refuses a URL whose host is a literal address the policy forbids (no resolver runs then).
pub fn check_literal_host(url: &reqwest::Url, allow_link_local: bool) -> Result<()> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if !allow_link_local && is_link_local_or_metadata(ip) {
        let host = url.host_str().unwrap_or_default().to_string();
        return Err(Error::new(
            Code::NetworkAddressNotAllowed,
            AddressNotAllowed { host, ip }.to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        is_link_local_or_metadata(ip.parse().unwrap())
    }

    #[test]
    fn metadata_and_link_local_are_refused() {
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.1.1",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "8.8.8.8",
            "::1",
            "::",
            "2001:db8::1",
        ] {
            assert!(!refused(ip), "{ip}");
        }
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert_eq!(
            check_literal_host(&url, false).unwrap_err().code,
            Code::NetworkAddressNotAllowed
        );
        assert!(check_literal_host(&url, true).is_ok());
    }

    #[test]
    fn ipv6_forms_embedding_a_refused_ipv4_are_refused() {
        for ip in [
            // IPv4-compatible, both spellings.
            "::169.254.169.254",
            "::a9fe:a9fe",
            "::100.100.100.200",
            // IPv4-mapped.
            "::ffff:100.100.100.200",
            "::ffff:a9fe:1",
            // NAT64 well-known prefix.
            "64:ff9b::169.254.169.254",
            "64:ff9b::6464:64c8",
            // NAT64 local-use prefix at /96, /64, /56 and /48 (RFC 6052 2.2).
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:0:a9:fea9:fe00:0",
            "64:ff9b:1:a9:fe:a9fe::",
            "64:ff9b:1:a9fe:a9:fe00::",
            // 6to4.
            "2002:a9fe:a9fe::1",
            "2002:6464:64c8:1234::1",
            // Teredo: server in bits 32..64, client inverted in bits 96..128.
            "2001:0:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:5601:5637",
            "2001:0:4136:e378:0:0:9b9b:9b37",
            // SIIT IPv4-translated.
            "::ffff:0:a9fe:a9fe",
            "::ffff:0:169.254.169.254",
            // ISATAP interface identifiers under any prefix.
            "2001:db8::5efe:a9fe:a9fe",
            "fd00::200:5efe:169.254.169.254",
        ] {
            assert!(refused(ip), "{ip}");
        }
        // The same forms around ordinary addresses stay allowed.
        for ip in [
            "::8.8.8.8",
            "::ffff:10.0.0.1",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::a9fe:a9fe",
            "2001:db8::5efe:808:808",
            "::ffff:0:808:808",
        ] {
            assert!(!refused(ip), "{ip}");
        }
        for literal in [
            "http://[::169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]:8080/x",
            "http://[2002:a9fe:a9fe::]/",
            "http://[2001:0:4136:e378::5601:5637]/",
            // Decimal, octal and hex IPv4 spellings parse to the same address.
            "http://2852039166/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.169.254./",
            "http://0xa9fea9fe/",
        ] {
            let url = reqwest::Url::parse(literal).unwrap();
            assert_eq!(
                check_literal_host(&url, false).map_err(|e| e.code),
                Err(Code::NetworkAddressNotAllowed),
                "{literal}"
            );
        }
    }

    #[test]
    fn link_text_naming_no_host_is_refused() {
        for bad in [
            "http:///x",
            "https:////x",
            "http:x",
            "http:/x",
            "HTTP:\\\\\\x",
            "http:/\\x",
            "///x",
            "\\\\\\x",
            "/\\/x",
            "http://@/x",
            "http://:80/x",
            "http://user@:80/x",
            "//",
            "http:/\t/x",
            "/\t/x",
            "\\path",
            "/a\\b.apk",
        ] {
            assert!(link_text_problem(bad).is_some(), "{bad:?}");
        }
        for good in [
            "http://x/",
            "https://user:pw@host:8443/a?b=c",
            "http://[::1]:8080/x",
            "http://[::1]/x",
            "//other.example/x",
            "/path",
            "path/x",
            "?a=b",
            "",
            "file:///etc/passwd",
            " http://x/ ",
        ] {
            assert_eq!(link_text_problem(good), None, "{good:?}");
        }
    }
}
