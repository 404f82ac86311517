#!/bin/sh
set -e
printf 'port=8080\n' > /etc/bench.conf
chmod 644 /etc/bench.conf
groupadd benchgrp
useradd -m -s /bin/bash benchuser
mkdir -p /srv/bench && echo ok > /srv/bench/index.html
ln -s /etc/bench.conf /usr/local/bin/bench
cat > /usr/local/bin/benchd <<'PY'
#!/usr/bin/python3
import http.server, os
os.chdir("/srv/bench")
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
PY
chmod 755 /usr/local/bin/benchd
nohup /usr/local/bin/benchd >/dev/null 2>&1 &
for i in $(seq 50); do grep -q ':1F90 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
