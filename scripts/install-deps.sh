#!/usr/bin/env bash
# Installs and starts everything rootnroll needs on a Debian (bookworm) machine, as root.
# Idempotent: safe to run again; does nothing that is already done.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

pkgs=(docker.io debootstrap busybox-static crun runc iptables iproute2 sqlite3 ca-certificates
      # gVisor, which [native] runtime may name (refused by the driver for now, tested so).
      runsc
      # nft: the bridge table pinning each machine to its MAC and address (both drivers).
      nftables
      # mkfs.btrfs: per-machine disk quotas, the native driver's (a loop-mounted btrfs pool)
      # and dockerd's (its data-root on a loop-mounted btrfs).
      btrfs-progs
      # The vm driver: QEMU (microvm), qemu-img (copy-on-write disks), Debian's cloud kernel
      # booted by every VM (installing it only adds files to /boot and /lib/modules), kmod
      # (modprobe orders the initramfs's modules) and mkfs.ext4 (images as disks).
      qemu-system-x86 qemu-utils linux-image-cloud-amd64 kmod e2fsprogs
      python3-pytest python3-requests
      # The fuzz targets (scripts/fuzz.sh): libFuzzer is C++. The API fuzzer (schemathesis)
      # lives in a venv of its own.
      g++ python3-venv
      curl python3 gcc libc6-dev pkg-config
      # The isolation suite's probe: gcc -static (libc.a) with the kernel's system call
      # tables (asm/unistd_{64,32,x32}.h).
      linux-libc-dev
      # Chromium runs the browser tests.
      chromium fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The web terminal: node/npm bundle xterm.js at build time (crates/terminal/build.rs). A
# node that is already there (e.g. NodeSource's, which carries its own npm) is used as is:
# Debian's npm package conflicts with it.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # --no-install-recommends: QEMU's recommendations are a desktop; needrestart (where it is
  # installed) only lists services instead of restarting dockerd under running tests.
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The user QEMU runs as (the vm driver): no login, no home, in group kvm for /dev/kvm.
if ! id rnr-qemu >/dev/null 2>&1; then
  log "adding the system user rnr-qemu (QEMU of the vm driver runs as it)"
  getent group kvm >/dev/null || groupadd --system kvm
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --groups kvm rnr-qemu
fi

# Every machine's terminals draw their ptys from the host's kernel.pty.max, of which
# kernel.pty.reserve (1024) is kept for the host's own /dev/pts: 4096 by default leaves
# 3072 to all machines together. Each machine is capped at its max_ptys (256) on its own
# /dev/pts; room for 250 machines at that cap (never lowered, kept across reboots).
pty_max=65536
if [ "$(cat /proc/sys/kernel/pty/max)" -lt "$pty_max" ]; then
  log "raising kernel.pty.max to $pty_max (machines' terminals share it)"
  echo "$pty_max" >/proc/sys/kernel/pty/max
fi
if [ -d /etc/sysctl.d ] && [ ! -e /etc/sysctl.d/60-rnr-pty.conf ]; then
  printf '# rootnroll: ptys for every machine (each capped by its own /dev/pts max)\nkernel.pty.max = %s\n' \
    "$pty_max" >/etc/sysctl.d/60-rnr-pty.conf
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# The test command checks formatting and lints; a minimal toolchain lacks both tools.
for tool in rustfmt clippy; do
  sub=${tool/rustfmt/fmt}
  if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    log "adding the Rust component $tool"
    rustup component add "$tool"
  fi
done

# The fuzz targets (scripts/fuzz.sh) are built and run by cargo-fuzz, pinned.
cargo_fuzz=0.13.1
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz" ]; then
  log "installing cargo-fuzz $cargo_fuzz"
  cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz"
fi
# schemathesis fuzzes the HTTP API from its OpenAPI document (crates/cli/tests/schemathesis.rs),
# from PyPI into a venv of its own, pinned.
st_venv=/opt/rnr-schemathesis
st_version=4.32.5
if [ "$("$st_venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $st_version" ]; then
  log "installing schemathesis $st_version into $st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$st_version"
fi

# dockerd: use a running engine as it is (an operator's own), else start Debian's on a btrfs
# data-root with the btrfs storage driver: each container's filesystem is then a subvolume
# with a qgroup limit, so `--storage-opt size=` (the Docker driver's docker.disk_mib) caps
# what root in a machine can write. overlay2 on the host's ext4 has no per-container quota.
#
# The btrfs is a sparse image file loop-mounted: only what is written takes host space, and
# `discard` gives back what machines free, so the file shrinks again. It lives in a
# directory of its own, not in rnr's data dir (/var/lib/rnr): the engine is shared by every
# rnr instance on the host (each data dir is one, RNR_DATA_DIR moves it), and an operator
# resetting an instance with `rm -rf /var/lib/rnr` must not descend into the engine's
# mounted data-root. Nor /var/lib/docker, which a distribution's docker.service may use with
# its own storage driver. The mount is not in fstab: after a reboot this script mounts it
# again (loop devices are detached on unmount).
docker_dir=/var/lib/rnr-docker
docker_img=$docker_dir/btrfs.img
docker_root=$docker_dir/data
docker_gib=${RNR_DOCKER_POOL_GIB:-64}
# The per-container limits are btrfs qgroups, which dockerd's btrfs driver enables lazily
# (at the first container with a size) and disables when it stops. A fresh enable leaves the
# qgroups inconsistent until its rescan ends, and while they are, no limit is enforced (seen
# here: a machine wrote 1 GiB past a 256 MiB limit after dockerd restarts); deleting a
# subvolume whose tree is drop_subtree_threshold (3) levels tall also marks them so. Hence
# quotas are enabled before dockerd starts, the threshold is raised to 8 (the most levels
# btrfs has: always account), and inconsistent qgroups are rescanned, on every run. A
# re-enable resets the threshold: it lasts until dockerd stops.
docker_quotas() {
  btrfs quota enable "$docker_root"
  local q
  q=/sys/fs/btrfs/$(findmnt -n -o UUID --mountpoint "$docker_root")/qgroups
  echo 8 >"$q/drop_subtree_threshold"
  # -W waits for a rescan under way (the one a fresh enable starts); -w starts one.
  btrfs quota rescan -W "$docker_root" >/dev/null 2>&1 || true
  if [ "$(cat "$q/inconsistent")" != 0 ]; then
    log "rescanning the qgroups of $docker_root (they were inconsistent: no limit held)"
    btrfs quota rescan -w "$docker_root" >/dev/null
  fi
}
# Root in a machine must not be root on the host: the engine runs every container in a user
# namespace whose ids 0..65535 are the host's $docker_remap_base.. (`--userns-remap`), the
# subordinate ranges of a user of its own, far below the native driver's ranges (from uid
# 1000000000 on) and above any a distribution hands out to people (100000 on). A file a
# machine's root makes is owned by uid $docker_remap_base on the host; the host's root-owned
# files are nobody's to the machine.
docker_remap_user=rnr-dockremap
docker_remap_base=800000000
if ! id "$docker_remap_user" >/dev/null 2>&1; then
  log "adding the system user $docker_remap_user (dockerd maps machines' root to its ids)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    "$docker_remap_user"
fi
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  grep -q "^$docker_remap_user:" "$f" && continue
  # Another user's range over ours would share ids with every machine.
  if awk -F: -v lo="$docker_remap_base" -v hi=$((docker_remap_base + 65536)) \
      '$2 < hi && $2 + $3 > lo { found = 1 } END { exit !found }' "$f"; then
    echo "$f: a range overlaps $docker_remap_base..$((docker_remap_base + 65535)), which" \
      "$docker_remap_user needs; remove it or change docker_remap_base" >&2
    exit 1
  fi
  log "giving $docker_remap_user the ids $docker_remap_base..+65536 in $f"
  echo "$docker_remap_user:$docker_remap_base:65536" >>"$f"
done
# Our engine (data-root $docker_root; remapped, it keeps its store in a subdirectory named
# after the range), as opposed to an operator's own, which is used as it is.
docker_ours() {
  docker info --format '{{.DockerRootDir}}' 2>/dev/null | grep -Eqx "$docker_root(/[0-9]+\.[0-9]+)?"
}
docker_remapped() {
  docker info --format '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=userns'
}
# Our engine started before remapping (an older version of this script): restarted once
# with it. Its containers stop; the remapped engine has an image store of its own (images
# are imported again by whoever uses them). The old store's unused networks go first: their
# bridges would keep address ranges the new engine could otherwise hand out.
if docker version >/dev/null 2>&1 && docker_ours && ! docker_remapped; then
  log "restarting dockerd with user-namespace remapping ($docker_remap_user)"
  docker network prune -f >/dev/null 2>&1 || true
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    echo "dockerd ($pid) did not stop; stop it and run this again" >&2
    exit 1
  fi
  # The old store is read by nothing any more (the remapped engine keeps its own in a
  # subdirectory): its images and stopped containers would only hold the disk.
  log "removing the unremapped engine's store from $docker_root"
  for sub in "$docker_root"/btrfs/subvolumes/*; do
    if [ -d "$sub" ]; then btrfs subvolume delete "$sub" >/dev/null; fi
  done
  rm -rf "${docker_root:?}"/{btrfs,buildkit,containerd,containers,image,network,plugins,runtimes,swarm,tmp,trust,volumes}
fi
if ! docker version >/dev/null 2>&1; then
  mkdir -p "$docker_root"
  if ! mountpoint -q "$docker_root"; then
    if [ ! -s "$docker_img" ]; then
      log "making the engine's btrfs: $docker_img (${docker_gib} GiB sparse)"
      # Made under a temporary name: an interrupted mkfs leaves no half-made image behind.
      rm -f "$docker_img.new"
      truncate -s "${docker_gib}G" "$docker_img.new"
      mkfs.btrfs -q "$docker_img.new" >/dev/null
      mv "$docker_img.new" "$docker_img"
    fi
    log "mounting $docker_img at $docker_root"
    mount -o loop,noatime,discard=async "$docker_img" "$docker_root"
  fi
  fstype=$(findmnt -n -o FSTYPE --target "$docker_root")
  [ "$fstype" = btrfs ] || { echo "$docker_root is $fstype, not btrfs" >&2; exit 1; }
  docker_quotas
  log "starting dockerd (data-root $docker_root, storage driver btrfs, root remapped to $docker_remap_user)"
  mkdir -p /var/log
  # Not systemd's docker.service: it would run with the distribution's data-root and
  # storage driver, and an operator's own configuration of it is not ours to change.
  nohup dockerd --data-root "$docker_root" --storage-driver btrfs \
    --userns-remap "$docker_remap_user" >>/var/log/rnr-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/rnr-dockerd.log" >&2; exit 1; }
fi
if mountpoint -q "$docker_root" && docker_ours; then
  # Our engine (started now or before): its quotas are checked, and repaired, on every run.
  docker_quotas
fi
