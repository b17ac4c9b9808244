//! The HTTP client every HTTP transfer shares: rustls with bundled webpki roots plus Android's CA
//! folders ([`super::tls`]; no OpenSSL), timeouts, no automatic redirects, and a resolver that
//! refuses link-local and cloud-metadata addresses, which would expose instance credentials.

use super::address::{is_link_local_or_metadata, AddressNotAllowed};
use crate::config::{Config, HttpConfig};
use crate::error::{Code, Error, Result};
use crate::net::dns::AndroidResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;

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

/// The client follows no redirect and never sends `Referer`: a link's query may be its
/// signature, and an OSS request's headers carry its security token. DOWNLOAD_URL redirects
/// are followed by [`crate::transfer::source::redirect`], one checked hop at a time; OSS redirects are refused
/// ([`crate::transfer::source::oss`]).
pub fn build_client(config: &Config) -> Result<reqwest::Client> {
    let http: &HttpConfig = &config.http;
    let builder = reqwest::Client::builder()
        .user_agent(http.user_agent.clone())
        .connect_timeout(http.connect_timeout())
        .read_timeout(http.read_idle_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        // No HTTP(S)_PROXY/ALL_PROXY from the environment: a proxy would resolve names
        // itself, past the address policy, and receive the link's userinfo.
        .no_proxy()
        .tcp_nodelay(true)
        .dns_resolver(Arc::new(FilteringResolver {
            allow_link_local: config.allow_link_local,
            dns: Arc::new(AndroidResolver::new(config, &|k| std::env::var(k).ok())),
        }));
    // Android's CA folders beside the bundled webpki roots.
    super::tls::with_android_roots(builder, config)
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("building the HTTP client: {e}")))
}
