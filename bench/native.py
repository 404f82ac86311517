#!/usr/bin/env python3
"""Machine start benchmark: the native driver, the Docker driver and bare `docker run`, in
one run on one host.

For each variant: create -> shell ready (an exec of `true` succeeds) p50/p90 over N
sequential starts; machines started per second, sequential and 4 in parallel; host memory
per idle machine with K machines up (K = 1000 and 2000 by default; Docker only up to
--docker-idle). The two drivers are driven through `rnr serve`'s REST API (what an LMS
sees); bare Docker through the docker CLI, as MEASUREMENTS.md measured it.

Bounded and self-cleaning: every machine is deleted, the servers stopped, and the native
driver's bridge, iptables chains and cgroups removed, also on Ctrl-C or failure.

    sudo python3 bench/native.py --rnr target/release/rnr [--n 200] [--idle 1000,2000]
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BRIDGE = "rnb0"
SUBNET = "10.232.0.0/16"
NETWORK = "rnr-bench"
IMAGE = "tiny"


def mem_used_kib():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0])
    return info["MemTotal"] - info["MemAvailable"]


def settle_mem():
    """Used memory after letting deferred frees (RCU, workqueues) finish."""
    subprocess.run(["sync"], check=False)
    time.sleep(3)
    return mem_used_kib()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Api:
    """One keep-alive connection to `rnr serve`."""

    def __init__(self, url, key):
        host, port = url.replace("http://", "").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.key = key

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        text = r.read()
        return r.status, (json.loads(text) if text else None)


class Server:
    def __init__(self, rnr, driver, capacity, agent):
        self.rnr = rnr
        self.driver = driver
        self.dir = tempfile.mkdtemp(prefix=f"rnr-bench-{driver}-")
        # Root in a user-namespaced machine is an unprivileged host uid: it must be able
        # to traverse to its rootfs.
        os.chmod(self.dir, 0o711)
        self.env = dict(os.environ)
        self.env.update({
            "RNR_DRIVER": driver,
            "RNR_DATA_DIR": self.dir,
            "RNR_NATIVE__BRIDGE": BRIDGE,
            "RNR_NATIVE__SUBNET": SUBNET,
            "RNR_DOCKER__NETWORK": NETWORK,
            "RNR_DEFAULT_IMAGE": IMAGE,
            "RNR_CAPACITY": str(capacity),
            "RNR_LOG": "warn,rnr=info",
        })
        # The platform as run.sh runs it: with the in-machine agent (on the native driver
        # it is PID 1 and starts every exec).
        self.env["RNR_AGENT_PATH"] = agent
        self.proc = None
        self.ids = []
        self.failed_execs = []

    def run(self, *args):
        return subprocess.run([self.rnr, *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def start(self):
        self.run("image", "build", "tiny", "--name", IMAGE)
        self.key = self.run("apikey", "create", "bench").strip()
        self.proc = subprocess.Popen([self.rnr, "serve", "--listen", "127.0.0.1:0"],
                                     env=self.env, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            m = re.search(r"rnr listening on (\S+)", line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.owner = "rnr-" + subprocess.run(
            ["sqlite3", os.path.join(self.dir, "rnr.db"),
             "SELECT value FROM meta WHERE key = 'instance_id'"],
            capture_output=True, text=True).stdout.strip()

    def api(self):
        return Api(self.url, self.key)

    def start_one(self, api):
        """create -> shell ready; returns seconds."""
        t0 = time.perf_counter()
        st, m = api.call("POST", "/api/v1/machines", {"ttl_seconds": 3600})
        assert st == 201, (st, m)
        for attempt in range(3):
            st, out = api.call("POST", f"/api/v1/machines/{m['id']}/exec", {"argv": ["true"]})
            if st == 200 and out["exit_code"] == 0:
                break
            # Counted and reported: a failed first exec is a defect, not noise.
            self.failed_execs.append(out)
            print(f"  exec failed (attempt {attempt + 1}): {out}", file=sys.stderr, flush=True)
        assert st == 200 and out["exit_code"] == 0, (st, out)
        dt = time.perf_counter() - t0
        self.ids.append(m["id"])
        return dt

    def delete_all(self):
        api = self.api()
        for i in self.ids:
            api.call("DELETE", f"/api/v1/machines/{i}")
        self.ids = []

    def stop(self):
        if self.proc:
            try:
                self.delete_all()
            except Exception as e:  # the server may be gone; the sweep below still runs
                print(f"delete via API failed: {e}", file=sys.stderr)
            if self.driver == "native":
                # Deletes finish in the background: wait for them before stopping.
                machines = os.path.join(self.dir, "native", "run", "machines")
                deadline = time.time() + 120
                while os.path.isdir(machines) and os.listdir(machines) and time.time() < deadline:
                    time.sleep(0.2)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None
        if self.driver == "native":
            native_sweep(os.path.join(self.dir, "native"), getattr(self, "owner", None))
        else:
            out = subprocess.run(["docker", "ps", "-aq", "--filter",
                                  f"label=io.rootnroll.owner={getattr(self, 'owner', '-')}"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                subprocess.run(["docker", "rm", "-f", *out], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def native_sweep(state_dir, owner):
    """Removes what the native driver leaves on the host by design (machines outlive the
    server): leftover machines, the bridge, its iptables chains and cgroups."""
    # Leftover machines of this server's owner only: kill every process in its cgroups.
    pids_dir = f"/sys/fs/cgroup/pids/rnr-{owner}" if owner else None
    if pids_dir and os.path.isdir(pids_dir):
        for root, _, files in os.walk(pids_dir):
            if "cgroup.procs" in files:
                for pid in open(os.path.join(root, "cgroup.procs")).read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        time.sleep(1)
    ipt = lambda *a: subprocess.run(["iptables", "-w", *a], capture_output=True).returncode == 0
    fwd, inp, nat = f"RNRF-{BRIDGE}", f"RNRI-{BRIDGE}", f"RNRN-{BRIDGE}"
    every = BRIDGE + "+"
    for table, chain, rule in [("filter", "FORWARD", ["-o", every, "-j", fwd]),
                               ("filter", "FORWARD", ["-i", every, "-j", fwd]),
                               ("filter", "INPUT", ["-i", every, "-j", inp]),
                               ("nat", "POSTROUTING", ["-s", SUBNET, "-j", nat])]:
        while ipt("-t", table, "-D", chain, *rule):
            pass
    for table, chain in [("filter", fwd), ("filter", inp), ("nat", nat)]:
        ipt("-t", table, "-F", chain)
        ipt("-t", table, "-X", chain)
    # One bridge per /22 segment: BRIDGE, BRIDGE-1, BRIDGE-2, ...
    for dev in os.listdir("/sys/class/net"):
        if dev == BRIDGE or dev.startswith(BRIDGE + "-"):
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
    # The btrfs pool of the machines' disks (its loop device detaches itself) and the
    # tmpfs of their transient state.
    for mnt in ("disks", "run"):
        path = os.path.join(state_dir, mnt)
        if os.path.ismount(path):
            subprocess.run(["umount", path], capture_output=True)
    for ctl in os.listdir("/sys/fs/cgroup"):
        base = os.path.join("/sys/fs/cgroup", ctl)
        for d in (os.listdir(base) if os.path.isdir(base) else []):
            if owner and d == f"rnr-{owner}":
                for root, dirs, _ in sorted(os.walk(os.path.join(base, d)), reverse=True):
                    try:
                        os.rmdir(root)
                    except OSError:
                        pass


class BareDocker:
    driver = "docker run"

    def __init__(self):
        self.ids = []
        self.failed_execs = []

    def start(self):
        pass

    def api(self):
        return None

    def start_one(self, _api):
        t0 = time.perf_counter()
        cid = subprocess.run(["docker", "run", "-d", "--label", "rnr-bench=1", "rnr/tiny",
                              "sleep", "86400"], check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run(["docker", "exec", cid, "true"], check=True)
        dt = time.perf_counter() - t0
        self.ids.append(cid)
        return dt

    def delete_all(self):
        for i in range(0, len(self.ids), 100):
            subprocess.run(["docker", "rm", "-f", *self.ids[i:i + 100]], capture_output=True)
        self.ids = []

    def stop(self):
        self.delete_all()


def bench(v, n, idle_counts, parallel=4):
    res = {"variant": v.driver}
    api = v.api()
    lat = [v.start_one(api) for _ in range(n)]
    res["p50_ms"] = statistics.median(lat) * 1000
    res["p90_ms"] = pct(lat, 90) * 1000
    res["seq_per_s"] = n / sum(lat)
    v.delete_all()
    # 4 in parallel, n machines in all.
    per = n // parallel
    t0 = time.perf_counter()

    def worker():
        a = v.api()
        for _ in range(per):
            v.start_one(a)

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["par4_per_s"] = per * parallel / (time.perf_counter() - t0)
    v.delete_all()
    # Idle machines: memory per machine at each count.
    base = settle_mem()
    started = 0
    for k in idle_counts:
        while started < k:
            v.start_one(api)
            started += 1
        used = settle_mem()
        res[f"kib_per_idle_at_{k}"] = (used - base) / k
        print(f"  {v.driver}: {k} idle machines, {(used - base) / k:.0f} KiB each", flush=True)
    v.delete_all()
    res["failed_first_execs"] = len(v.failed_execs)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rnr", default="target/release/rnr")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--idle", default="1000,2000")
    ap.add_argument("--docker-idle", default="1000")
    ap.add_argument("--variants", default="native,docker,docker-run")
    ap.add_argument("--agent", default="",
                    help="rnr-agent binary (default: built with scripts/build-agent.sh)")
    args = ap.parse_args()
    agent = args.agent or subprocess.run(
        [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "build-agent.sh")],
        check=True, capture_output=True, text=True).stdout.strip()
    idle = [int(x) for x in args.idle.split(",") if x]
    didle = [int(x) for x in args.docker_idle.split(",") if x]
    cap = max(idle + didle + [args.n]) + 10
    results = []
    for name in args.variants.split(","):
        v = {"native": lambda: Server(args.rnr, "native", cap, agent),
             "docker": lambda: Server(args.rnr, "docker", cap, agent),
             "docker-run": BareDocker}[name]()
        try:
            v.start()
            print(f"== {name}", flush=True)
            r = bench(v, args.n, idle if name == "native" else didle)
            print(json.dumps(r), flush=True)
            results.append(r)
        finally:
            v.stop()
    print("\n| variant | p50 ms | p90 ms | starts/s seq | starts/s 4 parallel | "
          + " | ".join(f"KiB/idle @{k}" for k in sorted(set(idle + didle))) + " |")
    for r in results:
        cells = [f"{r.get(f'kib_per_idle_at_{k}', float('nan')):.0f}" for k in sorted(set(idle + didle))]
        print(f"| {r['variant']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['seq_per_s']:.1f} | "
              f"{r['par4_per_s']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
