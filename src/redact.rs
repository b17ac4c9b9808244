//! Redaction of links for everything a person or another program sees (API answers, CLI
//! output, logs, notes): signed links carry their credentials in the query
//! (`Signature=`, `security-token=`, `X-Amz-Credential=`) or in the user part.

/// What replaces each secret part.
const REDACTED: &str = "<redacted>";

/// `s` with its scheme, host, port and path kept, and every query value, the user part and
/// any fragment replaced with `<redacted>`. Text that is not a link is returned with anything
/// after a `?` or `#` redacted the same way.
pub fn url(s: &str) -> String {
    let (before_fragment, fragment) = match s.split_once('#') {
        Some((head, _)) => (head, Some(REDACTED)),
        None => (s, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={REDACTED}"),
                // A bare word may be the token itself.
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `scheme://user:pass@host/path` → `scheme://<redacted>@host/path`.
fn redact_userinfo(base: &str) -> String {
    let Some(scheme_end) = base.find("://") else {
        return base.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &base[authority_start..];
    let authority_len = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    match authority.rfind('@') {
        Some(at) => format!(
            "{}{REDACTED}{}{}",
            &base[..authority_start],
            &authority[at..],
            &rest[authority_len..]
        ),
        None => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn query_values_userinfo_and_fragments_are_redacted() {
        assert_eq!(
            url("https://b.oss.example.com:8443/a/f.apk?Expires=1&Signature=SECRET&security-token=TOK"),
            "https://b.oss.example.com:8443/a/f.apk?Expires=<redacted>&Signature=<redacted>&security-token=<redacted>"
        );
        assert_eq!(
            url("http://user:pw@h/p?X-Amz-Credential=AK%2F1&TOKENONLY#frag=x"),
            "http://<redacted>@h/p?X-Amz-Credential=<redacted>&<redacted>#<redacted>"
        );
        assert_eq!(url("https://h/p"), "https://h/p");
        assert_eq!(url("oss://bucket/key/a.txt"), "oss://bucket/key/a.txt");
        assert_eq!(url("not a link?secret"), "not a link?<redacted>");
    }
}
