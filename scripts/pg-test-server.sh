#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the test suite (never for real data:
# trust authentication on loopback, fsync off). Prints the admin URL on stdout.
#   scripts/pg-test-server.sh start   # initdb if needed, start; prints the URL
#   scripts/pg-test-server.sh stop
set -euo pipefail
PORT=${FACELEDGER_PG_PORT:-55432}
DIR=${FACELEDGER_PG_DIR:-${TMPDIR:-/tmp}/faceledger-pg-$PORT}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql)" >&2
  exit 1
fi
# PostgreSQL refuses to run as root: run it as the 'postgres' account then.
if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
  PGUSER=postgres
else
  as_pg() { "$@"; }
  PGUSER=$(id -un)
fi
case "${1:-start}" in
  start)
    if [ ! -f "$DIR/PG_VERSION" ]; then
      mkdir -p "$DIR"
      [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
      as_pg "$BIN/initdb" -D "$DIR" -U "$PGUSER" -A trust --no-sync -E UTF8 >/dev/null
    fi
    if ! as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
      as_pg "$BIN/pg_ctl" -D "$DIR" -w -l "$DIR/server.log" \
        -o "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null
    fi
    echo "postgresql://$PGUSER@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    as_pg "$BIN/pg_ctl" -D "$DIR" -m fast stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
