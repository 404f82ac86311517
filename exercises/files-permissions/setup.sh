#!/bin/sh
set -e
useradd -m -s /bin/bash student
cp /etc/motd /etc/motd.bak 2>/dev/null || echo "welcome" > /etc/motd.bak
chmod 666 /etc/motd.bak
