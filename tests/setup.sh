#!/usr/bin/env bash
# Installs everything tabby's build and tests need on a fresh Debian machine
# (idempotent: a machine that has it all is left alone). Needs root.
set -euo pipefail

packages=(
  iproute2 iputils-ping nftables iptables tcpdump iperf3 socat bc procps
  containernetworking-plugins
  bird2 frr gobgpd
  build-essential pkg-config
  openssl util-linux
)

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/setup.sh: run as root (tabby's tests create network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# FRR's package starts its daemons; tests run their own inside namespaces.
systemctl disable --now frr >/dev/null 2>&1 || true

if ! command -v cargo >/dev/null 2>&1; then
  echo "tests/setup.sh: no Rust toolchain (cargo) on PATH" >&2
  exit 1
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
# The CNI plugin ships statically linked against musl (cni-plugin/bench.sh).
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl

# `tabbyctl lab up --kubernetes` runs the upstream control plane, built from
# the Go modules pinned in tests/k8s/go.mod (skipped when up to date).
# The Go toolchain of these machines lives in /usr/local/go; a CI shell may
# not have it on PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "tests/setup.sh: no Go toolchain (go) on PATH: needed for tests/k8s/build.sh" >&2
  exit 1
fi
bash "$(dirname "${BASH_SOURCE[0]}")/k8s/build.sh"
