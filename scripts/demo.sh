#!/usr/bin/env bash
# The main job: builds hastack and runs a local demo cluster — three LB nodes and a client in network
# namespaces (198.18.0.0/24, nothing attached to real interfaces), each node running `hastack
# cluster` with a VIP. It shows the cluster's status, kills the node holding the VIP (daemon killed and
# link cut), hands the VIP over gracefully once, and prints how long the client could not reach it.
# Everything it creates is removed when it ends.
# Usage: sudo scripts/demo.sh [--cycles N] [--faults crash,kill,stop,graceful]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/demo.sh: the demo builds network namespaces and needs root; re-running with sudo" >&2
    exec sudo -E "$0" "$@"
fi

packages=(iproute2 nftables iputils-ping procps ca-certificates build-essential pkg-config curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "building hastack (release)…" >&2
cargo build --release --locked -p hastack
exec target/release/hastack demo "$@"
