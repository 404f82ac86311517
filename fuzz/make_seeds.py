#!/usr/bin/env python3
"""Writes the hand-made seeds of the byte-input fuzz targets into seeds/<target>/: valid
and subtly broken examples of what each target reads, so that fuzzing starts deep inside
the formats. (websocket and tokens take structured input; their seeds are picked from the minimised
corpus of an earlier run.) Run from fuzz/: python3 make_seeds.py"""

import json
import os
import struct
import zlib

here = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(here, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# terminal_frames: a flags byte (bit 0 deflate, bit 1 viewer, the rest the read size),
# then client frames.
def ws_frame(b0, payload, mask=b"\x12\x34\x56\x78"):
    n = len(payload)
    if n < 126:
        h = bytes([b0, 0x80 | n])
    elif n <= 0xFFFF:
        h = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return h + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


FIN, RSV1 = 0x80, 0x40
resize = json.dumps({"t": "resize", "rows": 40, "cols": 120}).encode()
z = deflate(b"ls -la /etc\r" * 40)
put("terminal_frames", "session", bytes([0x01 | (7 << 2)])
    + ws_frame(FIN | 0x1, resize) + ws_frame(FIN | 0x2, b"ls\r")
    + ws_frame(FIN | 0x1, b'{"t":"pause"}') + ws_frame(FIN | 0x1, b'{"t":"resume"}')
    + ws_frame(FIN | 0x9, b"ping") + ws_frame(FIN | RSV1 | 0x2, z)
    + ws_frame(FIN | 0x8, struct.pack(">H", 1000) + b"bye"))
put("terminal_frames", "fragmented", bytes([0x01])
    + ws_frame(RSV1 | 0x2, z[:10]) + ws_frame(FIN | 0x9, b"") + ws_frame(FIN, z[10:])
    + ws_frame(0x2, b"ab") + ws_frame(FIN, b"cd"))
put("terminal_frames", "viewer", bytes([0x02 | (3 << 2)])
    + ws_frame(FIN | 0x2, b"rm -rf /\r") + ws_frame(FIN | 0x1, resize))
put("terminal_frames", "bad-control", bytes([0x00]) + ws_frame(FIN | 0x1, b'{"t":"teleport"}'))
put("terminal_frames", "rsv1-no-deflate", bytes([0x00]) + ws_frame(FIN | RSV1 | 0x2, z))
put("terminal_frames", "bomb", bytes([0x01])
    + ws_frame(FIN | RSV1 | 0x2, deflate(b"\0" * 200000)))
# A frame that says it is over the limit: refused from its header.
put("terminal_frames", "long", bytes([0x00]) + ws_frame(FIN | 0x2, b"x" * 70000)[:20])


# agent_proto: a mode byte (bit 0 clear: a limit of 16 × it), then frames.
def frame(tag, payload):
    return bytes([tag]) + struct.pack(">I", len(payload)) + payload


def js(v):
    return json.dumps(v).encode()


suite = {"checks": [
    {"name": "f", "kind": "file", "path": "/etc/x", "mode": "0644", "matches": "^a$",
     "timeout_seconds": 2.5, "needs": ["u"], "message": "m"},
    {"name": "u", "kind": "user", "user": "ann", "uid": 1001, "member_of": ["staff"]},
    {"name": "h", "kind": "http", "port": 80, "method": "HEAD", "header": "X-A: b+"},
    {"name": "s", "kind": "script", "script": "checks/s.sh", "points": 3},
], "scripts": {"checks/s.sh": "exit 0"}}
put("agent_proto", "requests", b"\x01"
    + frame(0x10, js({"exec": {"argv": ["sh", "-c", "id"], "env": ["A=b"], "user": "ann:staff",
                                "cwd": "/tmp", "tty": [24, 80], "stdio": "framed"}}))
    + frame(0x10, js({"session": {"id": "t-abc", "rows": 24, "cols": 80}}))
    + frame(0x10, js({"check": suite})))
put("agent_proto", "replies", b"\x01"
    + frame(0x11, js({"started": {"pid": 7}})) + frame(0x11, js("connected"))
    + frame(0x11, js({"failed": {"message": "no such user"}}))
    + frame(0x11, js({"exited": {"code": 137}}))
    + frame(0x11, js({"checked": {"outcomes": [
        {"name": "f", "status": "failed", "detail": "mode 0600", "duration_ms": 3}]}})))
put("agent_proto", "exec-frames", b"\x03"
    + frame(0x20, b"input") + frame(0x21, struct.pack(">HH", 24, 80)) + frame(0x22, b"")
    + frame(0x30, b"out") + frame(0x31, b"err") + frame(0x20, b""))
put("agent_proto", "session-frames", b"\x05"
    + frame(0x80, struct.pack(">IHHB", 42, 24, 80, 1)) + frame(0x81, b"\x1b[1mhi\r\n")
    + frame(0x82, struct.pack(">I", 3) + b"\x1bc$ ") + frame(0x83, struct.pack(">i", 130))
    + frame(0x84, b"") + frame(0x01, b"ls\r") + frame(0x02, struct.pack(">HH", 30, 100))
    + frame(0x03, struct.pack(">I", 9)) + frame(0x04, b"") + frame(0x05, b"")
    + frame(0x06, b"copy"))
put("agent_proto", "too-large", b"\x02" + frame(0x81, b"x" * 40))
put("agent_proto", "suite.json", b"\x10" + js(suite))


def mux(ty, stream, payload):
    return bytes([ty]) + struct.pack(">IH", stream, len(payload)) + payload


put("agent_proto", "mux", b"\x07" + b"\x00" * 9
    + mux(0x01, 0, struct.pack(">Q", 42)) + mux(0x02, 0, struct.pack(">Q", 42))
    + mux(0x03, 0, struct.pack(">Q", 1)) + mux(0x10, 1, b"") + mux(0x11, 1, b"data")
    + mux(0x12, 1, b"") + mux(0x13, 1, b"") + mux(0x14, 1, struct.pack(">I", 4096)))

# exercise: the starter library's manifests, and broken ones.
root = os.path.join(here, "..", "exercises")
for name in sorted(os.listdir(root)):
    m = os.path.join(root, name, "exercise.toml")
    if os.path.isfile(m):
        put("exercise", name + ".toml", open(m, "rb").read())
put("exercise", "every-kind.toml", """title = "t"
setup = "setup.sh"
files = "files"
time_limit_minutes = 30
sticky = true
[limits]
memory_mib = 256
[[check]]
name = "f"
kind = "file"
path = "/etc/motd"
mode = "0644"
matches = "^hello$"
message = "m"
needs = ["s"]
[[check]]
name = "s"
kind = "script"
script = "checks/ok.sh"
message = "m"
timeout_seconds = 2.5
[[check]]
name = "p"
kind = "pytest"
file = "checks/test_x.py"
[[check]]
name = "h"
kind = "http"
port = 80
header = "Content-Type: text/.*"
message = "m"
""")
put("exercise", "broken.toml", """title = ""
solution = "../x"
[[check]]
name = "a"
kind = "port"
port = "eighty"
needs = ["a", "b"]
[[check]]
name = "b"
kind = "command"
command = "true"
stdout = "(unclosed"
message = "é"
needs = ["a"]
""")

# markdown: the starter library's instructions, and what must not become markup.
for name in sorted(os.listdir(root)):
    m = os.path.join(root, name, "README.md")
    if os.path.isfile(m):
        put("markdown", name + ".md", open(m, "rb").read())
put("markdown", "hostile.md", """# Title <script>alert(1)</script>

<img src=x onerror=alert(1)> and <a href="javascript:alert(1)">x</a>

[a](javascript:alert(1)) [b](JaVaScRiPt:alert(1)) [c](&#106;avascript:alert(1))
[d](data:text/html;base64,PHNjcmlwdD4=) [e]( vbscript:x) [f](java&#x09;script:x)
<javascript:alert(1)> <https://example.org> [g](/relative "title") [h](#frag)
![i](javascript:alert(1)) ![j](data:image/svg+xml,<svg onload=alert(1)>)

[ref]: javascript:alert(1)
[k][ref]

| a | b |
|:-:|--:|
| `x` | ~~y~~ |

```js onmouseover="alert(1)"
code
```
""")
