#!/usr/bin/env bash
# Creates bench/mot/.venv with what bench/mot/run.py needs: motmetrics (CLEAR MOT and identity
# metrics), supervision (the ByteTrack we compare against), trackeval (HOTA) and numpy/scipy.
# Idempotent: a second run only checks. Also builds the release `track-eval` binary.
set -euo pipefail
cd "$(dirname "$0")"

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating bench/mot/.venv"
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
if [[ ${VIDMESH_SKIP_BUILD:-0} != 1 ]]; then
  echo "setup: building track-eval (release)"
  cargo build --release -q -p vidmesh-track-eval
fi
echo "setup: done"
