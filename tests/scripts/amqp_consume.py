#!/usr/bin/env python3
"""An AMQP 0-9-1 client for the broker tests, with pika, independent of vidmesh.

  ping    --uri URI                 connect, open a channel, close: exits 0 once the broker
                                    completes a real AMQP handshake with these credentials.
  declare --uri URI --queue Q --exchange E [--binding-key K]
                                    declare durable queue Q bound to E with K (default "#"),
                                    before the pipeline publishes, so nothing is unroutable.
  drain   --uri URI --queue Q [--expect N] [--idle S] [--timeout S]
                                    read Q, acking each message after printing one JSON line:
                                    {"routing_key", "message_id", "sensor_id", "content_type",
                                    "delivery_mode", "redelivered", "payload"}. Stops once N
                                    messages came and the queue is empty, when nothing arrived
                                    for S seconds, or after --timeout seconds in all.

Exits 1 with the reason on stderr when the broker refuses or cannot be reached.
"""

import argparse
import json
import sys
import time

import pika


def connect(uri: str) -> pika.BlockingConnection:
    params = pika.URLParameters(uri)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def drain(channel, args) -> int:
    count = 0
    start = time.monotonic()
    last = start
    while True:
        now = time.monotonic()
        if now - start > args.timeout:
            break
        method, properties, body = channel.basic_get(args.queue, auto_ack=False)
        if method is None:
            if count >= args.expect or now - last > args.idle:
                break
            time.sleep(0.05)
            continue
        headers = properties.headers or {}
        sensor = headers.get("sensorId")
        if isinstance(sensor, bytes):
            sensor = sensor.decode("utf-8", "replace")
        line = {
            "routing_key": method.routing_key,
            "message_id": properties.message_id,
            "sensor_id": sensor,
            "content_type": properties.content_type,
            "delivery_mode": properties.delivery_mode,
            "redelivered": method.redelivered,
            "payload": body.decode("utf-8", "replace"),
        }
        print(json.dumps(line), flush=True)
        channel.basic_ack(method.delivery_tag)
        count += 1
        last = time.monotonic()
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["ping", "declare", "drain"])
    parser.add_argument("--uri", required=True, help="amqp://USER:PASS@HOST:PORT/%%2F")
    parser.add_argument("--queue")
    parser.add_argument("--exchange", default="amq.topic")
    parser.add_argument("--binding-key", default="#")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.command != "ping" and not args.queue:
        parser.error(f"{args.command} needs --queue")

    try:
        connection = connect(args.uri)
    except pika.exceptions.AMQPError as e:
        print(f"amqp_consume: cannot connect: {e!r}", file=sys.stderr)
        return 1
    try:
        channel = connection.channel()
        if args.command == "declare":
            channel.queue_declare(args.queue, durable=True)
            channel.queue_bind(args.queue, args.exchange, routing_key=args.binding_key)
        elif args.command == "drain":
            drain(channel, args)
        connection.close()
    except pika.exceptions.AMQPError as e:
        print(f"amqp_consume: {args.command}: {e!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
