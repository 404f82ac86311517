"""rootnroll's pytest plugin: the `s` fixture of the original checker (Zoe), so its test
files run unmodified. `s.run(cmd)` runs a shell command as root in the machine and returns
Fabric-style results (`.succeeded`, `.failed`, `.return_code`, `.stdout`, `.stderr`);
`s.ip` is the machine's address; `s.http` (also the `http` fixture) makes HTTP requests
to the machine with timeouts, a cap on the body read and redirects followed only while
they stay on the machine. Each test's outcome and assertion message is reported to rnr.

rnr talks to this plugin over the Unix socket beside it (`bridge.sock`); `run.json`
beside it says where the machine is."""

import json
import os
import socket
import urllib.parse

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_BRIDGE = os.path.join(_HERE, "bridge.sock")

# Connect and read timeouts of HTTP requests that name none; the body read at most.
HTTP_TIMEOUT = (5, 20)
HTTP_MAX_BODY = 4 << 20
HTTP_MAX_REDIRECTS = 5


def _call(request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(_BRIDGE)
        c.sendall(json.dumps(request).encode() + b"\n")
        c.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: c.recv(65536), b""))
    return json.loads(data)


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


class TooLarge(Exception):
    """The machine sent a larger body than `HTTP_MAX_BODY`."""


class Http:
    """HTTP to the machine under test. `get("/path", port=8080)` or a full URL on the
    machine's address; any keyword of `requests.request`. Bodies past the cap raise
    `TooLarge`; a redirect off the machine is returned as it is, not followed."""

    def __init__(self, ip):
        self.ip = ip

    def _url(self, target, port):
        if "://" in target:
            return target
        host = "[%s]" % self.ip if ":" in self.ip else self.ip
        return "http://%s:%d%s" % (host, port, target if target.startswith("/") else "/" + target)

    def _on_machine(self, url):
        u = urllib.parse.urlsplit(url)
        return u.scheme in ("http", "https") and (u.hostname or "") == self.ip

    def request(self, method, target, port=80, max_body=HTTP_MAX_BODY, **kw):
        import requests

        url = self._url(target, port)
        if not self._on_machine(url):
            raise ValueError("%s is not on the machine under test (%s)" % (url, self.ip))
        kw.setdefault("timeout", HTTP_TIMEOUT)
        kw["allow_redirects"] = False
        kw["stream"] = True
        for _ in range(HTTP_MAX_REDIRECTS + 1):
            r = requests.request(method, url, **kw)
            body = bytearray()
            for chunk in r.iter_content(65536):
                body.extend(chunk)
                if len(body) > max_body:
                    r.close()
                    raise TooLarge("%s sent more than %d bytes" % (url, max_body))
            r._content = bytes(body)
            r._content_consumed = True
            location = r.headers.get("location")
            if not (r.is_redirect and location):
                return r
            nxt = urllib.parse.urljoin(url, location)
            if not self._on_machine(nxt):
                return r
            url = nxt
            if r.status_code in (301, 302, 303) and method.upper() != "HEAD":
                method = "GET"
                kw.pop("data", None)
                kw.pop("json", None)
        return r

    def get(self, target, **kw):
        return self.request("GET", target, **kw)

    def post(self, target, **kw):
        return self.request("POST", target, **kw)

    def head(self, target, **kw):
        return self.request("HEAD", target, **kw)


class Machine:
    def __init__(self, ip):
        self.ip = ip
        self.host = ip
        self.http = Http(ip)

    def run(self, command, timeout=60, **_ignored):
        r = _call({"command": command, "timeout": timeout})
        if "error" in r:
            raise RuntimeError("cannot run %r in the machine: %s" % (command, r["error"]))
        return Result(r["stdout"], r["stderr"], r["exit_code"])

    sudo = run


def _machine_ip():
    with open(os.path.join(_HERE, "run.json")) as f:
        return json.load(f).get("ip", "")


def _default_timeout():
    """Plain `requests` calls get a timeout unless they name one: a machine that accepts
    and never answers must not hold the check until its own time is up."""
    try:
        import requests.sessions
    except ImportError:
        return
    original = requests.sessions.Session.request

    def request(self, method, url, *args, **kw):
        # timeout is the seventh argument after the URL, if given by position.
        if len(args) < 7 and kw.get("timeout") is None:
            kw["timeout"] = HTTP_TIMEOUT
        return original(self, method, url, *args, **kw)

    requests.sessions.Session.request = request


_default_timeout()


@pytest.fixture(scope="session")
def s():
    return Machine(_machine_ip())


@pytest.fixture(scope="session")
def http(s):
    return s.http


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
        "message": message[:2000],
        "duration_ms": int(report.duration * 1000),
    }
    _call({"report": line})
