#!/usr/bin/env bash
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
chown -R postgres:postgres "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  printf %s "$POSTGRES_PASSWORD" > "$pw"
  chown postgres "$pw"
  su postgres -c "$bin/initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile='$pw' --auth-local=trust --auth-host=scram-sha-256" >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -c "$bin/pg_ctl -D '$PGDATA' -o '-c listen_addresses=' -w start" >/dev/null
  # POSTGRES_DB, by default the user's name, as the official image creates it.
  db=${POSTGRES_DB:-$POSTGRES_USER}
  if [ "$db" != postgres ]; then
    su postgres -c "psql -U '$POSTGRES_USER' -d postgres -c 'CREATE DATABASE \"$db\"'" >/dev/null
  fi
  su postgres -c "$bin/pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -c "exec $bin/postgres -D '$PGDATA' -c listen_addresses='*'"
