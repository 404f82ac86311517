"""rootnroll's pytest plugin: the `s` fixture of the original checker (Zoe), so its test
files run unmodified. `s.run(cmd)` runs a shell command as root in the machine and returns
Fabric-style results (`.succeeded`, `.failed`, `.return_code`, `.stdout`, `.stderr`);
`s.ip` is the machine's address. Each test's outcome and assertion message is written as
one JSON line to $RNR_RESULTS for rnr to report."""

import json
import os
import socket

import pytest


class Result(str):
    """What Fabric's run() returned: the output as a string, with flags."""

    def __new__(cls, stdout, stderr, code):
        r = str.__new__(cls, stdout.rstrip("\n"))
        r.stdout = str(r)
        r.stderr = stderr.rstrip("\n")
        r.return_code = code
        r.exit_code = code
        r.succeeded = code == 0
        r.failed = code != 0
        r.ok = code == 0
        return r


class Machine:
    def __init__(self, bridge, ip):
        self._bridge = bridge
        self.ip = ip
        self.host = ip

    def run(self, command, timeout=60, **_ignored):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(self._bridge)
            c.sendall(json.dumps({"command": command, "timeout": timeout}).encode() + b"\n")
            c.shutdown(socket.SHUT_WR)
            data = b"".join(iter(lambda: c.recv(65536), b""))
        r = json.loads(data)
        if "error" in r:
            raise RuntimeError("cannot run %r in the machine: %s" % (command, r["error"]))
        return Result(r["stdout"], r["stderr"], r["exit_code"])

    sudo = run


@pytest.fixture(scope="session")
def s():
    return Machine(os.environ["RNR_BRIDGE"], os.environ.get("RNR_MACHINE_IP", ""))


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    first = text.strip().split("\n")[0]
    assertion = first.startswith("AssertionError")
    if assertion:
        first = first[len("AssertionError"):].lstrip(": ").strip()
    return first, assertion


def pytest_runtest_logreport(report):
    if report.when != "call" and report.outcome == "passed":
        return
    message, assertion = _message(report) if report.outcome != "passed" else ("", False)
    line = {
        "test": report.nodeid.split("::")[-1],
        "when": report.when,
        "outcome": report.outcome,
        "assertion": assertion,
        "message": message,
        "duration_ms": int(report.duration * 1000),
    }
    with open(os.environ["RNR_RESULTS"], "a") as f:
        f.write(json.dumps(line) + "\n")
