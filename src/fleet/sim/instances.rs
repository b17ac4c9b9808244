//! The instances a simulator plays: a file of `INSTANCE_ID PASSWORD` lines, or the
//! `[fleet]` sections `ferry-controller instance add` prints, concatenated (their `broker`
//! is used unless `--broker` is given).

use crate::error::{Code, Error, Result};
use crate::fleet::topics::check_instance_id;

/// One instance's MQTT login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub instance_id: String,
    pub password: String,
}

/// The logins in `text` and the first `broker = "…"` seen, in file order.
pub fn parse(text: &str) -> Result<(Vec<Login>, Option<String>)> {
    let mut logins = Vec::new();
    let mut broker = None;
    let mut id: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let bad = |why: &str| {
            Error::new(
                Code::InvalidConfig,
                format!("instances file line {}: {why}", n + 1),
            )
        };
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "broker" => {
                    broker.get_or_insert(value);
                }
                "instance_id" => id = Some(value),
                "password" => {
                    let instance_id = id
                        .take()
                        .ok_or_else(|| bad("password before instance_id"))?;
                    logins.push(Login {
                        instance_id,
                        password: value,
                    });
                }
                _ => {}
            }
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(instance_id), Some(password), None) => logins.push(Login {
                instance_id: instance_id.to_string(),
                password: password.to_string(),
            }),
            _ => {
                return Err(bad(
                    "expected `INSTANCE_ID PASSWORD` or a key = \"value\" line",
                ))
            }
        }
    }
    for login in &logins {
        check_instance_id(&login.instance_id)?;
    }
    let mut ids: Vec<&str> = logins.iter().map(|l| l.instance_id.as_str()).collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("instance {} is listed twice", pair[0]),
        ));
    }
    Ok((logins, broker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_instance_add_outputs_are_read_and_bad_lines_named() {
        let text = "[fleet]\nbroker = \"mqtt://127.0.0.1:1884\"\ninstance_id = \"acp-1\"\npassword = \"p1\"\n\
                    [fleet]\nbroker = \"mqtt://other:1\"\ninstance_id = \"acp-2\"\npassword = \"p2\"\n\
                    # a comment\nacp-3 p3\n";
        let (logins, broker) = parse(text).unwrap();
        assert_eq!(broker.as_deref(), Some("mqtt://127.0.0.1:1884"));
        let ids: Vec<_> = logins
            .iter()
            .map(|l| (&*l.instance_id, &*l.password))
            .collect();
        assert_eq!(ids, [("acp-1", "p1"), ("acp-2", "p2"), ("acp-3", "p3")]);
        let e = parse("acp-1 p1\nacp-2\n").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert!(parse("acp-1 p\nacp-1 q\n")
            .unwrap_err()
            .message
            .contains("twice"));
        assert!(parse("a/b p\n").is_err());
    }
}
