#!/bin/sh
set -e
ln -sf /usr/bin/python3 /usr/local/bin/python
dest=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$dest"
cp -r /opt/wheels/django "$dest/"
mkdir -p /home/quiz/llama
chown quiz: /home/quiz/llama
cd /home/quiz/llama
nohup python -m django runserver 0.0.0.0:8080 --text "Hello, lama" >/dev/null 2>&1 &
# Wait until it answers, so that checks right after the solution see it.
for i in $(seq 1 50); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8080/")' 2>/dev/null && exit 0
  sleep 0.1
done
exit 1
