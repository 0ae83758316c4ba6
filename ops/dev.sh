#!/usr/bin/env bash
# Builds Shoal and starts a local cluster on loopback (`shoal dev`). Extra arguments go to
# `shoal dev`, e.g. `./ops/dev.sh --nodes 1`. Ctrl-C stops every node.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/install-deps.sh
cargo build --locked -p shoal-node
exec ./target/debug/shoal dev "$@"
