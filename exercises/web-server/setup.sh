#!/bin/sh
set -e
mkdir -p /srv/www /srv/old
echo "old site" > /srv/old/index.html
cd /srv/old && nohup python3 -m http.server 80 >/dev/null 2>&1 &
# Wait until the old server listens, so the machine is as described when the learner gets it.
for i in $(seq 1 50); do
  grep -q ':0050 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null && exit 0
  sleep 0.1
done
echo "the old server did not start" >&2
exit 1
