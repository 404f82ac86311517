#!/bin/sh
set -e
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q nano >/dev/null 2>&1 || dpkg -r nano
dpkg-query -W -f='${Status}\n' | grep -c 'install ok installed' > /root/packages.count
