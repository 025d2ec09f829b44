#!/usr/bin/env bash
# The main job: builds hastack and runs a local demo cluster — three LB nodes and a client in network
# namespaces (198.18.0.0/24, nothing attached to real interfaces), each node running `hastack
# cluster` with a VIP. It shows the cluster's status, kills the node holding the VIP (daemon killed and
# link cut), hands the VIP over gracefully once, and prints how long the client could not reach it.
# Everything it creates is removed when it ends.
# Usage: sudo scripts/demo.sh [--cycles N] [--faults crash,kill,stop,graceful]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
as_root "$@"
install_packages iproute2 nftables iputils-ping procps util-linux ca-certificates build-essential pkg-config curl
ensure_cargo

echo "building hastack (release)…" >&2
cargo build --release --locked -p hastack
# Cargo puts the binary under $CARGO_TARGET_DIR when that is set (sudo -E keeps it).
exec "${CARGO_TARGET_DIR:-target}/release/hastack" demo "$@"
