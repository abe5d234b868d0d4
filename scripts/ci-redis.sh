#!/usr/bin/env bash
# Installs redis-server (Debian package) for the Redis shared-store tests (issue 13): the Rust
# tests (crates/quota-core/src/redis_store/tests.rs) and __test__/redis.spec.ts start their own
# server on 127.0.0.1 with a random port; they skip only where it is missing, and under CI (`CI`
# set) a missing server fails them, so this runs before the tests.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  redis-server --version
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system service on 6379; the tests use their own servers only.
redis-server --version
