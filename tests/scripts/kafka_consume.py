#!/usr/bin/env python3
"""Reads a Kafka topic with confluent-kafka, independently of vidmesh, and prints one JSON line
per message: {"key", "id", "payload", "partition", "offset"} (`id` is the `message-id`
header, `payload` the message text).

Without --group it reads every partition from the beginning (assign, no offsets committed);
with --group it joins that consumer group, starts from the earliest offset the group has not
committed, and commits what it printed, like an analytics service would.

Stops after --expect messages, or when nothing new arrived for --idle seconds, or after
--timeout seconds in all; exits 1 on a consumer error.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", help="consumer group to join (default: read without one)")
    parser.add_argument("--expect", type=int, default=0, help="stop after this many messages")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this long without messages")
    parser.add_argument("--timeout", type=float, default=60.0, help="stop after this long in all")
    parser.add_argument("--scram-user", help="authenticate with SASL SCRAM-SHA-512 as this user")
    parser.add_argument("--scram-password")
    args = parser.parse_args()

    config = {
        "bootstrap.servers": args.bootstrap,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    if args.scram_user:
        config.update(
            {
                "security.protocol": "sasl_plaintext",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": args.scram_user,
                "sasl.password": args.scram_password or "",
            }
        )
    if args.group:
        config["group.id"] = args.group
        config["enable.auto.commit"] = False
    else:
        # librdkafka wants a group id even for assign(); a fresh one commits nothing anywhere.
        config["group.id"] = f"kafka-consume-{uuid.uuid4()}"
        config["enable.auto.commit"] = False
    consumer = Consumer(config)
    try:
        if args.group:
            consumer.subscribe([args.topic])
        else:
            metadata = consumer.list_topics(args.topic, timeout=10)
            topic = metadata.topics.get(args.topic)
            if topic is None or topic.error is not None:
                print(f"kafka_consume: topic {args.topic}: {topic.error if topic else 'missing'}", file=sys.stderr)
                return 1
            consumer.assign([TopicPartition(args.topic, p, 0) for p in sorted(topic.partitions)])

        count = 0
        start = time.monotonic()
        last = start
        while True:
            now = time.monotonic()
            if args.expect and count >= args.expect:
                break
            if now - start > args.timeout or now - last > args.idle:
                break
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                print(f"kafka_consume: {message.error()}", file=sys.stderr)
                return 1
            headers = dict(message.headers() or [])
            message_id = headers.get("message-id")
            print(
                json.dumps(
                    {
                        "key": message.key().decode() if message.key() is not None else None,
                        "id": message_id.decode() if message_id is not None else None,
                        "payload": message.value().decode(),
                        "partition": message.partition(),
                        "offset": message.offset(),
                    }
                ),
                flush=True,
            )
            count += 1
            last = time.monotonic()
            if args.group:
                consumer.commit(message=message, asynchronous=False)
        return 0
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
