#!/usr/bin/env bash
# Runs every hastack test: installs what the tests need (Debian packages, the Rust toolchain if absent),
# then the whole workspace suite, unit, simulation and end-to-end (network namespaces: needs root).
# Usage: sudo scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the end-to-end tests build network namespaces and need root; re-running with sudo" >&2
    exec sudo -E "$0" "$@"
fi

# Real peers and tools the tests drive. Only what is missing is installed.
packages=(
    iproute2 nftables iputils-ping procps psmisc kmod
    isc-dhcp-client udhcpc bind9-dnsutils
    ca-certificates build-essential pkg-config curl
)
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

# The Rust toolchain: the one on PATH, or rustup's default install for a fresh machine.
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi

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
