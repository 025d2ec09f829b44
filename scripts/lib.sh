# Shared by scripts/demo.sh and scripts/test.sh: root, Debian packages, the Rust toolchain.

# Re-runs the calling script with sudo unless already root (namespaces need it).
as_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$(basename "$0"): network namespaces need root; re-running with sudo" >&2
        exec sudo -E "$0" "$@"
    fi
}

# Installs the given Debian packages that are not installed yet.
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The Rust toolchain: the one on PATH, or rustup's default install on a fresh machine.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}
