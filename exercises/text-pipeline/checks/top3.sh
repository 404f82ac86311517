#!/bin/sh
# Compares the learner's answer with the right one, ignoring uniq's padding.
want=$(cut -d' ' -f1 /srv/access.log | sort | uniq -c | sort -rn | head -3 | awk '{print $1, $2}')
have=$(awk '{print $1, $2}' /root/top3.txt)
if [ "$want" != "$have" ]; then
  echo "FAIL: top3.txt does not list the three busiest addresses (the busiest has $(echo "$want" | head -1 | cut -d" " -f1) requests)"
  exit 1
fi
