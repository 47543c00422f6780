#!/usr/bin/env bash
# `make run`: start keyfront on the embedded default (config/local.yaml: SQLite store,
# local sample files). First run generates a signing secret and a demo key in data/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export KEYFRONT_CONFIG=${CONFIG:-config/local.yaml}
# data/ holds the signing secret, the SQLite file (link secrets) and the cache: this
# user's alone (issue 12), also when an earlier run left them readable to others.
umask 077
mkdir -p data
chmod 700 data
if [ ! -s data/key-secret ]; then
  "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > data/key-secret
fi
chmod 600 data/key-secret
KEYFRONT_KEY_SECRET=$(cat data/key-secret)
export KEYFRONT_KEY_SECRET
kf="$BIN/keyfront"
"$kf" config check >/dev/null
"$kf" customers show demo >/dev/null 2>&1 || "$kf" customers create demo --name "Demo customer" >/dev/null
if [ ! -s data/demo-key ]; then
  "$kf" keys create --customer demo --name "make run demo key" --json 2>/dev/null \
    | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["key"])' > data/demo-key
fi
key=$(cat data/demo-key)
listen=${KEYFRONT_LISTEN:-127.0.0.1:8080}
cat <<MSG

keyfront is starting on http://$listen (admin and health on ${KEYFRONT_ADMIN_LISTEN:-127.0.0.1:9080}).

  demo key:  $key

  curl -i "http://$listen/request/12345.svg?key=$key"

Stop it with Ctrl-C.
MSG
exec "$kf" serve
