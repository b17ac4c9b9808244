//! Links as people may see them. A signed link carries its secret in the query
//! (`Signature=`, `security-token=`, `X-Amz-Credential=`, `OSSAccessKeyId=`, …) or in its
//! userinfo; every message, log line or API answer that shows a link goes through [`url()`] (or
//! [`url_parsed`]), which keeps the scheme, host, port, path and the query's parameter names
//! and replaces every query value and the userinfo with `<redacted>`. The fragment, never sent
//! to a server, is dropped.

/// What stands in for a hidden part.
pub const REDACTED: &str = "<redacted>";

/// `text` with its userinfo and query values hidden. Text that is not a URL is cut at the
/// first `?` or `#`, and anything before an `@` in what would be its authority is hidden.
pub fn url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(parsed) => url_parsed(&parsed),
        Err(_) => unparsed(text),
    }
}

/// A parsed link with its userinfo and query values hidden.
pub fn url_parsed(link: &url::Url) -> String {
    let mut shown = link.clone();
    shown.set_fragment(None);
    let had_userinfo = !link.username().is_empty() || link.password().is_some();
    if had_userinfo {
        // Cannot fail on a link that had userinfo (it has a host).
        let _ = shown.set_password(None);
        let _ = shown.set_username(REDACTED);
    }
    if let Some(query) = link.query() {
        shown.set_query(Some(&redact_query(query)));
    }
    // The setters percent-encode `<` and `>`; show the marker as it is spelt elsewhere.
    shown.to_string().replace("%3Credacted%3E", REDACTED)
}

/// `a=1&b&c=2` → `a=<redacted>&<redacted>&c=<redacted>`: a part without `=` may itself be a
/// token, so it is hidden whole.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((name, _)) => format!("{name}={REDACTED}"),
            None if part.is_empty() => String::new(),
            None => REDACTED.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn unparsed(text: &str) -> String {
    let end = text.find(['?', '#']).unwrap_or(text.len());
    let (head, rest) = text.split_at(end);
    let (scheme, after) = match head.find("://") {
        Some(i) => head.split_at(i + 3),
        None => ("", head),
    };
    let authority_end = after.find(['/', '\\']).unwrap_or(after.len());
    let (authority, path) = after.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}{}", &authority[at..]),
        None => authority.to_string(),
    };
    let tail = match rest.strip_prefix('?') {
        Some(query) => {
            let query = query.split('#').next().unwrap_or_default();
            format!("?{}", redact_query(query))
        }
        None => String::new(),
    };
    format!("{scheme}{authority}{path}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_userinfo_are_hidden() {
        assert_eq!(
            url("https://user:pa55@bucket.oss-cn-hangzhou.aliyuncs.com:8443/a/b.apk?OSSAccessKeyId=LTAI5t&Expires=1&Signature=c2lnbg%3D%3D&security-token=CAIS#frag"),
            "https://<redacted>@bucket.oss-cn-hangzhou.aliyuncs.com:8443/a/b.apk?OSSAccessKeyId=<redacted>&Expires=<redacted>&Signature=<redacted>&security-token=<redacted>"
        );
        assert_eq!(
            url("https://s3.example/k?X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=abc&bare-token"),
            "https://s3.example/k?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&<redacted>"
        );
        assert_eq!(url("http://h/p"), "http://h/p");
        assert_eq!(url("http://tok@h/p"), "http://<redacted>@h/p");
        assert_eq!(url("http://:secret@h/"), "http://<redacted>@h/");
    }

    #[test]
    fn no_secret_survives_in_any_form() {
        for text in [
            "https://h/x?Signature=SECRET",
            "https://h/x?a=1&Signature=SECRET&b=2",
            "https://h/x?SECRET",
            "https://SECRET@h/x",
            "https://u:SECRET@h/x",
            "https://h/x#SECRET",
            "not a url?Signature=SECRET",
            "http://u:SECRET@[::1/x?y=SECRET",
            "://SECRET@h/x",
            "http://h:99999/x?Signature=SECRET",
        ] {
            let shown = url(text);
            assert!(!shown.contains("SECRET"), "{text} -> {shown}");
        }
    }

    #[test]
    fn unparsable_text_keeps_what_is_safe() {
        assert_eq!(
            url("http://u:p@h:99999/a?Signature=s"),
            "http://<redacted>@h:99999/a?Signature=<redacted>"
        );
        assert_eq!(url("plain words"), "plain words");
    }
}
