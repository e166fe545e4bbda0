#!/usr/bin/env bash
# The test command: set up the machine, check formatting and lints, build,
# and run every test (unit, kernel, interop). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Some tests run binaries of other packages (the agent tests run `tabby`).
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"
