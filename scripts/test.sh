#!/usr/bin/env bash
# Runs every hastack test: installs what the tests need (Debian packages, the Rust toolchain if absent),
# then the whole workspace suite, unit, simulation and end-to-end (network namespaces: needs root).
# Usage: sudo scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
as_root "$@"
# Real peers and tools the tests drive.
install_packages iproute2 nftables iputils-ping procps util-linux kmod \
    isc-dhcp-client udhcpc bind9-dnsutils wrk \
    ca-certificates build-essential pkg-config curl
ensure_cargo

# nf_tables inside namespaces: make sure the module is there (built in on most kernels).
modprobe nf_tables 2>/dev/null || true

# A test that needs root or a tool fails instead of skipping when CI=true; make that explicit for
# anyone running this script by hand too, unless they asked otherwise.
export CI="${CI:-true}"
export RUST_BACKTRACE=1

# End-to-end tests run the real `hastack` binary inside namespaces: build it first (the tests cannot,
# cargo holds the build lock while they run).
cargo build --locked -p hastack
cargo test --workspace --locked --no-fail-fast "$@"
