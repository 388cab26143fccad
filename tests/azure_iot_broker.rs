//! Events through the `azure-iot://` adapter (Azure IoT Hub's dialect of MQTT), tested against
//! Mosquitto with the same topics: a subscriber on `devices/+/messages/events/#` sees every
//! frame's event on the device's topic with its property bag (message id, content type and
//! encoding, sensor id), and the broker sees the device id as client id and IoT Hub's user
//! name. The password, a SAS token, is checked on the wire by a one-connection fake hub against
//! a signature computed independently with Python's hmac.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use vidmesh_tests::events::{assert_valid, beside_file_topology, clip_uri, Format};
use vidmesh_tests::mqtt::Mosquitto;

/// A made-up device key: base64 of the 32 bytes "vidmesh-test-device-key-32bytes!".
const KEY: &str = "dmlkbWVzaC10ZXN0LWRldmljZS1rZXktMzJieXRlcyE=";

/// Splits an IoT Hub property bag (`a=1&b=2`, URL-encoded) into decoded pairs.
fn property_bag(bag: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    bag.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

#[test]
fn events_reach_the_device_topic_with_iot_hubs_property_bag() {
    let mosquitto = Mosquitto::start();
    mosquitto.subscribe("reader", "devices/+/messages/events/#", "3.1.1");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 30);
    let path = beside_file_topology(
        scratch.path(),
        "azure",
        &[("cam-a", &uri), ("cam-b", &uri)],
        &format!(
            "uri = \"azure-iot://127.0.0.1/edge-box-1\", timeout = \"2s\", \
             options = {{ shared_access_key = \"{KEY}\", tls = false, port = {} }}",
            mosquitto.port
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("60"));
    assert_eq!(
        summary.fact("events", "output"),
        Some("azure-iot://127.0.0.1/edge-box-1")
    );

    let received = mosquitto.consume("reader", "devices/+/messages/events/#", "3.1.1", 60);
    assert_eq!(received.len(), 60, "one message per frame");
    let mut frames: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for m in &received {
        let bag = m
            .topic
            .strip_prefix("devices/edge-box-1/messages/events/")
            .unwrap_or_else(|| panic!("not the device's event topic: {}", m.topic));
        let properties = property_bag(bag);
        let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(keys, ["$.ce", "$.ct", "$.mid", "sensorId"], "{}", m.topic);
        assert_eq!(properties["$.ct"], "application/json");
        assert_eq!(properties["$.ce"], "utf-8");
        assert!(
            ids.insert(properties["$.mid"].clone()),
            "distinct message ids"
        );
        assert_eq!(m.qos, 1);
        let payload = assert_valid(Format::Minimal, &m.payload);
        assert_eq!(
            payload["sensorId"].as_str(),
            Some(properties["sensorId"].as_str())
        );
        frames
            .entry(properties["sensorId"].clone())
            .or_default()
            .push(payload["id"].as_str().unwrap().parse().unwrap());
    }
    for sensor in ["cam-a", "cam-b"] {
        assert_eq!(
            frames[sensor],
            (0..30).collect::<Vec<u64>>(),
            "{sensor}: in order"
        );
    }
    let log = mosquitto.log();
    assert!(
        log.contains(
            "as edge-box-1 (p2, c1, k60, u'127.0.0.1/edge-box-1/?api-version=2021-04-12')"
        ),
        "client id = device id, IoT Hub's user name: {log}"
    );
}

/// What a client's MQTT 3.1.1 CONNECT packet says.
#[derive(Debug)]
struct Connect {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
}

/// Reads one CONNECT packet (no will) from `stream`.
fn read_connect(stream: &mut impl Read) -> Connect {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], 0x10, "a CONNECT packet");
    let mut remaining = 0usize;
    for shift in (0..28).step_by(7) {
        stream.read_exact(&mut byte).unwrap();
        remaining |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; remaining];
    stream.read_exact(&mut body).unwrap();
    let mut at = 0;
    assert_eq!(mqtt_string(&body, &mut at), "MQTT");
    let (level, flags) = (body[at], body[at + 1]);
    assert_eq!(level, 4, "MQTT 3.1.1");
    assert_eq!(flags & 0x04, 0, "no will");
    at += 4; // level, flags, keep-alive
    let client_id = mqtt_string(&body, &mut at);
    let username = (flags & 0x80 != 0).then(|| mqtt_string(&body, &mut at));
    let password = (flags & 0x40 != 0).then(|| mqtt_string(&body, &mut at));
    Connect {
        client_id,
        username,
        password,
    }
}

/// The length-prefixed UTF-8 string at `*at`, moving `at` past it.
fn mqtt_string(body: &[u8], at: &mut usize) -> String {
    let len = usize::from(u16::from_be_bytes([body[*at], body[*at + 1]]));
    let s = String::from_utf8(body[*at + 2..*at + 2 + len].to_vec()).unwrap();
    *at += 2 + len;
    s
}

/// The SAS signature of `resource` until `expiry`, computed with Python the way Azure's
/// documentation does: base64 of HMAC-SHA256(key, quote_plus(resource) + "\n" + expiry),
/// URL-encoded.
fn python_signature(resource: &str, expiry: &str) -> String {
    let out = Command::new(vidmesh_tests::venv_python())
        .args([
            "-c",
            "import base64, hashlib, hmac, sys\n\
             from urllib.parse import quote_plus\n\
             key, resource, expiry = sys.argv[1:]\n\
             message = f'{quote_plus(resource)}\\n{expiry}'.encode()\n\
             digest = hmac.new(base64.b64decode(key), message, hashlib.sha256).digest()\n\
             print(quote_plus(base64.b64encode(digest)))",
            KEY,
            resource,
            expiry,
        ])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_password_is_a_sas_token_signed_with_the_device_key() {
    // A fake hub: it reads each CONNECT, refuses it as "not authorised" and passes it on.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connects, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let connect = read_connect(&mut stream);
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x05]);
            if connects.send(connect).is_err() {
                return;
            }
        }
    });
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 5);
    let path = beside_file_topology(
        scratch.path(),
        "azure",
        &[("cam", &uri)],
        &format!(
            "uri = \"azure-iot://\", timeout = \"2s\", drain_timeout = \"10s\", options = {{ \
             connection_string = \"HostName=127.0.0.1;DeviceId=dev-7;SharedAccessKey={KEY}\", \
             tls = false, port = {port}, token_ttl = \"10m\" }}"
        ),
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(error.contains("not authorised"), "{error}");
    assert!(!error.contains(KEY), "{error}");
    assert!(
        !serde_json::to_string(&summary)
            .unwrap()
            .contains("SharedAccessSignature"),
        "the token stays out of the summary"
    );

    let connect = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the adapter connected");
    assert_eq!(connect.client_id, "dev-7");
    assert_eq!(
        connect.username.as_deref(),
        Some("127.0.0.1/dev-7/?api-version=2021-04-12")
    );
    let password = connect.password.expect("a password");
    let token = password
        .strip_prefix("SharedAccessSignature ")
        .unwrap_or_else(|| panic!("a SAS token: {password}"));
    let fields: BTreeMap<&str, &str> = token
        .split('&')
        .map(|f| f.split_once('=').unwrap())
        .collect();
    assert_eq!(fields["sr"], "127.0.0.1%2Fdevices%2Fdev-7");
    let expiry: u64 = fields["se"].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 500..=now + 601).contains(&expiry),
        "valid for token_ttl = 10 minutes: {expiry} vs now {now}"
    );
    assert_eq!(
        fields["sig"],
        python_signature("127.0.0.1/devices/dev-7", fields["se"])
    );
}
