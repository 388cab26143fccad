#!/usr/bin/env bash
# Builds the transport benchmark and its peers, then runs the whole matrix and prints the
# table. Extra arguments go to `transport-bench run`, e.g.
#   bench/transport/run.sh --repeat 3
#   bench/transport/run.sh --payloads rgb --mode paced --transports vidmesh-shm,zenoh-shm
# Results: the table on stdout, everything in bench/transport/results/transport-<UTC time>.json.
#
# dora: the dora peer (dora-peer/) is built only when dora's command line is there
# ($DORA_CLI, or dora-peer/.dora-cli/bin/dora); otherwise the dora cells are skipped.
#   bench/transport/run.sh --with-dora    # first installs dora's command line there (slow:
#                                         # about an hour on 2 cores), then as above
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dora_version=1.1.0 # the dora-node-api version dora-peer/Cargo.toml pins
with_dora=0
args=()
for a in "$@"; do
    if [[ $a == --with-dora ]]; then with_dora=1; else args+=("$a"); fi
done
cargo build --release --manifest-path "$here/Cargo.toml"
# A separate build with zenoh's shared-memory feature (see zenoh-shm-peer/src/main.rs), into
# the same target dir so that transport-bench finds it next to itself.
cargo build --release --manifest-path "$here/zenoh-shm-peer/Cargo.toml" --target-dir "$here/target"
dora_cli="${DORA_CLI:-$here/dora-peer/.dora-cli/bin/dora}"
if [[ $with_dora == 1 && ! -x $dora_cli ]]; then
    # dora's daemon and coordinator come with its command line. Features: only the two that
    # dora-cli 1.1.0 does not compile without (see README.md); `metrics` stays off.
    cargo install "dora-cli@$dora_version" --locked --no-default-features \
        --features redb-backend,tracing --root "$here/dora-peer/.dora-cli"
    dora_cli="$here/dora-peer/.dora-cli/bin/dora"
fi
if [[ -x $dora_cli ]]; then
    # A third build (dora brings its own zenoh, arrow and tokio), into the same target dir.
    cargo build --release --manifest-path "$here/dora-peer/Cargo.toml" --target-dir "$here/target"
    export DORA_CLI="$dora_cli"
else
    echo "run.sh: no dora command line at $dora_cli: the dora cells will be skipped" \
        "(bench/transport/run.sh --with-dora installs it, slowly)" >&2
fi
mkdir -p "$here/results"
exec "$here/target/release/transport-bench" run \
    --json "$here/results/transport-$(date -u +%Y%m%dT%H%M%SZ).json" ${args[@]+"${args[@]}"}
