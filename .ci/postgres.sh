#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the distributed-tuning test.
#   eval "$(.ci/postgres.sh start)"   # installs Debian's postgresql if needed, prints the export line
#   .ci/postgres.sh stop
set -euo pipefail
PORT=${SB3_PPO_KL_PG_PORT:-54329}
DATA=/tmp/sb3_ppo_kl_pg
case "${1:-}" in
  start)
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
      $SUDO apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql >&2
    fi
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    RUN=()
    if [ "$(id -u)" = 0 ]; then RUN=(runuser -u postgres --); fi  # the server refuses to run as root
    if [ -d "$DATA/db" ]; then "$0" stop; fi  # a server left by an earlier run
    rm -rf "$DATA" && mkdir -p "$DATA" && { [ "$(id -u)" != 0 ] || chown postgres "$DATA"; }
    "${RUN[@]}" "$BIN/initdb" -D "$DATA/db" -U postgres -A trust >&2
    "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA/db" -l "$DATA/log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >&2
    echo "export SB3_PPO_KL_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    RUN=()
    if [ "$(id -u)" = 0 ]; then RUN=(runuser -u postgres --); fi
    if [ -d "$DATA/db" ]; then "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA/db" -w -m fast stop >&2 || true; fi
    rm -rf "$DATA"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
