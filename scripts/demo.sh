#!/usr/bin/env bash
# The main job: start a local OpenBao lab (mTLS listener, like production) and run the
# rotation against it. Extra arguments go to `rotate-lab` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec cargo run --quiet --locked -p rotate-tests --bin rotate-lab -- "$@"
