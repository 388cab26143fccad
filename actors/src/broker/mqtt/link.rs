//! The bridge to rumqttc's two clients (MQTT 3.1.1 and MQTT 5): one [`Link`] type that
//! connects, hands over PUBLISH packets and reports what the broker said as [`Step`]s, and the
//! classification of each protocol's failures into the adapter's [`ErrorKind`]s.

use bytes::Bytes;
use rumqttc::v5;

use super::{ClientSettings, Login, Protocol, MESSAGE_ID_PROPERTY, MQTT_MAX_PACKET};
use crate::broker::adapter::ErrorKind;

/// Publishes handed to rumqttc but not yet written; also the request channel's capacity, so
/// handing one over never blocks.
pub(super) const REQUESTS_AHEAD: usize = 64;

/// Acknowledgements are a few bytes; this only bounds what a misbehaving broker can make us
/// buffer.
const MAX_INCOMING_PACKET: usize = 64 * 1024;

/// One PUBLISH, ready to hand over.
pub(super) struct Outbound {
    pub topic: String,
    pub payload: Bytes,
}

/// The size of a PUBLISH packet with a packet id (QoS > 0) and, for MQTT 5, the `message-id`
/// user property: what brokers compare with their maximum packet size.
pub(super) fn publish_packet_size(
    protocol: Protocol,
    topic_len: usize,
    qos: u8,
    id_len: usize,
    payload_len: usize,
) -> usize {
    fn varint_len(n: usize) -> usize {
        match n {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        }
    }
    let mut remaining = 2 + topic_len + payload_len + if qos > 0 { 2 } else { 0 };
    if protocol == Protocol::V5 {
        // One user property: identifier byte, then two length-prefixed strings.
        let properties = 1 + 2 + MESSAGE_ID_PROPERTY.len() + 2 + id_len;
        remaining += varint_len(properties) + properties;
    }
    1 + varint_len(remaining) + remaining
}

/// What the broker said, in the terms a run needs, for both protocol versions.
pub(super) enum Step {
    Connected(BrokerLimits),
    /// A PUBLISH with this packet id (0 for QoS 0) was written.
    Written(u16),
    /// The PUBACK (QoS 1) or PUBCOMP (QoS 2) for this packet id arrived.
    Confirmed(u16),
    /// An MQTT 5 broker answered this packet id with a failure reason code.
    Refused {
        pkid: u16,
        kind: ErrorKind,
        reason: String,
    },
    Other,
}

/// What an MQTT 5 CONNACK says about the broker's limits.
#[derive(Default)]
pub(super) struct BrokerLimits {
    pub max_packet_size: Option<u32>,
    pub max_qos: Option<u8>,
    pub retain_available: Option<u8>,
}

/// A connection failure, classified.
pub(super) struct LinkError {
    pub kind: ErrorKind,
    pub detail: String,
}

/// One connection's client and event loop; the event loops are large (the v5 one over a
/// kilobyte), hence boxed.
pub(super) enum Link {
    V311 {
        client: rumqttc::AsyncClient,
        events: Box<rumqttc::EventLoop>,
    },
    V5 {
        client: v5::AsyncClient,
        events: Box<v5::EventLoop>,
    },
}

impl Link {
    pub(super) fn new(settings: &ClientSettings, login: Option<Login>) -> Self {
        // rumqttc's own connect timeout is in whole seconds; ours (the caller's) is the one
        // that should fire.
        let connect_secs = settings.timeout.as_secs() + 1;
        let outgoing_limit = settings.max_packet_size.unwrap_or(MQTT_MAX_PACKET);
        match settings.protocol {
            Protocol::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
                options
                    .set_keep_alive(settings.keep_alive)
                    .set_clean_session(true)
                    .set_inflight(settings.max_inflight)
                    .set_max_packet_size(MAX_INCOMING_PACKET, outgoing_limit);
                if let Some(login) = login {
                    options.set_credentials(login.username, login.password);
                }
                if let Some(tls) = &settings.tls {
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::NativeConnector(tls.clone()),
                    ));
                }
                let (client, mut events) = rumqttc::AsyncClient::new(options, REQUESTS_AHEAD);
                let mut network = rumqttc::NetworkOptions::new();
                network.set_connection_timeout(connect_secs);
                events.set_network_options(network);
                Link::V311 {
                    client,
                    events: Box::new(events),
                }
            }
            Protocol::V5 => {
                let mut options =
                    v5::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
                options
                    .set_keep_alive(settings.keep_alive)
                    .set_clean_start(true)
                    .set_outgoing_inflight_upper_limit(settings.max_inflight)
                    .set_max_packet_size(Some(MAX_INCOMING_PACKET as u32))
                    .set_connection_timeout(connect_secs);
                if let Some(login) = login {
                    options.set_credentials(login.username, login.password);
                }
                if let Some(tls) = &settings.tls {
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::NativeConnector(tls.clone()),
                    ));
                }
                let (client, events) = v5::AsyncClient::new(options, REQUESTS_AHEAD);
                Link::V5 {
                    client,
                    events: Box::new(events),
                }
            }
        }
    }

    /// Hands one PUBLISH to rumqttc. The caller keeps fewer than [`REQUESTS_AHEAD`] requests
    /// unwritten, so the channel has room.
    pub(super) fn send(
        &self,
        settings: &ClientSettings,
        publish: Outbound,
        id: &str,
    ) -> Result<(), String> {
        match self {
            Link::V311 { client, .. } => {
                let qos = match settings.qos {
                    0 => rumqttc::QoS::AtMostOnce,
                    1 => rumqttc::QoS::AtLeastOnce,
                    _ => rumqttc::QoS::ExactlyOnce,
                };
                client
                    .try_publish(publish.topic, qos, settings.retain, publish.payload)
                    .map_err(|e| e.to_string())
            }
            Link::V5 { client, .. } => {
                let qos = match settings.qos {
                    0 => v5::mqttbytes::QoS::AtMostOnce,
                    1 => v5::mqttbytes::QoS::AtLeastOnce,
                    _ => v5::mqttbytes::QoS::ExactlyOnce,
                };
                let properties = v5::mqttbytes::v5::PublishProperties {
                    user_properties: vec![(MESSAGE_ID_PROPERTY.to_string(), id.to_string())],
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        publish.topic,
                        qos,
                        settings.retain,
                        publish.payload,
                        properties,
                    )
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Polls the event loop once: connects if needed, writes what is queued, reads what the
    /// broker sent.
    pub(super) async fn step(&mut self) -> Result<Step, LinkError> {
        match self {
            Link::V311 { events, .. } => {
                use rumqttc::{Event, Outgoing, Packet};
                match events.poll().await.map_err(v311_error)? {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        Ok(Step::Connected(BrokerLimits::default()))
                    }
                    Event::Incoming(Packet::PubAck(ack)) => Ok(Step::Confirmed(ack.pkid)),
                    Event::Incoming(Packet::PubComp(comp)) => Ok(Step::Confirmed(comp.pkid)),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(Step::Written(pkid)),
                    _ => Ok(Step::Other),
                }
            }
            Link::V5 { events, .. } => {
                use rumqttc::Outgoing;
                use v5::mqttbytes::v5::{Packet, PubAckReason, PubCompReason, PubRecReason};
                use v5::Event;
                match events.poll().await.map_err(v5_error)? {
                    Event::Incoming(Packet::ConnAck(ack)) => Ok(Step::Connected(
                        ack.properties
                            .map_or_else(BrokerLimits::default, |p| BrokerLimits {
                                max_packet_size: p.max_packet_size,
                                max_qos: p.max_qos,
                                retain_available: p.retain_available,
                            }),
                    )),
                    Event::Incoming(Packet::PubAck(ack)) => Ok(match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            Step::Confirmed(ack.pkid)
                        }
                        reason => Step::Refused {
                            pkid: ack.pkid,
                            kind: v5_refusal_kind(&format!("{reason:?}")),
                            reason: with_reason_string(
                                &format!("PUBACK {reason:?}"),
                                ack.properties.and_then(|p| p.reason_string),
                            ),
                        },
                    }),
                    Event::Incoming(Packet::PubRec(rec)) => Ok(match rec.reason {
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Step::Other,
                        reason => Step::Refused {
                            pkid: rec.pkid,
                            kind: v5_refusal_kind(&format!("{reason:?}")),
                            reason: with_reason_string(
                                &format!("PUBREC {reason:?}"),
                                rec.properties.and_then(|p| p.reason_string),
                            ),
                        },
                    }),
                    Event::Incoming(Packet::PubComp(comp)) => Ok(match comp.reason {
                        PubCompReason::Success => Step::Confirmed(comp.pkid),
                        reason => Step::Refused {
                            pkid: comp.pkid,
                            kind: ErrorKind::Unavailable,
                            reason: format!("PUBCOMP {reason:?}"),
                        },
                    }),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(Step::Written(pkid)),
                    _ => Ok(Step::Other),
                }
            }
        }
    }
}

fn with_reason_string(code: &str, reason: Option<String>) -> String {
    match reason {
        Some(text) => format!("{code} ({text})"),
        None => code.to_string(),
    }
}

/// How lasting an MQTT 5 PUBACK/PUBREC failure is, by its reason code's name.
fn v5_refusal_kind(reason: &str) -> ErrorKind {
    match reason {
        // Authorisation may be granted by an operator; retry with backoff.
        "NotAuthorized" => ErrorKind::Refused,
        // The broker is busy or confused about packet ids: try again later.
        "QuotaExceeded" | "PacketIdentifierInUse" => ErrorKind::Unavailable,
        // TopicNameInvalid, PayloadFormatInvalid, and the unspecified and
        // implementation-specific errors brokers use for messages they will not take
        // (Mosquitto: larger than `message_size_limit`): this message will not go through.
        _ => ErrorKind::Rejected,
    }
}

fn v311_error(e: rumqttc::ConnectionError) -> LinkError {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match e {
        E::ConnectionRefused(code) => {
            let (kind, why) = match code {
                Code::BadUserNamePassword => (ErrorKind::Refused, "bad user name or password"),
                Code::NotAuthorized => (ErrorKind::Refused, "not authorised"),
                Code::BadClientId => (ErrorKind::Refused, "the client id was refused"),
                Code::RefusedProtocolVersion => (
                    ErrorKind::Refused,
                    "the broker does not speak MQTT 3.1.1 (see option `protocol`)",
                ),
                Code::ServiceUnavailable | Code::Success => {
                    (ErrorKind::Unavailable, "the broker is unavailable")
                }
            };
            LinkError {
                kind,
                detail: format!("the broker refused the connection: {why} (CONNACK {code:?})"),
            }
        }
        other => LinkError {
            kind: ErrorKind::Unavailable,
            detail: format!("connection failed: {other}"),
        },
    }
}

fn v5_error(e: v5::ConnectionError) -> LinkError {
    use v5::mqttbytes::v5::ConnectReturnCode as Code;
    use v5::{ConnectionError as E, StateError};
    let refused = |code: Code| {
        let kind = match code {
            Code::ServerUnavailable
            | Code::ServiceUnavailable
            | Code::ServerBusy
            | Code::QuotaExceeded
            | Code::ConnectionRateExceeded
            | Code::UseAnotherServer
            | Code::ServerMoved
            | Code::Success => ErrorKind::Unavailable,
            _ => ErrorKind::Refused,
        };
        let why = match code {
            Code::BadUserNamePassword => "bad user name or password",
            Code::NotAuthorized => "not authorised",
            Code::ClientIdentifierNotValid | Code::BadClientId => "the client id was refused",
            Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion => {
                "the broker does not speak MQTT 5 (see option `protocol`)"
            }
            _ => "see the reason code",
        };
        LinkError {
            kind,
            detail: format!("the broker refused the connection: {why} (CONNACK {code:?})"),
        }
    };
    match e {
        E::ConnectionRefused(code) => refused(code),
        E::MqttState(StateError::ConnFail { reason }) => refused(reason),
        E::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => {
            let kind = match format!("{reason_code:?}").as_str() {
                "NotAuthorized" => ErrorKind::Refused,
                _ => ErrorKind::Unavailable,
            };
            LinkError {
                kind,
                detail: with_reason_string(
                    &format!("the broker closed the connection: DISCONNECT {reason_code:?}"),
                    reason_string,
                ),
            }
        }
        other => LinkError {
            kind: ErrorKind::Unavailable,
            detail: format!("connection failed: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_size_matches_what_rumqttc_writes() {
        for (topic, payload, qos) in [
            ("t", 0usize, 1u8),
            ("vidmesh/cam-7/events", 100, 1),
            ("a", 200, 0),
            ("vidmesh/events", 20_000, 2),
            ("x", 3_000_000, 1),
        ] {
            let body = vec![b'x'; payload];
            let mut v4 = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, body.clone());
            if qos == 0 {
                v4.qos = rumqttc::QoS::AtMostOnce;
            } else {
                v4.pkid = 1;
            }
            assert_eq!(
                publish_packet_size(Protocol::V311, topic.len(), qos, 36, payload),
                v4.size(),
                "{topic} {payload} {qos}"
            );
            let id = "0123456789abcdef0123456789abcdef-000";
            let mut v5 = v5::mqttbytes::v5::Publish::new(
                topic,
                v5::mqttbytes::QoS::AtLeastOnce,
                body,
                Some(v5::mqttbytes::v5::PublishProperties {
                    user_properties: vec![(MESSAGE_ID_PROPERTY.into(), id.into())],
                    ..Default::default()
                }),
            );
            if qos == 0 {
                v5.qos = v5::mqttbytes::QoS::AtMostOnce;
            } else {
                v5.pkid = 1;
            }
            assert_eq!(
                publish_packet_size(Protocol::V5, topic.len(), qos, id.len(), payload),
                v5.size(),
                "v5 {topic} {payload} {qos}"
            );
        }
    }
}
