//! The `azure-iot://` adapter: Azure IoT Hub's dialect of MQTT 3.1.1, as a device.
//!
//! `azure-iot://HUB.azure-devices.net/DEVICE_ID`, with the device's key as option
//! `shared_access_key` (base64), or option `connection_string`
//! (`HostName=...;DeviceId=...;SharedAccessKey=...`), which can then stand in for the URI's
//! host and device (`uri = "azure-iot://"`).
//!
//! What IoT Hub asks of a device, and what this sends:
//! - client id: the device id; user name `{hub}/{device}/?api-version=2021-04-12`;
//! - password: a SAS token, `SharedAccessSignature sr={hub}%2Fdevices%2F{device}&sig=...&se=...`,
//!   an HMAC-SHA256 of the URL-encoded resource and the expiry under the device key, valid
//!   for `token_ttl` (default "1h"); the adapter connects anew with a fresh token after four
//!   fifths of it, since the hub closes connections whose token expired;
//! - topic `devices/{device}/messages/events/` followed by the message's property bag,
//!   URL-encoded: `$.mid` (the stable message id, for deduplication), `$.ct`/`$.ce` (content
//!   type and encoding, options `content_type`, default "application/json", and
//!   `content_encoding`, default "utf-8") and the application property `sensorId`;
//! - QoS 1 (IoT Hub has no QoS 2), over TLS on port 8883. Options `port` and `tls = false`
//!   exist to test against a plain MQTT broker (Mosquitto), which sees the same topics.
//!
//! Everything else (connection, confirmations, reconnects) is the MQTT adapter's
//! ([`super::mqtt::MqttPublisher`]).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use sha2::Sha256;

use super::adapter::{parse_options, AdapterConfig, Message};
use super::mqtt::{self, ClientSettings, Dialect, Login, MqttPublisher, Protocol};
use crate::stage::StageError;

/// The IoT Hub MQTT API version the user name announces.
const API_VERSION: &str = "2021-04-12";

/// IoT Hub refuses device-to-cloud messages over 256 KB; a PUBLISH is that plus its topic
/// (the property bag) and a few header bytes, so this keeps a too-large message from making
/// the hub drop the connection: it is rejected here instead.
const MAX_PACKET_SIZE: usize = 256 * 1024 + 1024;

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded, as
/// Python's `quote_plus` (which Azure's samples use) does for the strings that occur here.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, URL_ENCODE).to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AzureOptions {
    #[serde(default)]
    shared_access_key: Option<String>,
    #[serde(default)]
    connection_string: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "yes")]
    tls: bool,
    #[serde(default = "token_ttl_default", with = "humantime_serde")]
    token_ttl: Duration,
    #[serde(default = "mqtt::keep_alive_default", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default = "content_type_default")]
    content_type: String,
    #[serde(default = "content_encoding_default")]
    content_encoding: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn token_ttl_default() -> Duration {
    Duration::from_secs(3600)
}
fn content_type_default() -> String {
    "application/json".into()
}
fn content_encoding_default() -> String {
    "utf-8".into()
}

/// One device of one hub, and its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub hub: String,
    pub device_id: String,
    key: Vec<u8>,
}

impl Device {
    /// The resource a device's SAS token grants access to.
    fn resource(&self) -> String {
        format!("{}/devices/{}", self.hub, self.device_id)
    }

    /// The SAS token that is good until `expiry` (seconds since the Unix epoch).
    pub fn sas_token(&self, expiry: u64) -> String {
        let resource = url_encode(&self.resource());
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{resource}\n{expiry}").as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "SharedAccessSignature sr={resource}&sig={}&se={expiry}",
            url_encode(&signature)
        )
    }

    pub fn username(&self) -> String {
        format!("{}/{}/?api-version={API_VERSION}", self.hub, self.device_id)
    }
}

/// A device connection string's parts: `HostName=...;DeviceId=...;SharedAccessKey=...`.
fn parse_connection_string(text: &str) -> Result<(String, String, String), String> {
    let (mut host, mut device, mut key) = (None, None, None);
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        // The key is base64 and may end in `=`, so split at the first `=` only.
        let (name, value) = part.split_once('=').ok_or_else(|| {
            format!(
                "`{}` is not NAME=VALUE",
                part.split('=').next().unwrap_or("")
            )
        })?;
        match name {
            "HostName" => host = Some(value.to_string()),
            "DeviceId" => device = Some(value.to_string()),
            "SharedAccessKey" => key = Some(value.to_string()),
            "ModuleId" => return Err("module identities are not supported; use a device's".into()),
            "SharedAccessKeyName" => {
                return Err(
                    "this is a hub policy's connection string; use the device's (with DeviceId)"
                        .into(),
                )
            }
            other => return Err(format!("unknown part `{other}`")),
        }
    }
    match (host, device, key) {
        (Some(h), Some(d), Some(k)) => Ok((h, d, k)),
        (h, d, k) => {
            let missing: Vec<&str> = [
                ("HostName", h.is_none()),
                ("DeviceId", d.is_none()),
                ("SharedAccessKey", k.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            Err(format!("missing {}", missing.join(", ")))
        }
    }
}

/// Reads `azure-iot://HUB/DEVICE` (either may be empty when a connection string names them).
fn parse_uri(uri: &str) -> Result<(Option<String>, Option<String>), StageError> {
    let bad = |why: &str| {
        StageError::Settings(format!(
            "bad Azure IoT URI `{uri}`: {why}; expected azure-iot://HUB.azure-devices.net/DEVICE_ID"
        ))
    };
    let rest = uri
        .strip_prefix("azure-iot://")
        .ok_or_else(|| bad("not azure-iot://"))?;
    if rest.contains(['?', '#', '@']) {
        return Err(bad(
            "credentials and settings go in the stage's `options`, not in the URI",
        ));
    }
    let (hub, device) = rest.split_once('/').unwrap_or((rest, ""));
    let device = percent_encoding::percent_decode_str(device)
        .decode_utf8()
        .map_err(|_| bad("the device id is not UTF-8 once decoded"))?;
    if device.contains('/') {
        return Err(bad("a device id has no `/`"));
    }
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok((some(hub), some(&device)))
}

/// Builds the `azure-iot://` adapter from the stage's settings, without connecting.
pub fn open(config: &AdapterConfig) -> Result<MqttPublisher<IotHubDevice>, StageError> {
    let options: AzureOptions = parse_options(config, "azure-iot")?;
    let error = |why: String| StageError::Settings(format!("azure-iot options: {why}"));
    let (uri_hub, uri_device) = parse_uri(config.uri)?;
    let (hub, device_id, key) = match (&options.connection_string, &options.shared_access_key) {
        (Some(_), Some(_)) => {
            return Err(error(
                "give `connection_string` or `shared_access_key`, not both".into(),
            ))
        }
        (None, None) => {
            return Err(error(
                "the device's `shared_access_key` or `connection_string` is required".into(),
            ))
        }
        (None, Some(key)) => {
            let (Some(hub), Some(device)) = (uri_hub, uri_device) else {
                return Err(error(format!(
                    "`{}` must name the hub and the device: azure-iot://HUB.azure-devices.net/DEVICE_ID",
                    config.uri
                )));
            };
            (hub, device, key.clone())
        }
        (Some(text), None) => {
            // Never quote the string itself: it holds the key.
            let (hub, device, key) = parse_connection_string(text)
                .map_err(|why| error(format!("bad `connection_string`: {why}")))?;
            for (from_uri, from_string, what) in [
                (&uri_hub, &hub, "HostName"),
                (&uri_device, &device, "DeviceId"),
            ] {
                if from_uri.as_ref().is_some_and(|u| u != from_string) {
                    return Err(error(format!(
                        "`connection_string` names {what} `{from_string}` but the URI says `{}`",
                        from_uri.as_deref().unwrap_or_default()
                    )));
                }
            }
            (hub, device, key)
        }
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|e| error(format!("the shared access key is not base64: {e}")))?;
    if key.is_empty() {
        return Err(error("the shared access key is empty".into()));
    }
    if options.token_ttl < Duration::from_secs(60) {
        return Err(error(format!(
            "token_ttl must be at least 60s, not {}",
            humantime_serde::re::humantime::format_duration(options.token_ttl)
        )));
    }
    let tls = if options.tls {
        Some(mqtt::tls_connector(options.ca_file.as_ref(), None, None)?)
    } else if options.ca_file.is_some() {
        return Err(error("`ca_file` needs tls = true".into()));
    } else {
        None
    };
    let display = format!("azure-iot://{hub}/{device_id}");
    let settings = ClientSettings {
        host: hub.clone(),
        port: options
            .port
            .unwrap_or(if options.tls { 8883 } else { 1883 }),
        tls,
        client_id: device_id.clone(),
        protocol: Protocol::V311,
        qos: 1,
        retain: false,
        keep_alive: options.keep_alive,
        max_inflight: 100,
        max_packet_size: Some(MAX_PACKET_SIZE),
        timeout: config.timeout,
        display,
    };
    settings.check().map_err(error)?;
    Ok(MqttPublisher::new(
        IotHubDevice {
            device: Device {
                hub,
                device_id,
                key,
            },
            token_ttl: options.token_ttl,
            content_type: options.content_type,
            content_encoding: options.content_encoding,
        },
        settings,
    ))
}

/// Azure IoT Hub's topics and SAS-token credentials for one device.
pub struct IotHubDevice {
    device: Device,
    token_ttl: Duration,
    content_type: String,
    content_encoding: String,
}

impl IotHubDevice {
    /// The property bag that follows `messages/events/`.
    fn property_bag(&self, message: &Message) -> String {
        [
            ("$.mid", message.id.as_str()),
            ("$.ct", self.content_type.as_str()),
            ("$.ce", self.content_encoding.as_str()),
            ("sensorId", message.key.as_str()),
        ]
        .iter()
        .map(|(name, value)| format!("{name}={}", url_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

impl Dialect for IotHubDevice {
    fn topic(&self, message: &Message) -> Result<String, String> {
        Ok(format!(
            "devices/{}/messages/events/{}",
            self.device.device_id,
            self.property_bag(message)
        ))
    }

    fn login(&self) -> Option<Login> {
        // A clock before 1970 is not worth a failure; such a token is simply expired.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let expiry = (now + self.token_ttl).as_secs();
        Some(Login {
            username: self.device.username(),
            password: self.device.sas_token(expiry),
            renew_after: Some(self.token_ttl * 4 / 5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::adapter::Adapter;

    // A made-up device key: base64 of the 32 bytes "vidmesh-test-device-key-32bytes!".
    const KEY: &str = "dmlkbWVzaC10ZXN0LWRldmljZS1rZXktMzJieXRlcyE=";

    fn open_with(uri: &str, options: &str) -> Result<MqttPublisher<IotHubDevice>, String> {
        let options: toml::Table = toml::from_str(options).unwrap();
        open(&AdapterConfig {
            uri,
            options: &options,
            timeout: Duration::from_secs(2),
            replica: 0,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn sas_token_matches_an_independent_computation() {
        // Computed with Python 3 the way Azure's documentation does it:
        //   uri = "myhub.azure-devices.net/devices/cam-7"; se = 1767225600
        //   sig = b64encode(hmac.new(b64decode(KEY), f"{quote_plus(uri)}\n{se}".encode(),
        //                            hashlib.sha256).digest())
        //   "SharedAccessSignature " + urlencode({"sr": uri, "sig": sig, "se": se})
        let device = Device {
            hub: "myhub.azure-devices.net".into(),
            device_id: "cam-7".into(),
            key: base64::engine::general_purpose::STANDARD
                .decode(KEY)
                .unwrap(),
        };
        assert_eq!(
            device.sas_token(1_767_225_600),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fcam-7\
             &sig=UkN2PIdXEpkjGwC%2FlImNjBNhVeIvT8dHNE8iGHxOlH4%3D&se=1767225600"
        );
        assert_eq!(
            device.username(),
            "myhub.azure-devices.net/cam-7/?api-version=2021-04-12"
        );
    }

    #[test]
    fn messages_go_to_the_device_topic_with_a_property_bag() {
        let adapter = open_with(
            "azure-iot://myhub.azure-devices.net/cam-7",
            &format!("shared_access_key = \"{KEY}\""),
        )
        .unwrap();
        let message = Message {
            key: "door 1/left".into(),
            id: "5f0c-01".into(),
            payload: b"{}".to_vec(),
        };
        let topic = adapter.dialect().topic(&message).unwrap();
        assert_eq!(
            topic,
            "devices/cam-7/messages/events/$.mid=5f0c-01&$.ct=application%2Fjson&$.ce=utf-8\
             &sensorId=door%201%2Fleft"
        );
        let login = adapter.dialect().login().unwrap();
        assert_eq!(
            login.username,
            "myhub.azure-devices.net/cam-7/?api-version=2021-04-12"
        );
        assert!(login.password.starts_with(
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fcam-7&sig="
        ));
        assert_eq!(login.renew_after, Some(Duration::from_secs(2880)));
        assert_eq!(
            adapter.describe(),
            "azure-iot://myhub.azure-devices.net/cam-7"
        );
    }

    #[test]
    fn a_connection_string_can_stand_in_for_the_uri() {
        let adapter = open_with(
            "azure-iot://",
            &format!(
                "connection_string = \"HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey={KEY}\""
            ),
        )
        .unwrap();
        assert_eq!(adapter.describe(), "azure-iot://h.azure-devices.net/d1");
        let err = open_with(
            "azure-iot://h.azure-devices.net/d2",
            &format!(
                "connection_string = \"HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey={KEY}\""
            ),
        )
        .err()
        .unwrap();
        assert!(err.contains("DeviceId `d1` but the URI says `d2`"), "{err}");
    }

    #[test]
    fn bad_settings_are_named_and_never_show_the_key() {
        for (uri, options, expected) in [
            ("azure-iot://h/d", String::new(), "is required"),
            ("azure-iot://h/d", "shared_access_key = \"not base64!\"".into(), "not base64"),
            ("azure-iot://h", format!("shared_access_key = \"{KEY}\""), "must name the hub and the device"),
            ("azure-iot://h/d", format!("shared_access_key = \"{KEY}\"\ntoken_ttl = \"5s\""), "token_ttl"),
            ("azure-iot://h/d", format!("shared_access_key = \"{KEY}\"\nqos = 2"), "unknown field `qos`"),
            ("azure-iot://u:p@h/d", format!("shared_access_key = \"{KEY}\""), "not in the URI"),
            (
                "azure-iot://",
                format!("connection_string = \"HostName=h;SharedAccessKey={KEY}\""),
                "missing DeviceId",
            ),
            (
                "azure-iot://",
                format!("connection_string = \"HostName=h;SharedAccessKeyName=owner;SharedAccessKey={KEY}\""),
                "hub policy",
            ),
        ] {
            let err = open_with(uri, &options).err().unwrap();
            assert!(err.contains(expected), "{options}: {err}");
            assert!(!err.contains(KEY), "{err}");
        }
    }
}
