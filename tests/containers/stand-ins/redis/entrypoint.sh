#!/usr/bin/env bash
set -euo pipefail
if [ "${1:-}" = redis-server ]; then
  shift
  chown -R redis:redis /data
  exec su redis -s /bin/sh -c 'exec "$0" "$@"' -- redis-server --dir /data --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
