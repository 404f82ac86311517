#!/usr/bin/env python3
"""Check-suite benchmark: ten typical declarative checks against one running Debian machine,
rnr's checker (the agent evaluates the whole suite in one exec) next to pytest-testinfra
(docker backend) running the same ten checks against the same container, in the same run,
interleaved in rounds so that drift hits both alike. Prints a Markdown table.

Usage (as root, dockerd running, `cargo build --release -p rnr`, the agent built with
scripts/build-agent.sh, the debian image built with `rnr image build debian`):
    python3 -m venv /tmp/rnr-bench-venv && /tmp/rnr-bench-venv/bin/pip install pytest-testinfra
    python3 bench/checks.py [--runs 50] [--rounds 5] [--rnr target/release/rnr]
        [--agent target/agent/x86_64-unknown-linux-gnu/release/rnr-agent]
        [--testinfra-python /tmp/rnr-bench-venv/bin/python]
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
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORK = "rnr-bench"


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def api(url, key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rnr", default="target/release/rnr")
    ap.add_argument("--agent", default="target/agent/x86_64-unknown-linux-gnu/release/rnr-agent")
    ap.add_argument("--testinfra-python", default="/tmp/rnr-bench-venv/bin/python")
    a = ap.parse_args()
    rnr = os.path.abspath(a.rnr)
    data = tempfile.mkdtemp(prefix="rnr-bench-checks-")
    exercises = os.path.join(data, "exercises")
    shutil.copytree(os.path.join(HERE, "checks"), exercises)
    env = dict(os.environ, RNR_DRIVER="docker", RNR_DOCKER__NETWORK=NETWORK,
               RNR_AGENT_PATH=os.path.abspath(a.agent), RNR_CHECKER__EXERCISES_DIR=exercises,
               RNR_LOG="warn")
    key = subprocess.run([rnr, "apikey", "create", "bench", "--data-dir", data], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen([rnr, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                              env=dict(env, RNR_LOG="info"), stderr=subprocess.PIPE, text=True)
    url = None
    for line in server.stderr:
        if "rnr listening on " in line:
            url = line.split("rnr listening on ")[1].strip()
            break
    machine = None
    try:
        machine = api(url, key, "POST", "/api/v1/machines", {"exercise": "bench10"})["id"]
        container = "rnr-" + machine
        per_round = a.runs // a.rounds
        ours, ours_api, ti_wall, ti_session, docker_true = [], [], [], [], []
        check_cmd = [rnr, "exercise", "check", os.path.join(exercises, "bench10"),
                     "--machine", machine, "--data-dir", data]
        # Warm-up, and proof that both runners see all ten checks pass.
        out = subprocess.run(check_cmd, env=env, capture_output=True, text=True, check=True)
        assert "score 1.00" in out.stdout, out.stdout
        junit = os.path.join(data, "junit.xml")
        ti_cmd = [a.testinfra_python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "--hosts=docker://" + container, "--junitxml", junit,
                  os.path.join(exercises, "test_bench10.py")]
        out = subprocess.run(ti_cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        for _ in range(a.rounds):
            out = subprocess.run(check_cmd + ["--repeat", str(per_round)], env=env,
                                 capture_output=True, text=True, check=True)
            ours += json.loads(out.stdout)["durations_ms"]
            for _ in range(per_round):
                t = time.perf_counter()
                run = api(url, key, "POST", f"/api/v1/machines/{machine}/checks")["id"]
                while True:
                    r = api(url, key, "GET", f"/api/v1/checks/{run}")
                    if r["state"] in ("done", "errored"):
                        break
                    time.sleep(0.002)
                ours_api.append((time.perf_counter() - t) * 1000)
                assert r["score"] == 1.0, r
            for _ in range(per_round):
                t = time.perf_counter()
                out = subprocess.run(ti_cmd, capture_output=True, text=True)
                ti_wall.append((time.perf_counter() - t) * 1000)
                assert out.returncode == 0, out.stdout
                ti_session.append(float(ET.parse(junit).getroot().find("testsuite").get("time")) * 1000)
            for _ in range(per_round):
                t = time.perf_counter()
                subprocess.run(["docker", "exec", container, "true"], check=True)
                docker_true.append((time.perf_counter() - t) * 1000)
        p50 = statistics.median
        rows = [
            ("rnr checker, engine (one agent exec, in-process timing)", ours),
            ("rnr checker via the API (POST → poll until done)", ours_api),
            ("pytest-testinfra, docker backend: pytest session time", ti_session),
            ("pytest-testinfra, docker backend: whole process", ti_wall),
            ("`docker exec <machine> true` (CLI), for scale", docker_true),
        ]
        print(f"| runner ({time.strftime('%Y-%m-%d')}, {len(ours)} runs each) | p50 ms | p90 ms |")
        print("|---|---|---|")
        for name, v in rows:
            print(f"| {name} | {p50(v):.1f} | {pct(v, 90):.1f} |")
        print(f"| ratio testinfra session / rnr engine | **{p50(ti_session) / p50(ours):.1f}×** | |")
        print(f"| ratio testinfra process / rnr API | **{p50(ti_wall) / p50(ours_api):.1f}×** | |")
    finally:
        if machine:
            try:
                api(url, key, "DELETE", f"/api/v1/machines/{machine}")
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print("cleanup:", e, file=sys.stderr)
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
