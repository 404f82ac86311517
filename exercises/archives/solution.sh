#!/bin/sh
set -e
tar -czf /root/project.tar.gz -C /srv project
mkdir -p /opt/data
tar -xJf /srv/data.tar.xz -C /opt/data
