#!/bin/bash
# The test command (README, and .ci/run): installs the peers the tests need (idempotent), checks
# formatting and lints, then runs every test of the workspace against real peers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$(date +%s)
bash scripts/install-peers.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
mkdir -p target
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
echo "scripts/test.sh: $(( $(date +%s) - t0 )) s"
exit "$status"
