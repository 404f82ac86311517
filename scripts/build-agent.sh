#!/usr/bin/env bash
# Builds the in-machine agent as a static binary (it must run on images without a libc) and
# prints its path. Usage: scripts/build-agent.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
target=x86_64-unknown-linux-gnu
flags=(-p rnr-agent --target "$target" --target-dir target/agent --locked)
[ "$profile" = release ] && flags+=(--release)
# crt-static applies to the agent only: with --target, RUSTFLAGS skip build scripts and
# proc macros, which cannot be static. Not position-independent: a static-pie relocates its
# own .data.rel.ro at start, a private copy in every process; a fixed-address binary keeps
# those pages shared by every machine (on the native driver the agent is each one's PID 1).
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build -q "${flags[@]}" >&2
bin="$PWD/target/agent/$target/$profile/rnr-agent"
kind=$({ file "$bin"; ldd "$bin"; } 2>&1 || true)
[[ "$kind" =~ static(ally|-pie)\ linked|not\ a\ dynamic ]] || {
  echo "agent at $bin is not statically linked" >&2; exit 1; }
echo "$bin"
