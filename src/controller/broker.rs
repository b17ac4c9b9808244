//! The embedded MQTT broker `ferry-controller serve` runs when no `--broker` is given, so the
//! controller alone needs nothing else.
//!
//! Built on the `mqtt5` crate's broker rather than `rumqttd`: both speak MQTT 3.1.1 (our
//! clients are rumqttc with protocol v4), keep retained messages and wills and do QoS 1, but
//! only mqtt5 lets us plug in one [`AuthProvider`] that both authenticates a CONNECT and
//! authorizes every PUBLISH, SUBSCRIBE and will by topic, which is what confines agent `X` to
//! `ferry/v1/i/X/…` ([`FleetAuth`]). rumqttd has a username/password hook but no per-user
//! topic ACL. mqtt5 also keeps persistent sessions (clean_session = false) in memory or on
//! disk, and its TLS is rustls with ring, the backend the rest of ferry uses.
//!
//! Passwords are checked against [`Credentials::agent_password_hash`] (mosquitto's `$7$`
//! format, [`secrets::verify`]) on every connect, so an instance added or removed while the
//! broker runs is seen at its next connect.

use super::delivery::local::{LocalIngest, Taken};
use super::ports::Credentials;
use super::secrets;
use crate::error::{Code, Error, Result};
use crate::fleet::topics::{self, Kind};
use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig, TlsConfig};
use mqtt5::broker::events::{BrokerEventHandler, ClientPublishEvent, PublishAction};
use mqtt5::broker::{BrokerShutdownHandle, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::packet::publish::PublishPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Messages and bytes the broker keeps queued for one offline client (past them it drops).
const QUEUED_MESSAGES: usize = 200_000;
const QUEUED_BYTES: usize = 256 << 20;
/// QoS 1 messages the broker sends one client before waiting for its PUBACKs. The controller
/// acks a report only once it is committed, so its ingest rate is this window divided by a
/// commit's latency: mqtt5's default (64) held 5,000 agents' progress to ~180 messages/s,
/// every commit waiting for a handful of reports. Agents only receive orders.
const OUTBOUND_WINDOW: u16 = 4096;

/// Where and how the embedded broker listens.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Plain MQTT (`mqtt://`); port 0 picks a free port ([`BrokerHandle::local_addr`]).
    pub listen: SocketAddr,
    /// MQTT over TLS (`mqtts://`) as well, with this certificate chain and key (PEM files).
    pub tls: Option<BrokerTls>,
    /// Sessions, queued QoS 1 messages and retained presence survive a restart when kept
    /// here (`STATE_DIR/broker`); `None` keeps them in memory only.
    pub storage_dir: Option<PathBuf>,
    /// Agents' reports, hellos and presence go to delivery in-process ([`LocalIngest`])
    /// rather than through the controller's MQTT session.
    pub ingest: Option<Arc<LocalIngest>>,
}

#[derive(Clone, Debug)]
pub struct BrokerTls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl BrokerOptions {
    pub fn plain(listen: SocketAddr) -> Self {
        BrokerOptions {
            listen,
            tls: None,
            storage_dir: None,
            ingest: None,
        }
    }
}

/// A running embedded broker; [`BrokerHandle::stop`] shuts it down and waits for it.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    shutdown: BrokerShutdownHandle,
    task: JoinHandle<()>,
}

impl BrokerHandle {
    /// The plain listener's address (its real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Disconnects every client (no wills are sent for a broker stop) and closes the
    /// listeners; returns once the broker's task ended.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        let _ = self.task.await;
    }
}

/// Starts the broker: agents log in as their InstanceId with the password `instance add`
/// printed; the controller logs in as `controller_user` (name, password).
pub async fn start(
    options: BrokerOptions,
    credentials: Arc<dyn Credentials>,
    controller_user: (String, String),
) -> Result<BrokerHandle> {
    let storage = match &options.storage_dir {
        Some(dir) => StorageConfig::new()
            .with_backend(StorageBackend::File)
            .with_base_dir(dir.clone()),
        None => StorageConfig::new().with_backend(StorageBackend::Memory),
    }
    .with_persistence(true)
    // What waits for one offline client. The controller's session is the big one: every
    // agent's reports while it is away (500 agents, progress every 2 s, is 15 000 a minute).
    .with_max_queued_messages_per_client(QUEUED_MESSAGES)
    .with_max_queued_bytes_per_client(QUEUED_BYTES);
    let mut config = BrokerConfig::new()
        .with_bind_address(options.listen)
        .with_storage(storage)
        .with_sys_topics_enabled(false)
        .with_max_outbound_inflight(OUTBOUND_WINDOW)
        .with_maximum_qos(1);
    if let Some(ingest) = &options.ingest {
        config = config.with_event_handler(Arc::new(Hook(ingest.clone())));
    }
    if let Some(tls) = &options.tls {
        config = config.with_tls(
            TlsConfig::new(tls.cert_file.clone(), tls.key_file.clone())
                .with_bind_address(tls.listen),
        );
    }
    let broker = MqttBroker::with_config(config).await.map_err(|e| {
        Error::new(
            Code::InvalidConfig,
            format!(
                "starting the embedded MQTT broker on {}: {e}",
                options.listen
            ),
        )
    })?;
    let auth = FleetAuth {
        credentials,
        controller_user: controller_user.0,
        controller_password: controller_user.1,
    };
    let mut broker = broker.with_auth_provider(Arc::new(auth));
    let local_addr = broker.local_addr().ok_or_else(|| {
        Error::new(
            Code::Internal,
            "the embedded MQTT broker has no plain listener",
        )
    })?;
    let tls_addr = broker.tls_local_addr();
    let shutdown = broker.shutdown_handle();
    let task = tokio::spawn(async move {
        if let Err(e) = broker.run().await {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    });
    tracing::info!(%local_addr, ?tls_addr, "embedded MQTT broker listening");
    Ok(BrokerHandle {
        local_addr,
        tls_addr,
        shutdown,
        task,
    })
}

/// The broker's publish hook: an agent's report, hello or presence (the ACL has already
/// checked its topic) goes to [`LocalIngest`], and its PUBACK waits for the commit.
struct Hook(Arc<LocalIngest>);

impl BrokerEventHandler for Hook {
    fn on_client_publish<'a>(&'a self, event: ClientPublishEvent) -> Boxed<'a, PublishAction> {
        Box::pin(async move {
            if !matches!(classify(event.user_id.as_deref()), Some(User::Agent(_))) {
                return PublishAction::Continue;
            }
            match self.0.take(&event.topic, event.payload).await {
                Taken::Handled => PublishAction::Handled,
                // An empty retained publish clears the topic's retained message; routed to
                // the controller's session, it says nothing (an empty presence is skipped).
                Taken::HandledClear => {
                    let mut clear =
                        PublishPacket::new_v311(&*event.topic, bytes::Bytes::new(), event.qos);
                    clear.retain = true;
                    clear.packet_id = event.packet_id;
                    PublishAction::Transform(clear)
                }
                Taken::Route => PublishAction::Continue,
            }
        })
    }
}

/// Who may connect, and where each may publish and subscribe: the fleet's ACL.
///
/// | user | subscribe | publish |
/// | --- | --- | --- |
/// | agent `X` (client id must be `X` too) | `ferry/v1/i/X/order` only | `ferry/v1/i/X/{report,hello,presence}` (and its will there) |
/// | the controller | any filter under `ferry/v1/i/` | any `ferry/v1/i/{id}/{kind}` topic |
struct FleetAuth {
    credentials: Arc<dyn Credentials>,
    controller_user: String,
    controller_password: String,
}

/// The MQTT user a connection authenticated as.
#[derive(Debug, PartialEq, Eq)]
enum User<'a> {
    Controller,
    Agent(&'a str),
}

/// The ACL alone, for the user ids the broker hands back ([`AuthResult::success_with_user`]
/// stores `controller:` or `agent:X`).
fn classify(user_id: Option<&str>) -> Option<User<'_>> {
    let user = user_id?;
    if user == CONTROLLER_ID {
        Some(User::Controller)
    } else {
        user.strip_prefix(AGENT_PREFIX).map(User::Agent)
    }
}

const CONTROLLER_ID: &str = "controller:";
const AGENT_PREFIX: &str = "agent:";

/// Whether `user` may publish on `topic`.
fn may_publish(user: &User<'_>, topic: &str) -> bool {
    match (user, topics::parse(topic)) {
        (User::Controller, Some(_)) => true,
        (User::Agent(me), Some((instance, kind))) => {
            instance == *me && matches!(kind, Kind::Report | Kind::Hello | Kind::Presence)
        }
        (_, None) => false,
    }
}

/// Whether `user` may subscribe to `filter`.
fn may_subscribe(user: &User<'_>, filter: &str) -> bool {
    match user {
        User::Controller => filter
            .strip_prefix(topics::PREFIX)
            .is_some_and(|rest| rest.starts_with('/') || rest == "/#"),
        User::Agent(me) => filter == topics::topic(me, Kind::Order),
    }
}

impl FleetAuth {
    async fn check(&self, connect: &ConnectPacket) -> AuthResult {
        let (Some(user), Some(password)) = (&connect.username, &connect.password) else {
            return AuthResult::fail(ReasonCode::BadUsernameOrPassword);
        };
        if user == &self.controller_user {
            if crate::daemon::auth::constant_time_eq(password, self.controller_password.as_bytes())
            {
                return AuthResult::success_with_user(CONTROLLER_ID);
            }
            tracing::warn!(user, "MQTT connect refused: wrong controller password");
            return AuthResult::fail(ReasonCode::BadUsernameOrPassword);
        }
        if topics::check_instance_id(user).is_err() {
            return AuthResult::fail(ReasonCode::BadUsernameOrPassword);
        }
        // An agent's session is its client id: another agent taking that id would take over
        // its queued orders, so the two must match.
        if connect.client_id != *user {
            tracing::warn!(user, client_id = %connect.client_id, "MQTT connect refused: an agent's client id must be its instance id");
            return AuthResult::fail(ReasonCode::ClientIdentifierNotValid);
        }
        let stored = match self.credentials.agent_password_hash(user).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(user, error = %e, "MQTT connect: reading the instance's credentials");
                return AuthResult::fail(ReasonCode::ServerUnavailable);
            }
        };
        let password = std::str::from_utf8(password).unwrap_or("");
        match stored {
            Some(hash) if secrets::verify(password, &hash) => {
                AuthResult::success_with_user(format!("{AGENT_PREFIX}{user}"))
            }
            Some(_) => {
                tracing::warn!(user, "MQTT connect refused: wrong password");
                AuthResult::fail(ReasonCode::BadUsernameOrPassword)
            }
            None => {
                tracing::warn!(user, "MQTT connect refused: unknown instance");
                AuthResult::fail(ReasonCode::BadUsernameOrPassword)
            }
        }
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for FleetAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Boxed<'a, mqtt5::error::Result<AuthResult>> {
        Box::pin(async move { Ok(self.check(connect).await) })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Boxed<'a, bool> {
        let allowed = classify(user_id).is_some_and(|user| may_publish(&user, topic));
        if !allowed {
            tracing::warn!(
                client_id,
                ?user_id,
                topic,
                "MQTT publish refused by the fleet ACL"
            );
        }
        Box::pin(async move { allowed })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Boxed<'a, bool> {
        let allowed = classify(user_id).is_some_and(|user| may_subscribe(&user, topic_filter));
        if !allowed {
            tracing::warn!(
                client_id,
                ?user_id,
                topic_filter,
                "MQTT subscribe refused by the fleet ACL"
            );
        }
        Box::pin(async move { allowed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_reach_only_their_own_topics_and_the_controller_reaches_every_instance() {
        let x = User::Agent("acp-x");
        for kind in [Kind::Report, Kind::Hello, Kind::Presence] {
            assert!(may_publish(&x, &topics::topic("acp-x", kind)));
            assert!(!may_publish(&x, &topics::topic("acp-y", kind)));
        }
        assert!(!may_publish(&x, &topics::topic("acp-x", Kind::Order)));
        assert!(!may_publish(&x, "other/topic"));
        assert!(may_subscribe(&x, "ferry/v1/i/acp-x/order"));
        for filter in [
            "ferry/v1/i/acp-y/order",
            "ferry/v1/i/+/order",
            "ferry/v1/i/#",
            "#",
            "ferry/v1/i/acp-x/report",
        ] {
            assert!(!may_subscribe(&x, filter), "{filter}");
        }
        let c = User::Controller;
        assert!(may_publish(&c, &topics::topic("acp-x", Kind::Order)));
        assert!(!may_publish(&c, "elsewhere"));
        assert!(may_subscribe(&c, &topics::every(Kind::Report)));
        assert!(may_subscribe(&c, "ferry/v1/i/#"));
        assert!(!may_subscribe(&c, "#"));
        assert!(!may_subscribe(&c, "ferry/v1/iX"));
        assert_eq!(classify(Some("agent:acp-x")), Some(User::Agent("acp-x")));
        assert_eq!(classify(Some("controller:")), Some(User::Controller));
        assert_eq!(classify(Some("acp-x")), None);
        assert_eq!(classify(None), None);
    }
}
