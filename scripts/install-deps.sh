#!/usr/bin/env bash
# Installs and starts everything rootnroll needs on a Debian (bookworm) machine, as root.
# Idempotent: safe to run again; does nothing that is already done.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

pkgs=(docker.io debootstrap busybox-static crun runc iptables iproute2 sqlite3 ca-certificates
      # mkfs.btrfs: the native driver's per-machine disk quotas (a loop-mounted btrfs pool).
      btrfs-progs
      python3-pytest python3-requests
      curl python3 gcc libc6-dev pkg-config
      # Chromium runs the browser tests.
      chromium fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The web terminal: node/npm bundle xterm.js at build time (crates/gateway/build.rs). A
# node that is already there (e.g. NodeSource's, which carries its own npm) is used as is:
# Debian's npm package conflicts with it.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# dockerd: use a running engine, else start Debian's.
if ! docker version >/dev/null 2>&1; then
  log "starting dockerd"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
  else
    mkdir -p /var/log
    nohup dockerd >/var/log/rnr-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/rnr-dockerd.log" >&2; exit 1; }
fi
