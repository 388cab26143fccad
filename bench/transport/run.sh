#!/usr/bin/env bash
# Builds the transport benchmark and its bare-zenoh shared-memory peer, then runs the whole
# matrix and prints the table. Extra arguments go to `transport-bench run`, e.g.
#   bench/transport/run.sh --repeat 3
#   bench/transport/run.sh --payloads rgb --mode paced --transports vidmesh-shm,zenoh-shm
# Results: the table on stdout, everything in bench/transport/results/transport-<UTC time>.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo build --release --manifest-path "$here/Cargo.toml"
# A separate build with zenoh's shared-memory feature (see zenoh-shm-peer/src/main.rs), into
# the same target dir so that transport-bench finds it next to itself.
cargo build --release --manifest-path "$here/zenoh-shm-peer/Cargo.toml" --target-dir "$here/target"
mkdir -p "$here/results"
exec "$here/target/release/transport-bench" run \
    --json "$here/results/transport-$(date -u +%Y%m%dT%H%M%SZ).json" "$@"
