#!/usr/bin/env bash
# The whole test suite: lints, then every crate's tests (unit, property, integration; the
# root-only ones included when running as root), then the chaos suite's quick run.
# On CI (CI=true), tests that need root and cannot run fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/install-deps.sh

echo "--- fmt"; cargo fmt --all -- --check
echo "--- clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "--- build"; cargo build --workspace --all-targets --locked
echo "--- tests"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile" --no-fail-fast
