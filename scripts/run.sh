#!/usr/bin/env bash
# Runs the rootnroll platform on this machine, as root on Debian: installs what it needs,
# builds rnr and (once) the default Debian image, creates an API key on first start, then
# serves on http://localhost:8080 (RNR_LISTEN=ADDR:PORT and RNR_DATA_DIR=DIR change them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

DATA_DIR=${RNR_DATA_DIR:-/var/lib/rnr}
LISTEN=${RNR_LISTEN:-127.0.0.1:8080}
export RNR_DATA_DIR=$DATA_DIR RNR_LISTEN=$LISTEN

echo "==> building rnr (release)" >&2
cargo build --release --locked -p rnr
RNR=target/release/rnr
RNR_AGENT_PATH=$(./scripts/build-agent.sh release)
export RNR_AGENT_PATH

echo "==> default image (built once)" >&2
$RNR image build debian --if-missing

if [ ! -s "$DATA_DIR/admin.key" ]; then
  umask 077
  $RNR apikey create admin > "$DATA_DIR/admin.key"
fi
echo "==> API key in $DATA_DIR/admin.key" >&2
port=${LISTEN##*:}
echo "==> rootnroll at http://localhost:$port" >&2
echo "    an exercise:  http://localhost:$port/exercises/hello-lama   (all: /exercises)" >&2
echo "    operators:    http://localhost:$port/operator   (sign in with the key in $DATA_DIR/admin.key)" >&2
echo "    API:          RNR_API_KEY=\$(cat $DATA_DIR/admin.key) $RNR machine create" >&2
# The starter exercises of this clone, unless told otherwise.
export RNR_CHECKER__EXERCISES_DIR=${RNR_CHECKER__EXERCISES_DIR:-$PWD/exercises}
exec $RNR serve
