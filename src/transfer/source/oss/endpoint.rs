//! From a payload's `UploadEndpoint` to the URL the SDK talks to and the region it signs for.

use crate::config::OssConfig;

/// Where an OSS request goes; requests address `BUCKET.HOST` (virtual-hosted style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OssEndpoint {
    /// `scheme://host[:port]`; https unless the payload spelt out `http://`.
    pub url: String,
    pub region: String,
}

const ALIYUN_SUFFIX: &str = ".aliyuncs.com";
const FALLBACK_REGION: &str = "us-east-1";

impl OssEndpoint {
    /// `endpoint` passed intake (`host[:port]` or `http(s)://host[:port]`).
    pub fn new(endpoint: &str, config: &OssConfig) -> OssEndpoint {
        let (scheme, authority) = match endpoint.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest.trim_end_matches('/')),
            None => ("https".to_string(), endpoint.trim_end_matches('/')),
        };
        let authority = authority.to_ascii_lowercase();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (authority.clone(), None),
        };
        let region = config
            .region
            .clone()
            .or_else(|| aliyun_region(&host))
            .unwrap_or_else(|| FALLBACK_REGION.to_string());
        let host = if config.aliyun_s3_endpoint
            && host.starts_with("oss-")
            && host.ends_with(ALIYUN_SUFFIX)
        {
            format!("s3.{host}")
        } else {
            host
        };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        OssEndpoint {
            url: format!("{scheme}://{host}{port}"),
            region,
        }
    }
}

/// `oss-cn-hangzhou-internal.aliyuncs.com` and `s3.oss-cn-hangzhou.aliyuncs.com` sign for
/// `cn-hangzhou`; the acceleration endpoints carry no region.
fn aliyun_region(host: &str) -> Option<String> {
    let name = host.strip_suffix(ALIYUN_SUFFIX)?;
    let label = name.rsplit('.').next()?;
    let region = label.strip_prefix("oss-")?;
    let region = region.strip_suffix("-internal").unwrap_or(region);
    if region.is_empty() || region.starts_with("accelerate") {
        return None;
    }
    Some(region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> OssEndpoint {
        OssEndpoint::new(text, &OssConfig::default())
    }

    #[test]
    fn aliyun_endpoints_use_the_s3_host_and_their_region() {
        assert_eq!(
            endpoint("oss-cn-hangzhou-internal.aliyuncs.com"),
            OssEndpoint {
                url: "https://s3.oss-cn-hangzhou-internal.aliyuncs.com".into(),
                region: "cn-hangzhou".into()
            }
        );
        let e = endpoint("https://s3.oss-ap-southeast-1.aliyuncs.com");
        assert_eq!(e.url, "https://s3.oss-ap-southeast-1.aliyuncs.com");
        assert_eq!(e.region, "ap-southeast-1");
        assert_eq!(endpoint("oss-accelerate.aliyuncs.com").region, "us-east-1");
    }

    #[test]
    fn other_endpoints_keep_scheme_port_and_use_the_configured_region() {
        let e = endpoint("http://oss.test:9000");
        assert_eq!(e.url, "http://oss.test:9000");
        assert_eq!(e.region, "us-east-1");
        let config = OssConfig {
            region: Some("cn-beijing".into()),
            aliyun_s3_endpoint: false,
            ..OssConfig::default()
        };
        let e = OssEndpoint::new("oss-cn-hangzhou.aliyuncs.com", &config);
        assert_eq!(e.url, "https://oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(e.region, "cn-beijing");
        assert_eq!(endpoint("minio.local:9000").url, "https://minio.local:9000");
    }
}
