#!/bin/sh
set -e
groupadd -g 2000 developers
useradd -m -s /bin/bash alice
usermod -aG developers alice
usermod -aG developers bob
userdel -r guest 2>/dev/null || userdel guest
