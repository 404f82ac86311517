#!/bin/sh
set -e
echo '<h1>Welcome to rootnroll</h1>' > /srv/www/index.html
pkill -f 'http.server 80$' || true
service webapp start 2>/dev/null || /etc/init.d/webapp start
