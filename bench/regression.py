#!/usr/bin/env python3
"""Before/after benchmark of two rnr builds in ONE run on one host, for a change that must
not regress: native create -> exec (bench/native.py), ten declarative checks against
pytest-testinfra (bench/checks.py), and the web terminal against ttyd (bench/terminal.py).
Every measurement alternates the builds (before, after, before, after, ...) so that the
host's drift hits both alike; the peers are measured in the same run.

    sudo python3 bench/regression.py --before DIR --after DIR --ttyd /tmp/ttyd/build/ttyd

DIR is a checkout with `cargo build --release -p rnr` and `scripts/build-agent.sh release`
done. The ttyd binary is one you built yourself (this project never builds it); it serves
busybox `sh`, the tiny machine's shell. Needs dockerd, busybox, the debian image (`rnr image
build debian`), python3 `websockets`, and pytest-testinfra in /tmp/rnr-bench-venv (see
bench/checks.py). Bounded and self-cleaning:
the benches it runs remove their machines, servers and bridges, also on failure. Prints
every raw result and a summary of medians.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import native  # noqa: E402  (the Server class that starts and sweeps a native rnr)


def agent_of(d):
    return os.path.join(d, "target/agent/x86_64-unknown-linux-gnu/release/rnr-agent")


def rnr_of(d):
    return os.path.join(d, "target/release/rnr")


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        sys.stdout.write(out.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return out.stdout


def native_p50(d, n):
    out = run([sys.executable, os.path.join(HERE, "native.py"), "--rnr", rnr_of(d),
               "--agent", agent_of(d), "--variants", "native", "--n", str(n), "--idle", ""])
    r = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    return r["p50_ms"]


def checks_p50(d, runs):
    out = run([sys.executable, os.path.join(HERE, "checks.py"), "--rnr", rnr_of(d),
               "--agent", agent_of(d), "--runs", str(runs), "--rounds", "2"])
    row = lambda name: float(re.search(re.escape(name) + r"[^|]*\| ([0-9.]+) \|", out).group(1))
    return row("rnr checker, engine"), row("pytest-testinfra, docker backend: pytest session")


def terminal(d, runs, ttyd_url, ttyd_pid):
    s = native.Server(rnr_of(d), "native", 300, agent_of(d))
    s.env["RNR_TERMINAL__MAX_PER_MACHINE"] = "220"
    try:
        s.start()
        ours = json.loads(run([sys.executable, os.path.join(HERE, "terminal.py"), "rnr",
                               "--url", s.url, "--key", s.key, "--pid", str(s.proc.pid),
                               "--runs", str(runs)]).strip().splitlines()[-1])
    finally:
        s.stop()
    peer = json.loads(run([sys.executable, os.path.join(HERE, "terminal.py"), "ttyd",
                           "--url", ttyd_url, "--pid", str(ttyd_pid),
                           "--runs", str(runs)]).strip().splitlines()[-1])
    return ours, peer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--ttyd", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=100, help="native starts per round")
    ap.add_argument("--check-runs", type=int, default=20)
    ap.add_argument("--term-runs", type=int, default=3)
    ap.add_argument("--parts", default="native,checks,terminal",
                    help="comma-separated subset of native,checks,terminal")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    builds = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    res = {k: {"native": [], "checks": [], "testinfra": [], "term": [], "ttyd": []} for k in builds}
    # busybox sh, the shell of rnr's tiny machine: dash would take terminal.py's answer to
    # busybox's cursor query as typed text and fail the commands that follow it.
    ttyd = subprocess.Popen([a.ttyd, "-W", "-p", "7681", "-i", "lo", "busybox", "sh"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        for r in range(a.rounds):
            for k, d in builds.items():
                if "native" not in parts:
                    break
                print(f"== round {r + 1}, {k}: native", flush=True)
                res[k]["native"].append(native_p50(d, a.n))
            for k, d in builds.items():
                if "checks" not in parts:
                    break
                print(f"== round {r + 1}, {k}: checks", flush=True)
                ours, ti = checks_p50(d, a.check_runs)
                res[k]["checks"].append(ours)
                res[k]["testinfra"].append(ti)
            for k, d in builds.items():
                if "terminal" not in parts:
                    break
                print(f"== round {r + 1}, {k}: terminal", flush=True)
                ours, peer = terminal(d, a.term_runs, "http://127.0.0.1:7681", ttyd.pid)
                res[k]["term"].append(ours)
                res[k]["ttyd"].append(peer)
    finally:
        ttyd.terminate()
        ttyd.wait()
    print(json.dumps(res))
    med = statistics.median
    print("\n| build | native create→exec p50 ms | 10 checks p50 ms (testinfra's) | "
          "50 MB cat MB/s (ttyd's) | echo p99 µs, 200 terminals (ttyd's) |")
    print("|---|---|---|---|---|")
    med_or = lambda xs: med(xs) if xs else float("nan")
    for k in builds:
        r = res[k]
        if "terminal" not in parts:
            print(f"| {k} | {med_or(r['native']):.1f} | {med_or(r['checks']):.1f} "
                  f"({med_or(r['testinfra']):.0f}) | not run | not run |")
            continue
        t = lambda f, src="term": med([f(x) for x in r[src]])
        cat = lambda x: x["cat_50mb_mb_s"]
        # echo_us_*: [median p50, median p99, worst p99] of the rounds.
        p99 = lambda x: x["echo_us_200_terminals"][1]
        print(f"| {k} | {med(r['native']):.1f} | {med(r['checks']):.1f} ({med(r['testinfra']):.0f}) | "
              f"{t(cat):.1f} ({t(cat, 'ttyd'):.1f}) | {t(p99):.0f} ({t(p99, 'ttyd'):.0f}) |")


if __name__ == "__main__":
    main()
