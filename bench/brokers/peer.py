#!/usr/bin/env python3
"""The Python peer of broker-throughput: sends every message of a JSON-lines file and waits
until the broker confirmed all of them, the way a hand-written DeepStream/Python pipeline
would publish events.

    peer.py kafka HOST:PORT/TOPIC FILE   confluent-kafka, acks=all, idempotent, key = sensor,
                                         header message-id; flush() waits for every report
    peer.py mqtt HOST:PORT/PREFIX FILE   paho-mqtt, MQTT 3.1.1, QoS 1, topic PREFIX/<sensor>;
                                         waits for every PUBACK

Prints {"messages": N, "seconds": S, "rate": N/S}.
"""
import json
import sys
import time


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def kafka(target, messages):
    from confluent_kafka import Producer

    bootstrap, topic = target.split("/", 1)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    })
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    start = time.perf_counter()
    for m in messages:
        while True:
            try:
                producer.produce(topic, m["payload"].encode(), key=m["key"].encode(),
                                 headers=[("message-id", m["id"].encode())], on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - start
    if remaining or failed:
        raise SystemExit(f"{remaining} unconfirmed, {len(failed)} failed: {failed[:3]}")
    return elapsed


def mqtt(target, messages):
    import paho.mqtt.client as paho

    hostport, prefix = target.split("/", 1)
    host, port = hostport.split(":")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="vidmesh-bench-peer",
                         protocol=paho.MQTTv311)
    client.max_inflight_messages_set(100)  # the same window as vidmesh's default
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    start = time.perf_counter()
    infos = [client.publish(f"{prefix}/{m['key']}", m["payload"], qos=1) for m in messages]
    for info in infos:
        info.wait_for_publish(60)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    if not all(i.is_published() for i in infos):
        raise SystemExit("not every message was acknowledged")
    return elapsed


def main():
    system, target, path = sys.argv[1:4]
    messages = load(path)
    elapsed = {"kafka": kafka, "mqtt": mqtt}[system](target, messages)
    print(json.dumps({"messages": len(messages), "seconds": elapsed, "rate": len(messages) / elapsed}))


if __name__ == "__main__":
    main()
