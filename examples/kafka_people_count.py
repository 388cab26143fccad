#!/usr/bin/env python3
"""An analytics service fed by vidmesh over Kafka: counts people per camera.

It joins a consumer group, so that several instances of one service share the topic's
partitions (each camera's events stay in one partition, hence with one instance), while a
second service with another group id reads every event too, independently.

Reads the `minimal` schema (one message per frame: `objects` as "id|left|top|right|bottom|label"
strings) and the `full` schema (one message per object: `object.id`, `object.person`/label).
Events are delivered at least once; repeats carry the same `message-id` header and are dropped.

Prints one JSON line per camera when it stops (after --idle seconds without events, or
--max-messages): {"sensor", "frames", "people_now", "people_max", "tracks", "messages",
"repeats"}. With --commit (the default) it commits offsets, so a restarted instance of the
same group continues where it stopped.

    .venv/bin/python examples/kafka_people_count.py --bootstrap 127.0.0.1:9092 \\
        --topic events --group people-count
"""

import argparse
import json
import sys
import time
from collections import defaultdict

from confluent_kafka import Consumer

# DeepStream's UNTRACKED_OBJECT_ID (2^64-1): an object without a tracker id has no identity.
UNTRACKED = "18446744073709551615"


class CameraCount:
    def __init__(self):
        self.frames = set()
        self.people_now = 0
        self.people_max = 0
        self.tracks = set()
        self.messages = 0
        # full schema: people per frame, built from one message per object
        self.per_frame = defaultdict(int)

    def minimal(self, event):
        people = [o for o in event.get("objects", []) if o.split("|")[5:6] == ["person"]]
        self.frames.add(event["id"])
        self.people_now = len(people)
        self.people_max = max(self.people_max, self.people_now)
        for o in people:
            track = o.split("|")[0]
            if track != UNTRACKED:
                self.tracks.add(track)

    def full(self, event):
        obj = event.get("object", {})
        if "person" not in obj:
            return
        frame = event.get("@timestamp")
        self.frames.add(frame)
        self.per_frame[frame] += 1
        self.people_now = self.per_frame[frame]
        self.people_max = max(self.people_max, self.people_now)
        if obj.get("id") != UNTRACKED:
            self.tracks.add(obj.get("id"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group: one per analytics service")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this long without events")
    parser.add_argument("--max-messages", type=int, default=0)
    parser.add_argument("--no-commit", dest="commit", action="store_false")
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    cameras = defaultdict(CameraCount)
    seen = set()
    repeats = defaultdict(int)
    total = 0
    last = time.monotonic()
    try:
        while time.monotonic() - last < args.idle:
            if args.max_messages and total >= args.max_messages:
                break
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                print(f"kafka_people_count: {message.error()}", file=sys.stderr)
                return 1
            last = time.monotonic()
            total += 1
            sensor = message.key().decode() if message.key() else "unknown"
            message_id = dict(message.headers() or []).get("message-id")
            if message_id is not None and message_id in seen:
                repeats[sensor] += 1
            else:
                if message_id is not None:
                    seen.add(message_id)
                event = json.loads(message.value())
                camera = cameras[sensor]
                camera.messages += 1
                if "objects" in event:
                    camera.minimal(event)
                else:
                    camera.full(event)
            if args.commit:
                consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
    for sensor in sorted(cameras):
        c = cameras[sensor]
        print(
            json.dumps(
                {
                    "sensor": sensor,
                    "frames": len(c.frames),
                    "people_now": c.people_now,
                    "people_max": c.people_max,
                    "tracks": len(c.tracks),
                    "messages": c.messages,
                    "repeats": repeats[sensor],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
