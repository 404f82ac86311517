#!/bin/sh
want=$(dpkg-query -W -f='${Status}\n' | grep -c 'install ok installed')
have=$(tr -d ' \n' < /root/packages.count)
[ "$want" = "$have" ] || { echo "FAIL: packages.count says $have, but $want packages are installed now"; exit 1; }
