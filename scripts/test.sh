#!/usr/bin/env bash
# Runs every test of rootnroll against real parts (Docker Engine, SQLite, …), as root on
# Debian. Installs and starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> building the in-machine agent" >&2
RNR_AGENT_PATH=$(./scripts/build-agent.sh release)
export RNR_AGENT_PATH

echo "==> cargo test --workspace" >&2
# Integration tests each start their own platform and machines; two at a time suit 2 cores.
cargo test --workspace --locked -- --test-threads="${RNR_TEST_THREADS:-4}"

# The API integration tests again on the native (crun) driver; the pass above used docker.
echo "==> cargo test -p rnr --test api (native driver)" >&2
RNR_TEST_DRIVER=native cargo test -p rnr --locked --test api -- --test-threads="${RNR_TEST_THREADS:-4}"
