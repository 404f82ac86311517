#!/bin/sh
set -e
useradd -m -s /bin/bash deploy
printf '#!/bin/sh\necho restarted\n' > /usr/local/bin/restart-app
chmod 755 /usr/local/bin/restart-app
