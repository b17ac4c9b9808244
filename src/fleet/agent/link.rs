//! How the agent reaches its broker: the MQTT options of one connection attempt (client id =
//! username = InstanceId, persistent session, last will), the broker's address resolved with
//! the agent's own resolver (a static binary has no working getaddrinfo on Android), TLS with
//! the same trust as the HTTP client, which of the configured brokers (the nodes of a
//! clustered broker) to dial next ([`Rotation`]), and the reconnect backoff.

use crate::config::{BrokerAddr, Config, FleetConfig};
use crate::error::{Code, Error, Result};
use crate::fleet::topics::{topic, Kind};
use crate::fleet::wire::Presence;
use crate::net::dns::AndroidResolver;
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Requests (publishes, subscribes) queued for the connection; a reporter that gets ahead of
/// a slow broker waits here, never the manager.
pub const REQUEST_CAPACITY: usize = 256;
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What stays the same across connection attempts.
pub struct Link {
    pub fleet: FleetConfig,
    /// `[fleet] broker`, or every node of `brokers` in the configured order.
    brokers: Vec<Broker>,
    resolver: AndroidResolver,
}

/// One configured broker: its address and, for `mqtts://`, TLS checked against its host name.
struct Broker {
    addr: BrokerAddr,
    tls: Option<Arc<ClientConfig>>,
}

impl Link {
    pub fn new(config: &Config, fleet: FleetConfig) -> Result<Link> {
        let brokers = fleet
            .broker_addrs()?
            .into_iter()
            .map(|addr| {
                let tls = if addr.tls {
                    Some(client_config(config, &fleet, &addr.host)?)
                } else {
                    None
                };
                Ok(Broker { addr, tls })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Link {
            resolver: AndroidResolver::new(config, &|k| std::env::var(k).ok()),
            fleet,
            brokers,
        })
    }

    /// How many brokers are configured (at least one).
    pub fn count(&self) -> usize {
        self.brokers.len()
    }

    /// Broker `i` as `HOST:PORT` for logs (a broker URL carries no credentials).
    pub fn broker(&self, i: usize) -> String {
        let addr = &self.brokers[i].addr;
        format!("{}:{}", addr.host, addr.port)
    }

    /// The options of attempt `connection` (see [`Presence::connection`]) on broker `i`: its
    /// host resolved now (it may move).
    pub async fn options(&self, i: usize, connection: u64) -> Result<MqttOptions> {
        let host = &self.brokers[i].addr.host;
        let ips = self
            .resolver
            .resolve(host)
            .await
            .map_err(|e| Error::new(e.code(), e.to_string()))?;
        let ip: IpAddr = *ips
            .first()
            .ok_or_else(|| Error::new(Code::NetworkDns, format!("{host} has no address")))?;
        Ok(self.options_for(i, ip, connection))
    }

    /// The same client id, credentials and session on every broker: the nodes of a cluster
    /// share the session, so a phone that moves keeps its queued orders. The will speaks for
    /// this connection only.
    fn options_for(&self, i: usize, ip: IpAddr, connection: u64) -> MqttOptions {
        let f = &self.fleet;
        let broker = &self.brokers[i];
        let mut o = MqttOptions::new(f.instance_id.clone(), ip.to_string(), broker.addr.port);
        o.set_credentials(f.instance_id.clone(), f.password.clone());
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(f.keepalive_secs));
        o.set_request_channel_capacity(REQUEST_CAPACITY);
        o.set_last_will(LastWill::new(
            topic(&f.instance_id, Kind::Presence),
            presence(false, connection),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(tls) = &broker.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

/// The retained presence body of connection `connection`.
pub fn presence(online: bool, connection: u64) -> Vec<u8> {
    let presence = Presence {
        online,
        connection: Some(connection),
    };
    serde_json::to_vec(&presence).expect("presence serialises")
}

/// The id of the next connection: now in unix milliseconds, above the last one's even if the
/// clock stepped back.
pub fn next_connection(last: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.max(last + 1)
}

/// TLS trusting what the HTTP client trusts (bundled webpki roots, the Android CA folders,
/// minus CAs the user turned off) plus `fleet.ca_file`; the certificate is checked against
/// the broker's host name even though the connection goes to an address resolved here.
fn client_config(config: &Config, fleet: &FleetConfig, host: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let android = crate::net::tls::load(config);
    // As the HTTP client: once the user turned a CA off, only the phone's own store counts.
    if !android.any_removed || android.certs.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in android.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = &fleet.ca_file {
        let certs = crate::net::tls::read_certs(file).map_err(|why| {
            Error::new(
                Code::InvalidConfig,
                format!("fleet.ca_file {}: {why}", file.display()),
            )
        })?;
        for cert in certs {
            let _ = roots.add(cert);
        }
    }
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        Error::new(
            Code::InvalidConfig,
            format!("fleet.broker host {host:?}: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::new(Code::NetworkTls, format!("TLS roots for the broker: {e}")))?;
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Code::NetworkTls, format!("TLS for the broker: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ForHost { inner, name }))
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// WebPKI verification against the configured host name, whatever name the MQTT client
/// passes (it only knows the address ferry resolved).
#[derive(Debug)]
struct ForHost {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ForHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Which broker to dial: the list in its order, starting at [`first_broker`]; a failed
/// connect or a lost connection moves to the next (wrapping round), and only when every
/// broker of a round failed does the caller back off. With one broker every failure is a
/// round, as before the list existed.
pub struct Rotation {
    len: usize,
    at: usize,
    failed: usize,
}

impl Rotation {
    pub fn new(len: usize, start: usize) -> Rotation {
        assert!(len > 0, "at least one broker");
        Rotation {
            len,
            at: start % len,
            failed: 0,
        }
    }

    /// The broker to dial now.
    pub fn current(&self) -> usize {
        self.at
    }

    /// The current broker failed (connect refused, handshake or login failed, connection
    /// lost): move to the next one. True when that completed a round of failures, so the
    /// caller waits its backoff before the next attempt.
    pub fn failed(&mut self) -> bool {
        self.at = (self.at + 1) % self.len;
        self.failed += 1;
        if self.failed >= self.len {
            self.failed = 0;
            true
        } else {
            false
        }
    }

    /// Connected: the next failure starts a new round.
    pub fn connected(&mut self) {
        self.failed = 0;
    }
}

/// Where an instance starts in a list of `len` brokers: spread by a hash of its id (FNV-1a),
/// so a fleet divides itself evenly over a cluster's nodes, and stable, so one phone starts on
/// the same node after every restart (and a test can know which).
pub fn first_broker(instance_id: &str, len: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % len.max(1) as u64) as usize
}

/// Jittered exponential backoff between connection attempts, capped at 30 s, for ever.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt: between half and all of the current step.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_wait();
        assert!(first >= Duration::from_millis(250) && first <= FIRST_BACKOFF);
        for _ in 0..20 {
            assert!(b.next_wait() <= MAX_BACKOFF);
        }
        let late = b.next_wait();
        assert!(late >= MAX_BACKOFF / 2, "{late:?}");
        b.reset();
        assert!(b.next_wait() <= FIRST_BACKOFF);
    }

    #[test]
    fn options_identify_the_instance_keep_the_session_and_leave_a_will() {
        let fleet = FleetConfig {
            broker: Some("mqtt://127.0.0.1:1884".into()),
            brokers: Vec::new(),
            instance_id: "acp-7".into(),
            password: "pw".into(),
            ca_file: None,
            keepalive_secs: 30,
            progress_interval_ms: 2000,
            order_qos: 1,
        };
        let link = Link::new(&Config::default(), fleet).unwrap();
        let o = link.options_for(0, "127.0.0.1".parse().unwrap(), 1_700_000_000_123);
        assert_eq!(o.client_id(), "acp-7");
        assert!(!o.clean_session());
        assert_eq!(o.keep_alive(), Duration::from_secs(30));
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1884));
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("acp-7", "pw")
        );
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "ferry/v1/i/acp-7/presence");
        assert_eq!(
            &will.message[..],
            br#"{"Online":false,"Connection":1700000000123}"#
        );
        assert!(will.retain);
    }

    #[test]
    fn rotation_moves_on_at_each_failure_and_backs_off_after_a_full_round() {
        let mut r = Rotation::new(3, 1);
        assert_eq!(r.current(), 1);
        assert!(!r.failed());
        assert_eq!(r.current(), 2);
        assert!(!r.failed());
        assert_eq!(r.current(), 0, "wraps round");
        assert!(
            r.failed(),
            "the third failure of three brokers ends the round"
        );
        assert_eq!(r.current(), 1);
        // A lost connection moves on at once: the round starts again at connect.
        assert!(!r.failed());
        r.connected();
        assert!(!r.failed(), "lost after a connection: next node, no wait");
        assert_eq!(r.current(), 0);
        let mut one = Rotation::new(1, 0);
        assert!(
            one.failed() && one.failed(),
            "one broker: every failure waits"
        );
        assert_eq!(one.current(), 0);
    }

    #[test]
    fn first_broker_spreads_a_fleet_and_is_stable() {
        let mut counts = [0usize; 3];
        for i in 0..300 {
            let id = format!("acp-{i:04}");
            let first = first_broker(&id, 3);
            assert_eq!(first, first_broker(&id, 3));
            counts[first] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(first_broker("acp-1", 1), 0);
    }

    #[test]
    fn every_broker_gets_the_same_identity_and_its_own_port() {
        let fleet = FleetConfig {
            broker: None,
            brokers: vec![
                "mqtt://127.0.0.1:1884".into(),
                "mqtt://127.0.0.1:1885".into(),
            ],
            instance_id: "acp-7".into(),
            password: "pw".into(),
            ca_file: None,
            keepalive_secs: 30,
            progress_interval_ms: 2000,
            order_qos: 1,
        };
        let link = Link::new(&Config::default(), fleet).unwrap();
        assert_eq!(link.count(), 2);
        assert_eq!(link.broker(1), "127.0.0.1:1885");
        let ip = "127.0.0.1".parse().unwrap();
        let (a, b) = (link.options_for(0, ip, 1), link.options_for(1, ip, 1));
        assert_eq!((a.broker_address().1, b.broker_address().1), (1884, 1885));
        assert_eq!(a.client_id(), b.client_id());
        assert_eq!(a.credentials(), b.credentials());
        assert!(!b.clean_session());
    }

    #[test]
    fn connection_ids_increase_even_when_the_clock_steps_back() {
        let now = next_connection(0);
        assert!(now > 1_600_000_000_000, "unix milliseconds: {now}");
        let ahead = now + 3_600_000;
        assert_eq!(next_connection(ahead), ahead + 1);
    }
}
