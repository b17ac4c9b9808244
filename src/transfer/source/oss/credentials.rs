//! Which credentials sign an OSS request: the payload's STS token, else the daemon's config,
//! else the environment, else none (public-read buckets).

use crate::config::OssConfig;
use crate::task::payload;
use aws_credential_types::Credentials;

/// Environment variable triples, in the order they are tried.
const ENV_NAMES: &[(&str, &str, &str)] = &[
    (
        "OSS_ACCESS_KEY_ID",
        "OSS_ACCESS_KEY_SECRET",
        "OSS_SESSION_TOKEN",
    ),
    (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ),
];

/// The credentials to sign with (`None`: anonymous) and where they came from, for logs.
pub fn resolve(
    from_payload: Option<&payload::Credentials>,
    config: &OssConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Credentials>, &'static str) {
    if let Some(c) = from_payload {
        let token = c.security_token.clone().filter(|t| !t.is_empty());
        return (
            Some(make(&c.access_key_id, &c.access_key_secret, token)),
            "payload",
        );
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.access_key_secret) {
        return (
            Some(make(id, secret, config.security_token.clone())),
            "config",
        );
    }
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    for (id, secret, token) in ENV_NAMES {
        if let (Some(id_value), Some(secret_value)) = (var(id), var(secret)) {
            return (Some(make(&id_value, &secret_value, var(token))), id);
        }
    }
    (None, "anonymous")
}

fn make(id: &str, secret: &str, token: Option<String>) -> Credentials {
    Credentials::new(id, secret, token, None, "ferry")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn payload_then_config_then_environment_then_anonymous() {
        let payload = payload::Credentials {
            access_key_id: "STS.id".into(),
            access_key_secret: "very-secret-value".into(),
            security_token: Some("tok".into()),
        };
        let config = OssConfig {
            access_key_id: Some("cfg".into()),
            access_key_secret: Some("cs".into()),
            ..OssConfig::default()
        };
        let env = env_of(&[
            ("OSS_ACCESS_KEY_ID", "oss"),
            ("OSS_ACCESS_KEY_SECRET", "os"),
            ("AWS_ACCESS_KEY_ID", "aws"),
            ("AWS_SECRET_ACCESS_KEY", "as"),
        ]);
        let (c, from) = resolve(Some(&payload), &config, &env);
        assert_eq!(from, "payload");
        let c = c.unwrap();
        assert_eq!(c.access_key_id(), "STS.id");
        assert_eq!(c.session_token(), Some("tok"));
        let (c, from) = resolve(None, &config, &env);
        assert_eq!((c.unwrap().access_key_id(), from), ("cfg", "config"));
        let (c, from) = resolve(None, &OssConfig::default(), &env);
        assert_eq!(
            (c.unwrap().access_key_id(), from),
            ("oss", "OSS_ACCESS_KEY_ID")
        );
        let aws_only = env_of(&[
            ("OSS_ACCESS_KEY_ID", ""),
            ("AWS_ACCESS_KEY_ID", "aws"),
            ("AWS_SECRET_ACCESS_KEY", "as"),
            ("AWS_SESSION_TOKEN", "t"),
        ]);
        let (c, _) = resolve(None, &OssConfig::default(), &aws_only);
        assert_eq!(c.unwrap().session_token(), Some("t"));
        let (c, from) = resolve(None, &OssConfig::default(), &|_| None);
        assert!(c.is_none());
        assert_eq!(from, "anonymous");
        // Debug output of the SDK type never shows the secret either.
        let (c, _) = resolve(Some(&payload), &config, &env);
        assert!(!format!("{:?}", c.unwrap()).contains("very-secret-value"));
    }
}
