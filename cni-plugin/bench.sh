#!/usr/bin/env bash
# Builds the plugin as it ships (statically linked against musl: it runs on
# the host, whose libc is not ours to choose, and it starts in ~0.3 ms where
# a static glibc binary takes ~1 ms, most of it glibc's start-up CPUID probing,
# which traps in a VM) and runs the CNI benchmark against ptp + host-local.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
target=x86_64-unknown-linux-musl
cargo build --release -p tabby-cni --bin tabby --target "$target"
cargo bench -p tabby-cni --bench cni -- --tabby "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/tabby" "$@"
