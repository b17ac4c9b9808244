//! The HTTP client every HTTP transfer shares: rustls with bundled webpki roots plus Android's CA
//! folders ([`super::tls`]; no OpenSSL), timeouts, a redirect limit, and a resolver that
//! refuses link-local and cloud-metadata addresses, which would expose instance credentials.

use crate::config::{Config, HttpConfig};
use crate::error::{Code, Error, Result};
use crate::source::dns::AndroidResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Alibaba Cloud's instance metadata service.
const METADATA_V4: [u8; 4] = [100, 100, 100, 200];

/// Whether `ip` is a link-local or metadata address that payloads may not reach by default.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == METADATA_V4,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_link_local_or_metadata(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                // AWS-style IPv6 metadata endpoint fd00:ec2::254.
                || v6.segments()[..2] == [0xfd00, 0x0ec2]
        }
    }
}

/// The error the resolver returns; found again in reqwest's error chain to pick the code.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}, a link-local or metadata address that ferry does not contact (set allow_link_local = true to permit it)")]
pub struct AddressNotAllowed {
    pub host: String,
    pub ip: IpAddr,
}

/// Android's resolution order ([`super::dns`]; libc's resolver finds nothing there), then
/// the address policy on every answer.
struct FilteringResolver {
    allow_link_local: bool,
    dns: Arc<AndroidResolver>,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_link_local;
        let host = name.as_str().to_string();
        let dns = self.dns.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = dns
                .resolve(&host)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if !allow {
                if let Some(bad) = addrs.iter().find(|a| is_link_local_or_metadata(a.ip())) {
                    return Err(Box::new(AddressNotAllowed { host, ip: bad.ip() })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
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

pub fn build_client(config: &Config) -> Result<reqwest::Client> {
    let http: &HttpConfig = &config.http;
    let max_redirects = http.max_redirects;
    let allow = config.allow_link_local;
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            return attempt.error(format!("more than {max_redirects} redirects"));
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            let scheme = attempt.url().scheme().to_string();
            return attempt.error(format!("redirect to a {scheme}: link"));
        }
        if let Err(e) = check_literal_host(attempt.url(), allow) {
            return attempt.error(e.message);
        }
        attempt.follow()
    });
    let builder = reqwest::Client::builder()
        .user_agent(http.user_agent.clone())
        .connect_timeout(http.connect_timeout())
        .read_timeout(http.read_idle_timeout())
        .redirect(policy)
        .tcp_nodelay(true)
        .dns_resolver(Arc::new(FilteringResolver {
            allow_link_local: allow,
            dns: Arc::new(AndroidResolver::new(config, &|k| std::env::var(k).ok())),
        }));
    // Android's CA folders beside the bundled webpki roots.
    super::tls::with_android_roots(builder, config)
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("building the HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_refused() {
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "fe80::1",
            "::ffff:169.254.1.1",
        ] {
            assert!(is_link_local_or_metadata(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1"] {
            assert!(!is_link_local_or_metadata(ip.parse().unwrap()), "{ip}");
        }
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert_eq!(
            check_literal_host(&url, false).unwrap_err().code,
            Code::NetworkAddressNotAllowed
        );
        assert!(check_literal_host(&url, true).is_ok());
    }
}
