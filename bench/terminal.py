#!/usr/bin/env python3
"""Web terminal benchmark: rnr's gateway against ttyd, same host, same client, same workload.

The client is Python `websockets` over loopback (pip install websockets). Measured for each
server: MB/s of a 50 MB `cat` (client with and without permessage-deflate; the median of
--runs runs), keystroke echo latency p50/p99 (rounds of 1,000 keystrokes after 100
uncounted; the median over --runs rounds of each round's p50 and p99, and the worst p99)
with 1 and with 200 open terminals, server memory per open idle terminal, and server memory
growth while a client stops reading for 4 s during `yes`. (Medians: on a 2-core VM one
round's p99 is often set by a single hypervisor hiccup, for either server.)

  rnr:  python3 bench/terminal.py rnr  --url http://127.0.0.1:8080 --key KEY [--machine M]
  ttyd: python3 bench/terminal.py ttyd --url http://127.0.0.1:7681 --pid PID

rnr must run with [terminal] max_per_machine >= 220 (RNR_TERMINAL__MAX_PER_MACHINE=220); its
machine needs pids >= 1024. ttyd must be writable (-W) and is not built by this project: use
a ttyd binary you have (e.g. built from its public source in /tmp, never committed here).
Prints one JSON object.
"""

import argparse
import asyncio
import json
import statistics
import time
import urllib.request

import websockets

MARK = b"done-4"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RnrTerm:
    """One rnr terminal: binary frames are terminal bytes, text frames JSON control."""

    def __init__(self, ws_url, compression):
        self.ws_url = ws_url
        self.compression = compression

    async def open(self, max_queue=16):
        self.ws = await websockets.connect(
            self.ws_url, compression=self.compression, max_size=None,
            max_queue=max_queue, open_timeout=60)
        while True:
            m = await self.ws.recv()
            if isinstance(m, str) and json.loads(m).get("t") == "hello":
                return self

    async def send(self, data: bytes):
        await self.ws.send(data)

    async def recv(self):
        while True:
            m = await self.ws.recv()
            if isinstance(m, bytes):
                return m


class TtydTerm:
    """One ttyd terminal: its binary frames carry a one-byte command ('0' = output/input)."""

    def __init__(self, ws_url, compression):
        self.ws_url = ws_url
        self.compression = compression

    async def open(self, max_queue=16):
        self.ws = await websockets.connect(
            self.ws_url, subprotocols=["tty"], compression=self.compression,
            max_size=None, max_queue=max_queue, open_timeout=60)
        await self.ws.send(json.dumps({"AuthToken": "", "columns": 80, "rows": 24}).encode())
        return self

    async def send(self, data: bytes):
        await self.ws.send(b"0" + data)

    async def recv(self):
        while True:
            m = await self.ws.recv()
            if isinstance(m, bytes) and m[:1] == b"0":
                return m[1:]


async def wait_for(term, needle: bytes, timeout=120):
    tail = b""
    total = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {needle!r}; tail {tail[-200:]!r}")
        d = await asyncio.wait_for(term.recv(), left)
        total += len(d)
        tail = (tail + d)[-4096:]
        if needle in tail:
            return total


async def settle(term):
    """Lets the prompt (and busybox's cursor query) pass, answering it like a terminal."""
    await term.send(b"\x1b[1;1R")
    await asyncio.sleep(0.5)
    try:
        while True:
            await asyncio.wait_for(term.recv(), 0.2)
    except asyncio.TimeoutError:
        pass


async def throughput(make, compression):
    t = await make(compression).open()
    await settle(t)
    await t.send(b"test -f /tmp/big50 || yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy"
                 b" | head -c 50000000 > /tmp/big50; echo made-$((1+1))\r")
    await wait_for(t, b"made-2")
    await settle(t)
    start = time.monotonic()
    await t.send(b"cat /tmp/big50; echo done-$((2+2))\r")
    got = await wait_for(t, MARK, timeout=600)
    secs = time.monotonic() - start
    await t.ws.close()
    return round(got / secs / 1e6, 1)


async def echo_rounds(t, runs):
    """[median p50, median p99, worst p99] over `runs` rounds of echo_latency."""
    rounds = [await echo_latency(t, warmup=100 if i == 0 else 20) for i in range(runs)]
    return [statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds),
            max(r[1] for r in rounds)]


async def echo_latency(t, n=1000, warmup=100):
    """Round trips of one keystroke to its echo: 'a' echoes as "a", DEL as a backspace.
    Output that is not the awaited echo (a late prompt, a stray redraw) is read past, so a
    sample is always the time to the key's own echo. The first `warmup` keystrokes are not
    counted (both servers, and the client, settle into their steady state first)."""
    samples = []
    for i in range(warmup + n):
        key, echo = (b"a", b"a") if i % 2 == 0 else (b"\x7f", b"\x08")
        start = time.perf_counter_ns()
        await t.send(key)
        got = b""
        while echo not in got:
            got += await t.recv()
        if i >= warmup:
            samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return round(samples[len(samples) // 2]), round(samples[int(len(samples) * 0.99) - 1])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server", choices=["rnr", "ttyd"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--machine")
    ap.add_argument("--pid", type=int, help="server pid for memory figures")
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5, help="cat runs and echo rounds (medians)")
    a = ap.parse_args()

    if a.server == "rnr":
        def api(method, path, body=None):
            req = urllib.request.Request(
                a.url + path, method=method, data=json.dumps(body or {}).encode(),
                headers={"Authorization": f"Bearer {a.key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"null")

        machine = a.machine or api("POST", "/api/v1/machines", {
            "ttl_seconds": 3600, "limits": {"pids": 2048, "memory_mib": 2048}})["id"]

        def make(compression):
            t = api("POST", f"/api/v1/machines/{machine}/terminals")
            return RnrTerm(t["ws_url"], compression)
        pid = a.pid
    else:
        ws = a.url.replace("http://", "ws://") + "/ws"

        def make(compression):
            return TtydTerm(ws, compression)
        pid = a.pid

    out = {"server": a.server}
    out["cat_50mb_mb_s"] = statistics.median(
        [await throughput(make, None) for _ in range(a.runs)])
    out["cat_50mb_mb_s_deflate_offered"] = statistics.median(
        [await throughput(make, "deflate") for _ in range(a.runs)])

    one = await make(None).open()
    await settle(one)
    out["echo_us_1_terminal"] = await echo_rounds(one, a.runs)

    base = rss_kb(pid) if pid else None
    others = []
    for _ in range(a.terminals - 1):
        t = await make("deflate").open()
        others.append(t)
    await asyncio.sleep(3)
    await settle(one)
    out[f"echo_us_{a.terminals}_terminals"] = await echo_rounds(one, a.runs)
    if pid and others:
        out["server_kb_per_terminal"] = round((rss_kb(pid) - base) / len(others), 1)
    for t in others:
        await t.ws.close()
    await one.ws.close()

    # A client that stops reading: its server must hold only a small bounded buffer.
    stall = await make(None).open(max_queue=1)
    await settle(stall)
    await stall.send(b"yes\r")
    for _ in range(50):
        await stall.recv()
    before = rss_kb(pid) if pid else 0
    peak = before
    for _ in range(40):
        await asyncio.sleep(0.1)
        if pid:
            peak = max(peak, rss_kb(pid))
    if pid:
        out["stalled_4s_growth_kb"] = peak - before
    await stall.send(b"\x03")
    await stall.ws.close()
    if a.server == "rnr" and not a.machine:
        # The machine this run made, with its 200-odd sessions, goes with it.
        api("DELETE", f"/api/v1/machines/{machine}")
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
