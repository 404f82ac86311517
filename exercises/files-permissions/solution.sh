#!/bin/sh
set -e
echo "quarterly numbers" > /home/student/report.txt
chown student:staff /home/student/report.txt
chmod 600 /home/student/report.txt
mkdir -p /srv/shared
chmod 1777 /srv/shared
ln -s /home/student/report.txt /home/student/latest
rm /etc/motd.bak
