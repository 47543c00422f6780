#!/usr/bin/env bash
# Installs a command the test suite needs from the Debian package that ships it:
#   deploy/install-test-tool.sh redis-server redis-server   (the suite starts its own)
#   deploy/install-test-tool.sh promtool prometheus          (checks a live /metrics)
#   deploy/install-test-tool.sh systemd-analyze systemd      (verifies deploy/systemd)
#   deploy/install-test-tool.sh chromium chromium            (headless, driven by Playwright)
# Debian/Ubuntu only; elsewhere it says what to do. The package's service is not wanted:
# where policy-rc.d allows services to start, the prometheus service is stopped again.
set -euo pipefail
command=$1
package=$2
if command -v "$command" >/dev/null; then exit 0; fi
if command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "$command is not on the PATH: installing Debian's package (apt-get install $package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "$package" >/dev/null
  if [ "$package" = prometheus ] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  command -v "$command" >/dev/null && exit 0
fi
cat >&2 <<MSG
$command is needed by the test suite and could not be installed automatically.
Install it with your package manager (it is in the $package package on Debian; e.g.
\`brew install $package\`) so that \`$command\` is on the PATH, then run \`make test\` again.
MSG
exit 1
