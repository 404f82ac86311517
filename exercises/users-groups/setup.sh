#!/bin/sh
set -e
useradd -m bob
useradd -m guest
