//! DOWNLOAD_URL redirects, followed one checked hop at a time by [`super::http`] (the client
//! itself follows none, see [`crate::net::client::build_client`]). Each hop's `Location` is checked
//! as text first (`http:///x` names no host, though URL parsers read it as host `x`), then
//! for its scheme, the hop count and the address policy — so every refusal has its own
//! code, and a refused address is `Network.AddressNotAllowed` whether the redirect names it
//! literally or by a host name (the resolver refuses those). Each hop is a new request for
//! the new link alone: no `Referer`, and the first link's credentials stay with it.

use super::SourceError;
use crate::config::Config;
use crate::error::Code;
use crate::net;
use crate::redact;
use reqwest::{StatusCode, Url};

/// What a redirect may do; from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RedirectRules {
    /// `http.max_redirects`.
    pub max: usize,
    /// `allow_link_local`: the address policy applies to every hop.
    pub allow_link_local: bool,
}

impl RedirectRules {
    pub fn from_config(config: &Config) -> RedirectRules {
        RedirectRules {
            max: config.http.max_redirects,
            allow_link_local: config.allow_link_local,
        }
    }

    /// The link to request after `from` answered the redirect `status` with `location`,
    /// the `hop`-th redirect of this read (1 for the first).
    pub fn next(
        &self,
        from: &Url,
        status: StatusCode,
        location: Option<&str>,
        hop: usize,
    ) -> Result<Url, SourceError> {
        let shown_from = redact::url_parsed(from);
        let refuse = |why: String| {
            SourceError::permanent(
                Code::SourceRedirectNotAllowed,
                format!("{shown_from} answered HTTP {status} with a redirect that ferry does not follow: {why}"),
            )
        };
        if hop > self.max {
            return Err(SourceError::permanent(
                Code::SourceTooManyRedirects,
                format!("{shown_from} redirected once more after {} redirects (http.max_redirects); the link does not lead to a file", self.max),
            ));
        }
        let location = location
            .ok_or_else(|| refuse("the answer has no Location that is ASCII text".into()))?;
        let shown = redact::url(location);
        if let Some(problem) = net::address::link_text_problem(location) {
            return Err(refuse(format!("Location {shown:?}: {problem}")));
        }
        let next = from
            .join(location.trim())
            .map_err(|e| refuse(format!("Location {shown:?} is not a link ({e})")))?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(refuse(format!(
                "Location {shown:?} is a {}: link; only http and https links are followed",
                next.scheme()
            )));
        }
        if next.host_str().is_none_or(str::is_empty) {
            return Err(refuse(format!("Location {shown:?} names no host")));
        }
        net::address::check_literal_host(&next, self.allow_link_local).map_err(|e| {
            SourceError::permanent(e.code, format!("{shown_from} redirected: {}", e.message))
        })?;
        Ok(next)
    }
}

/// The statuses followed as redirects; any other 3xx is an answer ferry cannot use.
pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(location: &str, hop: usize) -> Result<Url, SourceError> {
        let rules = RedirectRules {
            max: 3,
            allow_link_local: false,
        };
        let from = Url::parse("https://h.example/a/b?Signature=SECRET").unwrap();
        rules.next(&from, StatusCode::FOUND, Some(location), hop)
    }

    fn code(location: &str) -> Code {
        next(location, 1).unwrap_err().code
    }

    #[test]
    fn relative_and_absolute_locations_are_followed() {
        assert_eq!(next("c", 1).unwrap().as_str(), "https://h.example/a/c");
        assert_eq!(
            next("/c?x=1", 1).unwrap().as_str(),
            "https://h.example/c?x=1"
        );
        assert_eq!(
            next("//o.example/c", 1).unwrap().as_str(),
            "https://o.example/c"
        );
        assert_eq!(
            next("http://o.example:8080/", 3).unwrap().as_str(),
            "http://o.example:8080/"
        );
    }

    #[test]
    fn each_refusal_has_its_code_and_no_secret() {
        assert_eq!(code("file:///etc/passwd"), Code::SourceRedirectNotAllowed);
        assert_eq!(code("ftp://o.example/x"), Code::SourceRedirectNotAllowed);
        assert_eq!(code("http:///x"), Code::SourceRedirectNotAllowed);
        assert_eq!(code("///x"), Code::SourceRedirectNotAllowed);
        assert_eq!(
            code("http://169.254.169.254/latest/meta-data"),
            Code::NetworkAddressNotAllowed
        );
        assert_eq!(
            code("//[64:ff9b::a9fe:a9fe]/"),
            Code::NetworkAddressNotAllowed
        );
        assert_eq!(
            code("http://[::ffff:100.100.100.200]/"),
            Code::NetworkAddressNotAllowed
        );
        assert_eq!(
            next("/x", 4).unwrap_err().code,
            Code::SourceTooManyRedirects
        );
        let rules = RedirectRules {
            max: 3,
            allow_link_local: false,
        };
        let from = Url::parse("https://h.example/").unwrap();
        let none = rules.next(&from, StatusCode::FOUND, None, 1).unwrap_err();
        assert_eq!(none.code, Code::SourceRedirectNotAllowed);
        for location in [
            "file:///x?token=SECRET",
            "http:///x?token=SECRET",
            "http://169.254.169.254/?t=SECRET",
        ] {
            let e = next(location, 1).unwrap_err();
            assert!(!e.message.contains("SECRET"), "{}", e.message);
        }
        let e = next("file:///etc/passwd", 1).unwrap_err();
        assert!(e.message.contains("file: link"), "{}", e.message);
    }
}
