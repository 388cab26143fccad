#!/usr/bin/env python3
"""Reads an MQTT topic with paho-mqtt, independently of vidmesh, and prints one JSON line per
message: {"topic", "payload", "id", "qos"} (`id` is the MQTT 5 user property `message-id`, null
without one; `payload` the message text).

It subscribes at QoS 1 in a persistent session under --client-id (MQTT 3.1.1: clean session
off; MQTT 5: clean start off and a session that outlives the connection), so the broker keeps
QoS 1 messages for it while it is away. With --register it only opens the session and leaves;
run it so before publishing, and again afterwards to read what the broker kept.

Stops after --expect messages, or when nothing new arrived for --idle seconds, or after
--timeout seconds in all; exits 1 if it cannot connect or subscribe.
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True, help="topic filter; wildcards allowed")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--register", action="store_true", help="open the session, then leave")
    parser.add_argument("--expect", type=int, default=0, help="stop after this many messages")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this long without messages")
    parser.add_argument("--timeout", type=float, default=60.0, help="stop after this long in all")
    args = parser.parse_args()

    v5 = args.protocol == "5"
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
    if args.username:
        client.username_pw_set(args.username, args.password)

    lock = threading.Lock()
    state = {"error": None, "count": 0, "last": time.monotonic()}
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            with lock:
                state["error"] = f"connect refused: {reason_code}"
            return
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            with lock:
                state["error"] = f"subscribe to {args.topic} refused: {', '.join(failed)}"
        else:
            subscribed.set()

    def on_message(client, userdata, message):
        message_id = None
        properties = message.properties
        if properties is not None and hasattr(properties, "UserProperty"):
            for name, value in properties.UserProperty:
                if name == "message-id":
                    message_id = value
        line = json.dumps(
            {
                "topic": message.topic,
                "payload": message.payload.decode("utf-8", "replace"),
                "id": message_id,
                "qos": message.qos,
            }
        )
        with lock:
            print(line, flush=True)
            state["count"] += 1
            state["last"] = time.monotonic()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            # Keep the session (and the messages queued for it) for an hour after leaving.
            properties.SessionExpiryInterval = 3600
            client.connect(args.host, args.port, keepalive=30, clean_start=False, properties=properties)
        else:
            client.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        print(f"mqtt_consume: cannot connect to {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    start = time.monotonic()
    try:
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with lock:
                error, count, last = state["error"], state["count"], state["last"]
            if error:
                print(f"mqtt_consume: {error}", file=sys.stderr)
                return 1
            if args.register and subscribed.is_set():
                return 0
            if now - start > args.timeout:
                if not subscribed.is_set():
                    print(f"mqtt_consume: not subscribed within {args.timeout} s", file=sys.stderr)
                    return 1
                return 0
            if args.expect and count >= args.expect:
                return 0
            if subscribed.is_set() and now - max(last, start) > args.idle:
                return 0
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
