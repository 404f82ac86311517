#!/bin/sh
cut -d' ' -f1 /srv/access.log | sort | uniq -c | sort -rn | head -3 > /root/top3.txt
wc -l < /srv/access.log > /root/requests.count
