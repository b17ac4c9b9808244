//! netd's resolver socket, `/dev/socket/dnsproxyd`, spoken the way bionic's `getaddrinfo`
//! speaks it. A static binary has no bionic, yet every Android name (private DNS, per-network
//! servers, VPN, the hosts file, netd's cache) is resolved behind this socket, so asking it is
//! the only way to see the names the rest of the phone sees.
//!
//! Followed byte for byte (AOSP sources):
//! - request: bionic `libc/dns/net/getaddrinfo.c`, `android_getaddrinfo_proxy`:
//!   `fprintf("getaddrinfo %s %s %d %d %d %d %u", host|"^", service|"^", ai_flags, ai_family,
//!   ai_socktype, ai_protocol, netid)` then one NUL byte (FrameworkListener ends a command
//!   there). bionic refuses to send names containing any of ` \n\r\t^'"`. The flags are
//!   `AI_ADDRCONFIG`, as apps send them (Java's `InetAddress` and most native callers): netd
//!   then leaves out AAAA (or A) records on a network without IPv6 (or IPv4).
//! - connect: straight to the socket, never a `stat()` first: AOSP policy grants domains
//!   `write` on `dnsproxyd_socket`, not `getattr`. Like bionic, a socket that is not there
//!   (ENOENT) or may not be used (EACCES: SELinux, or no `inet` group) means "ask elsewhere".
//! - answer: `packages/modules/DnsResolver` (formerly `system/netd/server`)
//!   `DnsProxyListener.cpp`, `GetAddrInfoHandler::run` / `sendaddrinfo`: `sendCode(222)` is the
//!   4 bytes `"222\0"`; then per result `sendBE32(1)`, flags, family, socktype, protocol as BE32,
//!   `sendLenAndData(ai_addrlen, ai_addr)`, `sendLenAndData(strlen(canonname)+1 or 0, ..)`; a
//!   BE32 0 ends the list. Failure is `sendBinaryMsg(401, &rv, sizeof(rv))`
//!   (libsysutils `SocketClient.cpp`): `"401\0"`, BE32 length 4, then the `int` EAI code in the
//!   host's byte order, little-endian on every Android ABI.
//!
//! netd keeps the connection open after answering, so the answer is read field by field, never
//! to EOF.

use super::Answer;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// bionic's `AF_INET` / `AF_INET6` (Linux values).
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
/// `SOCK_STREAM`: one answer per address instead of one per socket type.
const SOCK_STREAM: i32 = 1;
/// bionic's `AI_ADDRCONFIG` (`netdb.h`).
pub const AI_ADDRCONFIG: i32 = 0x0400;
/// `NETID_UNSET`: netd picks the default network, as for any app without a bound network.
const NETID_UNSET: u32 = 0;
/// bionic's EAI codes that netd sends back (`netdb.h`), and netd's own timeout code.
const EAI_AGAIN: i32 = 2;
const EAI_FAIL: i32 = 4;
/// Also what netd answers when this uid has too many lookups in flight (DnsProxyListener's
/// per-uid limit): it passes as the others finish.
const EAI_MEMORY: i32 = 6;
const EAI_NODATA: i32 = 7;
const EAI_NONAME: i32 = 8;
const EAI_SYSTEM: i32 = 11;
const NETD_RESOLV_TIMEOUT: i32 = 255;
/// Bounds on what a broken or hostile peer can make us allocate.
const MAX_RESULTS: usize = 256;
const MAX_SOCKADDR: usize = 128;
const MAX_CANONNAME: usize = 1025;

/// The command bionic would send for `getaddrinfo(host, NULL, {SOCK_STREAM}, ..)`.
pub fn encode_request(host: &str) -> Option<Vec<u8>> {
    if host.is_empty() || host.contains([' ', '\n', '\r', '\t', '^', '\'', '"']) {
        return None;
    }
    let flags = AI_ADDRCONFIG;
    let family = 0; // AF_UNSPEC: A and AAAA
    let protocol = 0;
    let mut bytes =
        format!("getaddrinfo {host} ^ {flags} {family} {SOCK_STREAM} {protocol} {NETID_UNSET}")
            .into_bytes();
    bytes.push(0);
    Some(bytes)
}

/// Connects, asks for `host` and reads the answer, all within `timeout`.
pub async fn query(socket: &Path, host: &str, timeout: Duration) -> Answer {
    let Some(request) = encode_request(host) else {
        return Answer::Failed {
            detail: "the name cannot be sent to netd (space, quote or ^)".into(),
            transient: false,
        };
    };
    let exchange = async {
        let mut stream = match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => stream,
            Err(e) => return Ok(connect_failed(&e)),
        };
        stream.write_all(&request).await?;
        stream.flush().await?;
        read_answer(&mut stream).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Answer::Failed {
            detail: describe_io(&e),
            transient: true,
        },
        Err(_) => Answer::Failed {
            detail: format!("no answer within {} ms", timeout.as_millis()),
            transient: true,
        },
    }
}

/// A failed connect: absent (ask elsewhere, nothing to retry) unless netd may come back.
fn connect_failed(e: &std::io::Error) -> Answer {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => Answer::Absent("absent".into()),
        Some(libc::EACCES) | Some(libc::EPERM) => Answer::Absent(
            "not allowed to connect (the uid needs group inet, 3003, and the SELinux domain `connectto` netd)"
                .into(),
        ),
        _ => Answer::Failed {
            detail: describe_io(e),
            transient: true,
        },
    }
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused (netd not running?)".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (the uid needs group inet, 3003)".into()
        }
        std::io::ErrorKind::UnexpectedEof => "netd closed the connection mid-answer".into(),
        std::io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("I/O error: {e}"),
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

async fn be32<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).await?;
    Ok(i32::from_be_bytes(b))
}

/// A BE32 length (bounded by `max`) followed by that many bytes.
async fn len_and_data<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
) -> std::io::Result<Vec<u8>> {
    let len = be32(r).await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| bad(format!("netd sent a {what} of length {len}")))?;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(data)
}

/// Reads one answer: the 4-byte code, then the addrinfo list or the EAI code.
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Answer> {
    let mut code = [0u8; 4];
    r.read_exact(&mut code).await?;
    match &code {
        b"222\0" => read_addrinfos(r).await.map(Answer::Addrs),
        b"401\0" => {
            let data = len_and_data(r, 64, "failure code").await?;
            let eai = <[u8; 4]>::try_from(data.as_slice())
                .map(i32::from_le_bytes)
                .map_err(|_| bad(format!("netd sent a {}-byte failure code", data.len())))?;
            Ok(from_eai(eai))
        }
        other => Err(bad(format!(
            "netd answered {:?}, not 222 or 401",
            String::from_utf8_lossy(other).trim_end_matches('\0')
        ))),
    }
}

async fn read_addrinfos<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<IpAddr>> {
    let mut addrs = Vec::new();
    for _ in 0..=MAX_RESULTS {
        match be32(r).await? {
            0 => return Ok(addrs),
            1 => {}
            n => return Err(bad(format!("netd sent {n} where 0 or 1 was expected"))),
        }
        let _flags = be32(r).await?;
        let family = be32(r).await?;
        let _socktype = be32(r).await?;
        let _protocol = be32(r).await?;
        let sockaddr = len_and_data(r, MAX_SOCKADDR, "sockaddr").await?;
        let canon = len_and_data(r, MAX_CANONNAME, "canonical name").await?;
        if canon.last().is_some_and(|&b| b != 0) {
            return Err(bad("netd sent a canonical name without its NUL".into()));
        }
        if let Some(ip) = sockaddr_ip(family, &sockaddr) {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    }
    Err(bad(format!("netd sent more than {MAX_RESULTS} results")))
}

/// The address inside a `sockaddr_in` (address at offset 4) or `sockaddr_in6` (offset 8).
fn sockaddr_ip(family: i32, sa: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => {
            let b: [u8; 4] = sa.get(4..8)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AF_INET6 => {
            let b: [u8; 16] = sa.get(8..24)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn from_eai(eai: i32) -> Answer {
    let failed = |name: &str, transient| Answer::Failed {
        detail: format!("netd failed with {name} ({eai})"),
        transient,
    };
    match eai {
        EAI_NODATA => Answer::NoSuchHost(format!("no such host (EAI_NODATA, {eai})")),
        EAI_NONAME => Answer::NoSuchHost(format!("no such host (EAI_NONAME, {eai})")),
        EAI_AGAIN => failed("EAI_AGAIN", true),
        NETD_RESOLV_TIMEOUT => failed("a timeout", true),
        EAI_FAIL => failed("EAI_FAIL", true),
        EAI_MEMORY => failed("EAI_MEMORY (too many lookups in flight for this uid)", true),
        EAI_SYSTEM => failed("EAI_SYSTEM", true),
        _ => failed("EAI code", false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One addrinfo as netd's `sendaddrinfo` writes it.
    fn entry(out: &mut Vec<u8>, family: i32, sockaddr: &[u8], canon: Option<&str>) {
        for v in [1, 0, family, SOCK_STREAM, 6, sockaddr.len() as i32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(sockaddr);
        match canon {
            Some(c) => {
                out.extend_from_slice(&(c.len() as i32 + 1).to_be_bytes());
                out.extend_from_slice(c.as_bytes());
                out.push(0);
            }
            None => out.extend_from_slice(&0i32.to_be_bytes()),
        }
    }

    fn sockaddr_in(ip: [u8; 4]) -> Vec<u8> {
        let mut sa = vec![0u8; 16];
        sa[..2].copy_from_slice(&(AF_INET as u16).to_le_bytes());
        sa[4..8].copy_from_slice(&ip);
        sa
    }

    fn sockaddr_in6(ip: Ipv6Addr) -> Vec<u8> {
        let mut sa = vec![0u8; 28];
        sa[..2].copy_from_slice(&(AF_INET6 as u16).to_le_bytes());
        sa[8..24].copy_from_slice(&ip.octets());
        sa
    }

    async fn decode(bytes: &[u8]) -> std::io::Result<Answer> {
        read_answer(&mut &bytes[..]).await
    }

    #[test]
    fn request_is_what_bionic_writes_with_ai_addrconfig_like_apps() {
        // flags 1024 = AI_ADDRCONFIG (0x0400), family 0, SOCK_STREAM, protocol 0, NETID_UNSET.
        assert_eq!(
            encode_request("files.ferry.test").unwrap(),
            b"getaddrinfo files.ferry.test ^ 1024 0 1 0 0\0"
        );
        for bad in ["a b", "a^b", "a'b", "a\"b", "a\nb", ""] {
            assert_eq!(encode_request(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn success_list_decodes_v4_v6_and_canonical_names() {
        let mut bytes = b"222\0".to_vec();
        entry(
            &mut bytes,
            AF_INET,
            &sockaddr_in([10, 1, 2, 3]),
            Some("cdn.example"),
        );
        entry(
            &mut bytes,
            AF_INET6,
            &sockaddr_in6("2001:db8::7".parse().unwrap()),
            None,
        );
        entry(&mut bytes, AF_INET, &sockaddr_in([10, 1, 2, 3]), None); // duplicate
        bytes.extend_from_slice(&0i32.to_be_bytes());
        let want = vec![
            "10.1.2.3".parse::<IpAddr>().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        assert_eq!(decode(&bytes).await.unwrap(), Answer::Addrs(want));
        // An empty list is a valid (if odd) success.
        let empty = [b"222\0".as_slice(), &0i32.to_be_bytes()].concat();
        assert_eq!(decode(&empty).await.unwrap(), Answer::Addrs(vec![]));
    }

    #[tokio::test]
    async fn failures_decode_to_their_meaning() {
        let fail =
            |eai: i32| [b"401\0".as_slice(), &4i32.to_be_bytes(), &eai.to_le_bytes()].concat();
        assert!(matches!(
            decode(&fail(EAI_NODATA)).await.unwrap(),
            Answer::NoSuchHost(_)
        ));
        assert!(matches!(
            decode(&fail(EAI_AGAIN)).await.unwrap(),
            Answer::Failed {
                transient: true,
                ..
            }
        ));
        // netd's per-uid limit of lookups in flight: passes, so retried.
        assert!(matches!(
            decode(&fail(EAI_MEMORY)).await.unwrap(),
            Answer::Failed {
                transient: true,
                ref detail,
            } if detail.contains("EAI_MEMORY")
        ));
        assert!(matches!(
            decode(&fail(9)).await.unwrap(),
            Answer::Failed {
                transient: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn truncated_or_foreign_answers_are_errors() {
        let mut bytes = b"222\0".to_vec();
        entry(&mut bytes, AF_INET, &sockaddr_in([1, 2, 3, 4]), None);
        // No terminating 0.
        assert!(decode(&bytes).await.is_err());
        assert!(decode(b"500 bad command\0").await.is_err());
        let huge = [
            b"222\0".as_slice(),
            &1i32.to_be_bytes(),
            &[0u8; 16],
            &i32::MAX.to_be_bytes(),
        ]
        .concat();
        assert!(decode(&huge).await.is_err());
    }

    #[test]
    fn connect_failures_are_absent_like_bionic_unless_netd_may_come_back() {
        let err = |code| connect_failed(&std::io::Error::from_raw_os_error(code));
        for code in [libc::ENOENT, libc::ENOTDIR, libc::EACCES] {
            assert!(matches!(err(code), Answer::Absent(_)), "{code}");
        }
        assert!(matches!(
            err(libc::ECONNREFUSED),
            Answer::Failed {
                transient: true,
                ..
            }
        ));
    }
}
