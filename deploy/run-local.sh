#!/usr/bin/env bash
# `make run`: start keyfront on the embedded default (config/local.yaml: SQLite store,
# local sample files). First run generates a signing secret, an admin token and a demo
# key in data/, and the banner says how a second terminal uses the CLI and admin API.
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
if [ ! -s data/admin-token ]; then
  "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > data/admin-token
fi
chmod 600 data/key-secret data/admin-token
KEYFRONT_KEY_SECRET=$(cat data/key-secret)
KEYFRONT_ADMIN_TOKEN=$(cat data/admin-token)
export KEYFRONT_KEY_SECRET KEYFRONT_ADMIN_TOKEN
kf="$BIN/keyfront"
"$kf" config check >/dev/null
"$kf" customers show demo >/dev/null 2>&1 || "$kf" customers create demo --name "Demo customer" >/dev/null
if [ ! -s data/demo-key ]; then
  "$kf" keys create --customer demo --name "make run demo key" --json 2>/dev/null \
    | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["key"])' > data/demo-key
fi
key=$(cat data/demo-key)
listen=${KEYFRONT_LISTEN:-127.0.0.1:8080}
admin=${KEYFRONT_ADMIN_LISTEN:-127.0.0.1:9080}
config=$(realpath "$KEYFRONT_CONFIG")
bin=$(realpath "$BIN")
here=$(pwd)
cat <<MSG

keyfront is starting on http://$listen (admin and health on http://$admin).

  demo key:  $key

  curl -i "http://$listen/request/12345.svg?key=$key"

The CLI and the admin API, from a second terminal:

  export KEYFRONT_CONFIG=$config
  export KEYFRONT_KEY_SECRET=\$(cat $here/data/key-secret)
  export KEYFRONT_ADMIN_TOKEN=\$(cat $here/data/admin-token)
  $bin/keyfront keys list
  curl -H "Authorization: Bearer \$KEYFRONT_ADMIN_TOKEN" http://$admin/admin/v1/customers

Stop it with Ctrl-C.
MSG
exec "$kf" serve
