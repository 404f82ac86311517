#!/bin/sh
set -e
mkdir -p /srv/project/src /tmp/data
printf 'int main(void) { return 0; }\n' > /srv/project/src/main.c
printf 'all:\n\tcc -o main src/main.c\n' > /srv/project/Makefile
echo "this file was extracted correctly" > /tmp/data/readme.txt
tar -cJf /srv/data.tar.xz -C /tmp/data readme.txt
rm -rf /tmp/data
