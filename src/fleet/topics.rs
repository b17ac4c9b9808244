//! Topic names of protocol v1. Every topic names one instance, so a broker ACL keyed on the
//! MQTT username (= the InstanceId) can confine an agent to its own topics:
//!
//! | topic | from → to | retained |
//! | --- | --- | --- |
//! | `ferry/v1/i/{id}/order` | controller → agent | no |
//! | `ferry/v1/i/{id}/report` | agent → controller | no |
//! | `ferry/v1/i/{id}/hello` | agent → controller | no |
//! | `ferry/v1/i/{id}/presence` | agent → controller (also the last will) | yes |

use crate::error::{Code, Error, Result};

pub const PREFIX: &str = "ferry/v1/i";

/// What a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Order,
    Report,
    Hello,
    Presence,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Order, Kind::Report, Kind::Hello, Kind::Presence];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Report => "report",
            Kind::Hello => "hello",
            Kind::Presence => "presence",
        }
    }
}

/// An InstanceId usable in a topic: 1–64 of `A-Z a-z 0-9 - _ .`, so never a wildcard or a
/// level separator (Alibaba's ids look like `acp-34pqe4r0kd9kn0001`).
pub fn check_instance_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            Code::InvalidInstanceId,
            format!("instance id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// The topic of `kind` for one instance (the id must have passed [`check_instance_id`]).
pub fn topic(instance: &str, kind: Kind) -> String {
    format!("{PREFIX}/{instance}/{}", kind.as_str())
}

/// The subscription filter matching `kind` for every instance (the controller's side).
pub fn every(kind: Kind) -> String {
    format!("{PREFIX}/+/{}", kind.as_str())
}

/// The instance and kind a topic names, when it is one of ours.
pub fn parse(topic: &str) -> Option<(&str, Kind)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (instance, kind) = rest.split_once('/')?;
    check_instance_id(instance).ok()?;
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some((instance, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_foreign_or_wildcard_topics_are_not_ours() {
        for kind in Kind::ALL {
            let t = topic("acp-1", kind);
            assert_eq!(parse(&t), Some(("acp-1", kind)));
        }
        assert_eq!(every(Kind::Report), "ferry/v1/i/+/report");
        for bad in [
            "ferry/v1/i/+/report",
            "ferry/v1/i/#",
            "ferry/v1/i/a/b/report",
            "ferry/v1/i//report",
            "ferry/v1/i/acp-1/other",
            "other/v1/i/acp-1/report",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(check_instance_id(&"a".repeat(65)).is_err());
        assert!(check_instance_id("a/b").is_err());
    }
}
