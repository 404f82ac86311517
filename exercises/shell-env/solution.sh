#!/bin/sh
cat >> /root/.bashrc <<'RC'
export EDITOR=vim
export PATH="$PATH:/opt/tools/bin"
alias ll='ls -la'
RC
