#!/usr/bin/env bash
# Installs what building and testing Shoal needs on a fresh Debian machine, and nothing that is
# already there. Safe to run again. Needs root (or sudo) only when something is missing.
set -euo pipefail

# Debian packages: the tools the tests drive for real (namespaces, firewall, WireGuard peers,
# a skewed clock for one node), and promtool (package prometheus) to check the alert rules.
debian_packages=(iproute2 iputils-ping iptables nftables wireguard-tools wireguard-go iperf3 faketime procps psmisc curl ca-certificates prometheus)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "install-deps: installing Debian packages: ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Only promtool is wanted from prometheus: a machine with systemd starts the server the
  # package ships (port 9090); stop it and keep it off.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# Rust toolchain pieces: rustfmt and clippy for the lint gate, nextest for per-test timeouts.
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is not installed; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest from crates.io" >&2
  cargo install --locked cargo-nextest
fi
