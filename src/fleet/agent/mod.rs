//! The agent's side of the fleet link, run by `ferry daemon` when `[fleet]` is configured:
//! one MQTT connection to the controller's broker, dialled out and kept for ever (jittered
//! backoff up to 30 s; a missing broker never stops the daemon). With several brokers (the
//! nodes of a cluster) a failed connect or a lost connection moves to the next node at once,
//! with the same client id (the cluster keeps the session); the backoff comes only after a
//! whole round failed ([`link::Rotation`]).
//!
//! On every connection: subscribe to the instance's order topic (again, backing off, while
//! the broker refuses it), publish `{"Online":true}`
//! retained on its presence topic (the last will says `false`; both name the connection, so
//! a late will of a dropped one cannot outrank the next), a [`Hello`] with the
//! inventory and every task held, then every task's current report. Orders go to
//! [`orders`], the manager's stream of changes to [`reports`]. On stop, `{"Online":false}`
//! is published before a clean disconnect. Idle, the link wakes only for the keepalive.
//!
//! [`Hello`]: crate::fleet::wire::Hello

pub mod host;
pub mod inventory;
pub mod link;
pub mod orders;
pub mod reports;

use crate::config::FleetConfig;
use crate::error::Result;
use crate::fleet::topics::{topic, Kind};
use host::TaskHost;
use link::{first_broker, presence, Backoff, Link, Rotation};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS, SubscribeReasonCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a stopping agent waits to say it is offline.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// Builds the link (checks TLS settings) so a bad `[fleet]` fails the start, then runs it
/// on its own task until `stop`; the handle ends once the agent said goodbye.
pub fn spawn<T: TaskHost>(
    manager: T,
    fleet: FleetConfig,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let link = Link::new(&manager.config(), fleet)?;
    Ok(tokio::spawn(run(manager, link, stop)))
}

async fn run<T: TaskHost>(manager: T, link: Link, stop: CancellationToken) {
    let id = link.fleet.instance_id.clone();
    let order_qos = order_qos(link.fleet.order_qos);
    let interval = Duration::from_millis(link.fleet.progress_interval_ms);
    let device = inventory::Device::probe(&manager.config()).await;
    let mut rotation = Rotation::new(link.count(), first_broker(&id, link.count()));
    info!(instance = %id, brokers = link.count(), broker = %link.broker(rotation.current()), abi = %device.abi, "fleet link starting");
    // The first options are replaced before each attempt, with the broker resolved anew.
    let (client, mut events) = AsyncClient::new(
        rumqttc::MqttOptions::new(id.clone(), "0.0.0.0", 1),
        link::REQUEST_CAPACITY,
    );
    let resync = Arc::new(Notify::new());
    let (order_tx, order_rx) = mpsc::unbounded_channel();
    let workers = [
        tokio::spawn(reports::run(
            manager.clone(),
            client.clone(),
            id.clone(),
            interval,
            resync.clone(),
        )),
        tokio::spawn(orders::run(
            manager.clone(),
            client.clone(),
            id.clone(),
            order_rx,
        )),
    ];
    let order_topic = topic(&id, Kind::Order);
    let mut backoff = Backoff::default();
    // Waits between re-subscriptions after the broker refused the order subscription.
    let mut resubscribe = Backoff::default();
    // The connection attempted last (its will and presence carry it).
    let mut connection = 0;
    loop {
        if events.network.is_none() {
            connection = link::next_connection(connection);
            match link.options(rotation.current(), connection).await {
                Ok(options) => events.mqtt_options = options,
                Err(e) => {
                    warn!(broker = %link.broker(rotation.current()), error = %e, "fleet broker address unknown");
                    if rotation.failed() && pause(&stop, backoff.next_wait()).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff.reset();
                rotation.connected();
                info!(
                    broker = %link.broker(rotation.current()),
                    session_present = ack.session_present,
                    "fleet link connected"
                );
                tokio::spawn(greet(
                    manager.clone(),
                    client.clone(),
                    device.clone(),
                    id.clone(),
                    order_qos,
                    connection,
                    resync.clone(),
                ));
            }
            // The only subscription is the order topic's. A broker may refuse it for the
            // moment (nats-server when creating its JetStream consumer times out under a
            // reconnect storm): without it no order ever arrives, so it is asked again.
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    let wait = resubscribe.next_wait();
                    warn!(broker = %link.broker(rotation.current()), retry_in_ms = wait.as_millis() as u64, "the broker refused the order subscription; asking again");
                    tokio::spawn(subscribe_later(
                        client.clone(),
                        order_topic.clone(),
                        order_qos,
                        wait,
                    ));
                } else {
                    resubscribe.reset();
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == order_topic => {
                let _ = order_tx.send(p.payload);
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                debug!(topic = %p.topic, "ignoring a message on a topic not ours");
            }
            Ok(_) => {}
            Err(e) => {
                // rumqttc's errors name the broker and the failure, never the password.
                let broker = link.broker(rotation.current());
                if rotation.failed() {
                    let wait = backoff.next_wait();
                    warn!(%broker, error = %e, retry_in_ms = wait.as_millis() as u64, "fleet link down");
                    if pause(&stop, wait).await {
                        break;
                    }
                } else {
                    let next = link.broker(rotation.current());
                    warn!(%broker, error = %e, %next, "fleet link down, trying the next broker");
                }
            }
        }
    }
    if events.network.is_some() {
        goodbye(&client, &mut events, &id, order_qos, connection).await;
    }
    for worker in workers {
        worker.abort();
    }
    info!("fleet link stopped");
}

/// `fleet.order_qos` (checked to be 0 or 1 when the config loaded).
fn order_qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Subscribes to `topic` again after `wait` (its SUBACK comes back to the event loop).
async fn subscribe_later(client: AsyncClient, topic: String, qos: QoS, wait: Duration) {
    tokio::time::sleep(wait).await;
    if let Err(e) = client.subscribe(topic, qos).await {
        debug!("order subscription not queued: {e}");
    }
}

/// Sleeps `wait` unless `stop` comes first (then true).
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

/// Subscribe, presence, Hello, then every task's report (the reporter's resync).
async fn greet<T: TaskHost>(
    manager: T,
    client: AsyncClient,
    device: inventory::Device,
    id: String,
    order_qos: QoS,
    connection: u64,
    resync: Arc<Notify>,
) {
    let sent = async {
        client.subscribe(topic(&id, Kind::Order), order_qos).await?;
        client
            .publish(
                topic(&id, Kind::Presence),
                QoS::AtLeastOnce,
                true,
                presence(true, connection),
            )
            .await?;
        let hello = inventory::hello(&manager, &device, &id).await;
        let body = serde_json::to_vec(&hello).expect("a Hello serialises");
        client
            .publish(topic(&id, Kind::Hello), QoS::AtLeastOnce, false, body)
            .await
    };
    match sent.await {
        Ok(()) => resync.notify_one(),
        Err(e) => warn!("fleet greeting not queued: {e}"),
    }
}

/// `{"Online":false}` retained (a clean disconnect does not fire the last will), then
/// DISCONNECT once the broker has it; bounded by [`GOODBYE_WAIT`].
///
/// The DISCONNECT waits for the SUBACK of a repeated order subscription queued right behind
/// the presence: a broker handles one connection's packets in order, so by then it took the
/// presence and sent its PUBACK. Closing before that PUBACK went out made mosquitto (before
/// 2.0.22) drop the connection as broken, not disconnected, and publish the last will.
async fn goodbye(
    client: &AsyncClient,
    events: &mut EventLoop,
    id: &str,
    order_qos: QoS,
    connection: u64,
) {
    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
        let queue = async {
            let _ = client
                .publish(
                    topic(id, Kind::Presence),
                    QoS::AtLeastOnce,
                    true,
                    presence(false, connection),
                )
                .await;
            let _ = client.subscribe(topic(id, Kind::Order), order_qos).await;
            std::future::pending::<()>().await
        };
        let handled = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => return true,
                    Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        let handled = tokio::select! {
            _ = queue => false,
            handled = handled => handled,
        };
        if !handled {
            return;
        }
        let disconnect = async {
            let _ = client.disconnect().await;
            std::future::pending::<()>().await
        };
        let sent = async {
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            _ = disconnect => {}
            _ = sent => {}
        }
    })
    .await;
}
