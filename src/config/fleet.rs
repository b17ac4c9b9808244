//! The `[fleet]` section: the agent's link to a `ferry-controller` over MQTT. Absent, the
//! daemon has no fleet link and serves its local API only.

use crate::error::{Code, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `mqtt://HOST:PORT` (TCP) or `mqtts://HOST:PORT` (TLS) of the broker the controller
    /// uses, when it is one broker. Exactly one of `broker` and `brokers` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// The nodes of a clustered broker (NATS), same URL forms: the agent starts on one picked
    /// by its instance id (a fleet spreads over the nodes) and moves on to the next on a failed
    /// connect or a lost connection, backing off only after a whole round failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// This phone's InstanceId (`acp-…`): the MQTT client id and username, and the `{id}`
    /// of its topics.
    pub instance_id: String,
    /// The MQTT password `ferry-controller instance add` generated for this instance. Never
    /// logged, never shown by the API (Debug and Serialize redact it).
    #[serde(serialize_with = "redacted")]
    pub password: String,
    /// PEM CA certificates trusted for an `mqtts://` broker, besides the bundled webpki roots
    /// and the Android CA folders (`[tls]`): for a broker with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT keepalive: the only wake-up of an idle link, and how soon the broker notices a
    /// vanished phone (1.5×) and publishes its last will.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Progress reports of one task are sent at most this often; phase changes and the final
    /// state always go at once.
    #[serde(default = "default_progress_interval")]
    pub progress_interval_ms: u64,
    /// The MQTT QoS of the order subscription: 1 (default), the broker keeps orders for an
    /// offline phone in its session; 0 on NATS, which backs every QoS 1 subscription with a
    /// JetStream consumer of its own (5,000 phones = 5,000 consumers created through the
    /// cluster's meta leader, which did not settle on 2 cores). Nothing is lost at 0: the
    /// controller sends again what the phone has not taken, on its Hello after every
    /// reconnect and every `--resend-secs` while it is online.
    #[serde(default = "default_order_qos")]
    pub order_qos: u8,
}

fn default_order_qos() -> u8 {
    1
}

fn default_keepalive() -> u64 {
    60
}

fn default_progress_interval() -> u64 {
    2000
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("broker", &self.broker)
            .field("brokers", &self.brokers)
            .field("instance_id", &self.instance_id)
            .field("password", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("keepalive_secs", &self.keepalive_secs)
            .field("progress_interval_ms", &self.progress_interval_ms)
            .field("order_qos", &self.order_qos)
            .finish()
    }
}

/// Where the broker is: host, port and whether TLS is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl FleetConfig {
    /// Every broker URL with the key it came from (`fleet.broker`, `fleet.brokers[N]`), in
    /// the configured order; exactly one of the two keys must be set.
    fn broker_urls(&self) -> Result<Vec<(String, &str)>> {
        match (&self.broker, self.brokers.is_empty()) {
            (Some(url), true) => Ok(vec![("fleet.broker".into(), url.as_str())]),
            (None, false) => Ok(self
                .brokers
                .iter()
                .enumerate()
                .map(|(i, url)| (format!("fleet.brokers[{i}]"), url.as_str()))
                .collect()),
            (Some(_), false) => Err(Error::new(
                Code::InvalidConfig,
                "fleet.broker and fleet.brokers are both set; keep one (brokers = [...] lists \
                 the nodes of a clustered broker, broker = \"...\" names a single one)",
            )),
            (None, true) => Err(Error::new(
                Code::InvalidConfig,
                "fleet.broker (one URL) or fleet.brokers (a list of URLs) is required",
            )),
        }
    }

    /// Every broker's URL split up, in the configured order; `mqtt` defaults to port 1883,
    /// `mqtts` to 8883. The first bad URL fails the whole list, naming its key.
    pub fn broker_addrs(&self) -> Result<Vec<BrokerAddr>> {
        self.broker_urls()?
            .into_iter()
            .map(|(key, url)| parse_broker(&key, url))
            .collect()
    }

    pub(super) fn problem(&self) -> Option<String> {
        if let Err(e) = self.broker_addrs() {
            return Some(e.message);
        }
        if let Err(e) = crate::fleet::topics::check_instance_id(&self.instance_id) {
            return Some(format!("fleet.instance_id: {}", e.message));
        }
        if self.password.is_empty() {
            return Some("fleet.password is empty".into());
        }
        if !(5..=3600).contains(&self.keepalive_secs) {
            return Some("fleet.keepalive_secs must be between 5 and 3600".into());
        }
        if !(100..=3_600_000).contains(&self.progress_interval_ms) {
            return Some("fleet.progress_interval_ms must be between 100 and 3600000".into());
        }
        if self.order_qos > 1 {
            return Some("fleet.order_qos must be 0 or 1".into());
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_absolute() {
                return Some(format!(
                    "fleet.ca_file {} must be an absolute path",
                    ca.display()
                ));
            }
        }
        None
    }
}

/// One broker URL (`key` names it in errors) split up.
fn parse_broker(key: &str, broker: &str) -> Result<BrokerAddr> {
    let bad = |why: &str| {
        Error::new(
            Code::InvalidConfig,
            format!("{key} {broker:?} {why}; write mqtt://HOST:PORT or mqtts://HOST:PORT"),
        )
    };
    let url = url::Url::parse(broker).map_err(|_| bad("is not a URL"))?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        _ => return Err(bad("has an unknown scheme")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("{key} carries credentials (they go in fleet.password); write mqtt://HOST:PORT or mqtts://HOST:PORT"),
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a path, query or fragment"));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err(bad("has no host")),
    };
    Ok(BrokerAddr {
        host,
        port: url.port().unwrap_or(default_port),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn load(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file), &|_| None, &Overrides::default())
    }

    const GOOD: &str =
        "[fleet]\nbroker = \"mqtts://mq.example:8884\"\ninstance_id = \"acp-1\"\npassword = \"pw-SECRET\"\n";

    #[test]
    fn fleet_section_parses_with_defaults_and_hides_the_password() {
        assert_eq!(load("").unwrap().fleet, None, "absent = no fleet link");
        let c = load(GOOD).unwrap();
        let f = c.fleet.as_ref().unwrap();
        assert_eq!((f.keepalive_secs, f.progress_interval_ms), (60, 2000));
        assert_eq!(f.order_qos, 1, "the broker keeps orders by default");
        let addr = f.broker_addrs().unwrap();
        assert_eq!(
            addr,
            [BrokerAddr {
                host: "mq.example".into(),
                port: 8884,
                tls: true
            }]
        );
        let plain = FleetConfig {
            broker: Some("mqtt://127.0.0.1".into()),
            ..f.clone()
        };
        assert_eq!(plain.broker_addrs().unwrap()[0].port, 1883);
        assert!(!format!("{c:?}").contains("pw-SECRET"));
        assert!(!serde_json::to_string(&c).unwrap().contains("pw-SECRET"));
    }

    #[test]
    fn bad_fleet_settings_are_invalid_config_naming_the_key() {
        for (bad, key) in [
            ("broker = \"http://x:1\"", "fleet.broker"),
            ("broker = \"mqtt://u:p@x:1\"", "fleet.broker"),
            ("broker = \"mqtt://x:1/path\"", "fleet.broker"),
            ("instance_id = \"a/b\"", "fleet.instance_id"),
            ("instance_id = \"+\"", "fleet.instance_id"),
            ("password = \"\"", "fleet.password"),
            ("keepalive_secs = 1", "fleet.keepalive_secs"),
            ("progress_interval_ms = 0", "fleet.progress_interval_ms"),
            ("order_qos = 2", "fleet.order_qos"),
            ("ca_file = \"ca.pem\"", "fleet.ca_file"),
        ] {
            let k = bad.split(' ').next().unwrap();
            let text: String = GOOD
                .lines()
                .filter(|l| !l.starts_with(&format!("{k} ")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                + bad
                + "\n";
            let err = load(&text).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{bad}");
            assert!(err.message.contains(key), "{bad}: {}", err.message);
            assert!(!err.message.contains("pw-SECRET"), "{}", err.message);
        }
        let err = load(
            "[fleet]\nbroker = \"mqtt://u:pw-SECRET@x:1\"\ninstance_id = \"a\"\npassword = \"p\"\n",
        )
        .unwrap_err();
        assert!(!err.message.contains("pw-SECRET"), "{}", err.message);
        let err = load(&format!("{GOOD}color = 1\n")).unwrap_err();
        assert!(err.message.contains("color"), "{}", err.message);
    }

    #[test]
    fn brokers_list_the_nodes_of_a_cluster_in_order() {
        let list = "[fleet]\nbrokers = [\"mqtt://a:1883\", \"mqtts://b\", \"mqtt://[::1]:4\"]\n\
                    instance_id = \"acp-1\"\npassword = \"pw\"\n";
        let f = load(list).unwrap().fleet.unwrap();
        let addrs = f.broker_addrs().unwrap();
        let got: Vec<_> = addrs
            .iter()
            .map(|a| (a.host.as_str(), a.port, a.tls))
            .collect();
        assert_eq!(
            got,
            [("a", 1883, false), ("b", 8883, true), ("::1", 4, false)]
        );
    }

    #[test]
    fn broker_and_brokers_are_one_or_the_other_and_every_url_is_checked() {
        let rest = "instance_id = \"acp-1\"\npassword = \"pw\"\n";
        let both = format!("[fleet]\nbroker = \"mqtt://a\"\nbrokers = [\"mqtt://b\"]\n{rest}");
        let err = load(&both).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.message.contains("both set"), "{}", err.message);
        for none in [
            format!("[fleet]\n{rest}"),
            format!("[fleet]\nbrokers = []\n{rest}"),
        ] {
            let err = load(&none).unwrap_err();
            assert!(err.message.contains("is required"), "{}", err.message);
        }
        let bad = format!("[fleet]\nbrokers = [\"mqtt://a\", \"http://b\"]\n{rest}");
        let err = load(&bad).unwrap_err();
        assert!(err.message.contains("fleet.brokers[1]"), "{}", err.message);
    }
}
