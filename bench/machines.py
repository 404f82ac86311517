#!/usr/bin/env python3
"""Machine start benchmark: rnr's API (create -> first successful exec) against bare Docker
(`docker run -d` + `docker exec true`) in the same run, on the same image and network, plus
host memory per idle machine (its memory cgroup's usage + its containerd-shim's PSS, and for
rnr the growth of the rnr process per machine). Prints a Markdown table for BENCHMARKS.md.

Usage (as root, dockerd running, rnr built):
    python3 bench/machines.py [--n 100] [--idle 50] [--image tiny] [--rnr target/release/rnr]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

NETWORK = "rnr-bench"


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def shim_pids():
    """containerd-shim pid for each container id."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and b"-id" in argv:
            out[argv[argv.index(b"-id") + 1].decode()] = int(pid)
    return out


def full_ids(names_or_ids):
    out = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", *names_or_ids],
                         capture_output=True, text=True, check=True).stdout.split()
    return out


def machine_memory_kb(container_ids):
    """Per machine: its cgroup's charged memory (processes, page cache, kernel objects
    charged to it) plus the PSS of its containerd-shim on the host."""
    shims = shim_pids()
    total = 0
    for cid in container_ids:
        try:
            with open(f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes") as f:
                total += int(f.read()) // 1024
        except OSError:
            pass
        total += pss_kb(shims.get(cid, 0))
    return total / max(1, len(container_ids))


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Api:
    def __init__(self, url, key):
        self.url, self.key = url, key

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}")


def start_rnr(rnr, data_dir, image):
    key = subprocess.run([rnr, "apikey", "create", "bench", "--data-dir", data_dir],
                         check=True, capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, RNR_DRIVER="docker", RNR_DOCKER__NETWORK=NETWORK, RNR_DEFAULT_IMAGE=image,
               RNR_CAPACITY="5000", RNR_LOG="warn,rnr=info")
    proc = subprocess.Popen([rnr, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
                            env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "rnr listening on " in line:
            url = line.split("rnr listening on ")[1].strip()
            break
    else:
        raise SystemExit("rnr serve did not start")
    # Keep draining its log so it never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, Api(url, key)


def bench_rnr(api, n, image):
    times, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        m = api.call("POST", "/api/v1/machines", {"image": image})
        out = api.call("POST", f"/api/v1/machines/{m['id']}/exec", {"argv": ["true"]})
        times.append((time.perf_counter() - t0) * 1000)
        assert out["exit_code"] == 0, out
        ids.append(m["id"])
    return times, ids


def docker_run(image):
    return subprocess.run(
        ["docker", "run", "-d", "--network", NETWORK, "--memory", "256m", "--pids-limit", "256",
         "--label", "io.rootnroll.bench=1", f"rnr/{image}:latest",
         "/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"],
        check=True, capture_output=True, text=True).stdout.strip()


def bench_docker(n, image):
    times, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        cid = docker_run(image)
        subprocess.run(["docker", "exec", cid, "true"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append(cid)
    return times, ids


def docker_rm(ids):
    for i in range(0, len(ids), 50):
        subprocess.run(["docker", "rm", "-f", *ids[i:i + 50]], capture_output=True)


def settle():
    subprocess.run(["sync"])
    time.sleep(3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--image", default="tiny")
    ap.add_argument("--rnr", default="target/release/rnr")
    a = ap.parse_args()
    data_dir = tempfile.mkdtemp(prefix="rnr-bench-")
    proc, api = start_rnr(a.rnr, data_dir, a.image)
    try:
        # Warm both paths once so image layers and the network exist.
        _, w = bench_rnr(api, 2, a.image)
        for i in w:
            api.call("DELETE", f"/api/v1/machines/{i}")
        _, w = bench_docker(2, a.image)
        docker_rm(w)

        rows = []
        # Interleave the two in rounds so drift on the machine hits both alike.
        rnr_t, dock_t, rnr_ids, dock_ids = [], [], [], []
        rounds = 4
        for _ in range(rounds):
            t, ids = bench_rnr(api, a.n // rounds, a.image)
            rnr_t += t
            rnr_ids += ids
            t, ids = bench_docker(a.n // rounds, a.image)
            dock_t += t
            dock_ids += ids
        for i in rnr_ids:
            api.call("DELETE", f"/api/v1/machines/{i}")
        docker_rm(dock_ids)

        # Host memory per idle machine: each machine's memory cgroup usage plus its shim's
        # PSS (whole-host MemAvailable is too noisy on a shared machine), and for rnr also
        # the growth of the rnr process itself, divided by the number of machines.
        settle()
        rss_before = pss_kb(proc.pid)
        _, ids = bench_rnr(api, a.idle, a.image)
        settle()
        rnr_mem = machine_memory_kb(full_ids([f"rnr-{i}" for i in ids]))
        rnr_mem += max(0, pss_kb(proc.pid) - rss_before) / a.idle
        for i in ids:
            api.call("DELETE", f"/api/v1/machines/{i}")
        _, ids = bench_docker(a.idle, a.image)
        settle()
        dock_mem = machine_memory_kb(full_ids(ids))
        docker_rm(ids)

        r50, r90 = statistics.median(rnr_t), pct(rnr_t, 90)
        d50, d90 = statistics.median(dock_t), pct(dock_t, 90)
        print(f"\nimage={a.image} n={a.n} idle={a.idle} (create -> first successful exec, ms)\n")
        print("| variant | p50 ms | p90 ms | host MB per idle machine |")
        print("|---|---|---|---|")
        print(f"| rnr API, docker driver | {r50:.1f} | {r90:.1f} | {rnr_mem / 1024:.2f} |")
        print(f"| bare docker run -d + docker exec true | {d50:.1f} | {d90:.1f} | {dock_mem / 1024:.2f} |")
        print(f"| ratio rnr / docker | {r50 / d50:.2f} | {r90 / d90:.2f} | {rnr_mem / dock_mem:.2f} |")
    finally:
        try:
            for m in api.call("GET", "/api/v1/machines")["machines"]:
                api.call("DELETE", f"/api/v1/machines/{m['id']}")
        except Exception as e:  # the report above matters more than a failed cleanup
            print(f"cleanup: {e}", file=sys.stderr)
        proc.terminate()
        proc.wait()
        out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.rootnroll.bench=1"],
                             capture_output=True, text=True).stdout.split()
        docker_rm(out)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
