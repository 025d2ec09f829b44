#!/usr/bin/env bash
# Membership benchmark: `hastack bench membership` — detection time after kill -9 and false view
# changes under 5 % / 10 % nftables loss and a CPU hog, hastack `cluster` daemons vs Corosync 3
# (knet; its defaults and its lowest stable token), one after the other in the same three-node
# network-namespace lab. The lab and every daemon are removed on exit. Figures and method:
# docs/bench/membership.md.
#
# Usage: scripts/bench-membership.sh [--runs N] [--loss-secs S] [--hog-secs S] [--tokens LIST]
#                                    [--no-corosync | --no-hastack]
#        HASTACK=path/to/hastack picks the binary (default: build the release one, as the
#        published figures use).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
as_root "$@"
cd "$(dirname "$0")/.."
install_packages corosync nftables iproute2 iputils-ping
if [ -z "${HASTACK:-}" ]; then
    ensure_cargo
    cargo build -q --release -p hastack
    HASTACK="${CARGO_TARGET_DIR:-target}/release/hastack"
fi
exec "$HASTACK" bench membership "$@"
