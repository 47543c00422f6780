#!/usr/bin/env bash
# Installs a redis-server binary for the test suite (which starts its own on a free
# port). Debian/Ubuntu: the OS package. Elsewhere: say what to do.
set -euo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
if command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "redis-server is not on the PATH: installing Debian's package (apt-get install redis-server)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null && exit 0
fi
cat >&2 <<'MSG'
redis-server is needed by the test suite and could not be installed automatically.
Install it with your package manager (e.g. `brew install redis`, `dnf install redis`,
`apk add redis`) so that `redis-server` is on the PATH, then run `make test` again.
MSG
exit 1
