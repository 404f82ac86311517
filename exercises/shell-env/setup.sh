#!/bin/sh
set -e
mkdir -p /opt/tools/bin
printf '#!/bin/sh\necho "Hello from tools"\n' > /opt/tools/bin/greet
chmod 755 /opt/tools/bin/greet
touch /root/.bashrc
