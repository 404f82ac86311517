#!/bin/sh
pkill -f /usr/local/bin/cpuhog
nohup sleep 4242 >/dev/null 2>&1 &
bash -c "kill -l TERM" > /root/sigterm.txt
bash -c "kill -l KILL" > /root/sigkill.txt
