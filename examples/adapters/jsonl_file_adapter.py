#!/usr/bin/env python3
"""A custom vidmesh broker adapter as an external program (uri = "exec://NAME").

vidmesh writes one JSON request per line on stdin:
    {"id": "<stable message id>", "key": "<sensor id>", "payload": "<JSON text>"}
(`payload_base64` instead of `payload` for binary payloads such as Protobuf), and reads one
answer per request, in order, from stdout:
    {"ok": true}                                    delivered; vidmesh forgets the message
    {"ok": false, "kind": "unavailable", "error": "..."}   retried later (also: "refused")
    {"ok": false, "kind": "rejected", "error": "..."}      never deliverable; set aside
Answer only once a message is safe: vidmesh keeps it in its spool until then, and sends it
again (same id) if this program dies or does not answer within the stage's `timeout`.

This example appends each message to a JSON-lines file, one object per message with its id
and sensor, and syncs the file before answering. Usage in a topology:

    events = { kind = "broker", uri = "exec://jsonl", options = {
               command = ["python3", "examples/adapters/jsonl_file_adapter.py", "out/events.jsonl"] } }

Set VIDMESH_EXAMPLE_MAX_BYTES to make it reject larger payloads (to see rejections).
"""
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: jsonl_file_adapter.py OUTPUT.jsonl", file=sys.stderr)
        return 2
    max_bytes = int(os.environ.get("VIDMESH_EXAMPLE_MAX_BYTES", "0"))
    with open(sys.argv[1], "a", encoding="utf-8") as out:
        for line in sys.stdin:
            request = json.loads(line)
            payload = request.get("payload")
            if payload is None:
                answer = {"ok": False, "kind": "rejected", "error": "binary payloads are not supported"}
            elif max_bytes and len(payload.encode()) > max_bytes:
                answer = {"ok": False, "kind": "rejected", "error": f"payload over {max_bytes} bytes"}
            else:
                out.write(json.dumps({"id": request["id"], "sensor": request["key"], "payload": json.loads(payload)}) + "\n")
                out.flush()
                os.fsync(out.fileno())
                answer = {"ok": True}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
