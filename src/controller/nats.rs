//! A NATS cluster as the fleet's broker (`ferry-controller serve --broker URL` on a node's
//! MQTT listener, agents with `[fleet] brokers = [...]` listing every node): the `users`
//! of the fleet's account for nats-server, written from the store so each agent is confined
//! to its own subjects as on the other brokers ([`super::mosquitto`]).
//!
//! nats-server accepts plaintext or bcrypt passwords only, so the store keeps a bcrypt hash of
//! every agent password beside its `$7$` one ([`super::secrets::bcrypt_hash`]); an instance
//! registered before that has none and is named in [`NatsUsers::without_bcrypt`] (its password
//! must be rotated), never dropped silently.
//!
//! The file is included in the account's map (nats-server's `include` does not work inside an
//! array), and `nats-server --signal reload` applies a new one:
//!
//! ```text
//! accounts { FERRY { jetstream: enabled, include "ferry-users.conf" } }
//! ```

use super::ports::Credentials;
use super::secrets;
use crate::error::{Code, Error, Result};
use crate::fleet::topics::{self, Kind};
use std::fmt::Write;

/// What `nats-files` writes, and who is missing from it.
pub struct NatsUsers {
    /// `users: [...]`, one entry per line: the controller unrestricted, then each agent.
    pub text: String,
    /// Instances with no bcrypt hash in the store (registered before schema 2), left out of
    /// `text`: they cannot log in to NATS until their password is rotated.
    pub without_bcrypt: Vec<String>,
}

/// The NATS subject of an MQTT topic or filter as nats-server maps it: `/` separates tokens,
/// a `.` inside a level becomes `//` (`ferry/v1/i/acp.1/report` is `ferry.v1.i.acp//1.report`),
/// and the wildcards `+` and `#` become `*` and `>`.
pub fn subject(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| match level {
            "+" => "*".to_string(),
            "#" => ">".to_string(),
            level => level.replace('.', "//"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The MQTT topic of a subject: the inverse of [`subject`] for concrete topics.
pub fn topic(subject: &str) -> String {
    subject
        .split('.')
        .map(|token| token.replace("//", "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The account's `users` from [`Credentials::agent_bcrypt_hashes`] plus the controller's
/// user (its password bcrypt-hashed here, fresh salt): each agent may publish only its
/// report, hello and presence subjects and subscribe only to its order subject.
pub async fn nats_users(
    credentials: &dyn Credentials,
    controller_user: &str,
    controller_password: &str,
) -> Result<NatsUsers> {
    let mut agents = credentials.agent_bcrypt_hashes().await?;
    agents.sort();
    if controller_user.is_empty() || !controller_user.chars().all(plain) {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("controller user {controller_user:?} cannot be a NATS user name"),
        ));
    }
    let controller_hash = secrets::bcrypt_hash(controller_password);
    let mut text = String::from(
        "# ferry fleet users for nats-server: written by `ferry-controller nats-files`; edits are\n\
         # overwritten. Include it in the fleet's account map, then `nats-server --signal reload`.\n\
         users: [\n",
    );
    let _ = writeln!(
        text,
        "  {{user: \"{controller_user}\", password: \"{controller_hash}\"}}"
    );
    let mut without_bcrypt = Vec::new();
    for (instance, hash) in agents {
        topics::check_instance_id(&instance)?;
        if instance == controller_user {
            return Err(Error::new(
                Code::InvalidInstanceId,
                format!("instance {instance:?} has the controller's user name"),
            ));
        }
        let Some(hash) = hash else {
            without_bcrypt.push(instance);
            continue;
        };
        if !hash.starts_with("$2") || !hash.chars().all(plain) {
            return Err(Error::new(
                Code::InvalidConfig,
                format!("the stored bcrypt hash of {instance} is not a bcrypt hash"),
            ));
        }
        let s = |kind| subject(&topics::topic(&instance, kind));
        let _ = writeln!(
            text,
            "  {{user: \"{instance}\", password: \"{hash}\", permissions: {{publish: {{allow: \
             [\"{}\", \"{}\", \"{}\"]}}, subscribe: {{allow: [\"{}\"]}}}}}}",
            s(Kind::Report),
            s(Kind::Hello),
            s(Kind::Presence),
            s(Kind::Order),
        );
    }
    text.push_str("]\n");
    if !without_bcrypt.is_empty() {
        let _ = writeln!(
            text,
            "# Left out, no bcrypt hash (rotate their passwords): {}",
            without_bcrypt.join(" ")
        );
    }
    Ok(NatsUsers {
        text,
        without_bcrypt,
    })
}

/// Characters that need no escaping inside a NATS config string.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.$/".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ports::BoxFuture;

    struct Hashes(Vec<(String, Option<String>)>);

    impl Credentials for Hashes {
        fn access_key_secret(&self, _: &str) -> BoxFuture<'_, Result<Option<String>>> {
            Box::pin(async { Ok(None) })
        }
        fn agent_password_hash(&self, _: &str) -> BoxFuture<'_, Result<Option<String>>> {
            Box::pin(async { Ok(None) })
        }
        fn agent_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn agent_bcrypt_hashes(
            &self,
        ) -> BoxFuture<'_, Result<crate::controller::ports::BcryptHashes>> {
            let all = self.0.clone();
            Box::pin(async move { Ok(all) })
        }
    }

    #[test]
    fn subjects_follow_nats_servers_mqtt_mapping() {
        assert_eq!(
            subject("ferry/v1/i/acp.1/report"),
            "ferry.v1.i.acp//1.report"
        );
        assert_eq!(subject("ferry/v1/i/acp-1/order"), "ferry.v1.i.acp-1.order");
        assert_eq!(subject(&topics::every(Kind::Hello)), "ferry.v1.i.*.hello");
        assert_eq!(topic("ferry.v1.i.acp//1.report"), "ferry/v1/i/acp.1/report");
        assert_eq!(
            topics::parse(&topic("ferry.v1.i.a//b//c.presence")),
            Some(("a.b.c", Kind::Presence))
        );
    }

    #[tokio::test]
    async fn agents_get_their_own_subjects_and_old_instances_are_named() {
        let hash = secrets::bcrypt_hash("agent-pw");
        assert!(hash.starts_with("$2a$04$"), "{hash}");
        assert!(bcrypt::verify("agent-pw", &hash).unwrap());
        let store = Hashes(vec![
            ("acp.2".into(), Some(hash.clone())),
            ("acp-old".into(), None),
        ]);
        let users = nats_users(&store, "ferry-controller", "ctl-SECRET")
            .await
            .unwrap();
        assert_eq!(users.without_bcrypt, ["acp-old"]);
        let t = &users.text;
        assert!(!t.contains("ctl-SECRET") && !t.contains("agent-pw"), "{t}");
        assert!(t.contains(&format!(
            "{{user: \"acp.2\", password: \"{hash}\", permissions: {{publish: {{allow: \
             [\"ferry.v1.i.acp//2.report\", \"ferry.v1.i.acp//2.hello\", \
             \"ferry.v1.i.acp//2.presence\"]}}, subscribe: {{allow: [\"ferry.v1.i.acp//2.order\"]}}}}}}"
        )), "{t}");
        assert!(
            t.contains("{user: \"ferry-controller\", password: \"$2a$04$"),
            "{t}"
        );
        assert!(!t.contains("user: \"acp-old\""), "{t}");
        assert!(t.contains("Left out, no bcrypt hash (rotate their passwords): acp-old"));
        let bad = Hashes(vec![("acp-3".into(), Some("$7$x\"}".into()))]);
        let err = nats_users(&bad, "ferry-controller", "pw")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, Code::InvalidConfig);
    }
}
