#!/usr/bin/env bash
# Prepares an installed Matomo (its web installer done) for unikgate. Run it as the web server's
# user (files Matomo's console creates as root under tmp/ break the web UI); in the compose setup:
#   docker compose -f deploy/docker-compose.yml exec -u www-data matomo bash /unikgate/matomo-setup.sh
# 1. Matomo behind unikgate: the public host trusted, the real client IP read from X-Forwarded-For,
#    the scheme read from X-Forwarded-Proto (Matomo 5.7 and later ignore it unless
#    proxy_scheme_headers[] names it, and then believe their URL is http:// behind TLS), no
#    X-Forwarded-Host honoured (unikgate keeps Host as the public host).
# 2. The minter's plugin: UnikGate (signed assertions, the default; with PUBLIC_URL, the audience
#    of unikgate's assertions is written down instead of guessed) or AutoLogin.
# Idempotent: a second run changes nothing. It never prints the shared secret.
#
# Variables (the container's paths are the defaults):
#   PUBLIC_HOST         the host people type (required)
#   PUBLIC_URL          unikgate's server.public_url, e.g. https://analytics.example.com (the
#                       compose file passes it), or with Matomo's path, https://example.org/analytics/
#                       (then the plugin's links go to unikgate's endpoints under that path);
#                       unset: the plugin checks assertions against the URL Matomo computes for
#                       each request
#   MINTER              signed (default) or autologin
#   MATOMO_DIR          Matomo's folder                 (/var/www/html)
#   SHARED_SECRET_FILE  the secret shared with unikgate (/run/secrets/shared_secret)
set -euo pipefail
: "${PUBLIC_HOST:?PUBLIC_HOST is not set}"
MATOMO_DIR=${MATOMO_DIR:-/var/www/html}
SHARED_SECRET_FILE=${SHARED_SECRET_FILE:-/run/secrets/shared_secret}
cd "$MATOMO_DIR"
if [ "$(id -u)" = 0 ]; then
  echo "matomo-setup.sh: run it as the web server's user (e.g. docker compose exec -u www-data …), not as root" >&2
  exit 1
fi

console() { php ./console --no-ansi "$@"; }

# Appends VALUE to the [General] array KEY unless it is there already.
add_general() {
  local key=$1 value=$2
  if console config:get "General.$key" --format=json 2>/dev/null | grep -qF "\"$value\""; then
    echo "[General] $key already holds $value"
  else
    console config:set "General.$key[]=\"$value\"" >/dev/null
    echo "[General] $key[] = $value"
  fi
}

PUBLIC_URL=${PUBLIC_URL:-}
if [ -n "$PUBLIC_URL" ] && ! printf %s "$PUBLIC_URL" | grep -qE '^https?://[A-Za-z0-9.:-]+(/[A-Za-z0-9._~/-]*)?$'; then
  echo "PUBLIC_URL must be unikgate's server.public_url, e.g. https://analytics.example.com (got $PUBLIC_URL)" >&2
  exit 1
fi

add_general trusted_hosts "$PUBLIC_HOST"
# unikgate sends the client address as X-Forwarded-For (Matomo reads its last address).
add_general proxy_client_headers HTTP_X_FORWARDED_FOR
# unikgate sends the public URL's scheme as X-Forwarded-Proto. Matomo up to 5.6 read it unasked;
# 5.7 and later read it only when this names it (their installer writes it when it sees the
# header, their upgrade only where proxy settings existed before). Without it, a Matomo behind TLS
# builds http:// URLs for itself and refuses every assertion signed for https://.
add_general proxy_scheme_headers HTTP_X_FORWARDED_PROTO
# Matomo's installer writes this on its own when it sees X-Forwarded-Host; Matomo does not check
# that header against trusted_hosts, so it must not be honoured.
if console config:get General.proxy_host_headers --format=json 2>/dev/null | grep -q HTTP_; then
  console config:delete General.proxy_host_headers >/dev/null
  echo "[General] proxy_host_headers removed"
fi

case "${MINTER:-signed}" in
  signed)
    if [ ! -r "$SHARED_SECRET_FILE" ]; then echo "cannot read the shared secret file $SHARED_SECRET_FILE" >&2; exit 1; fi
    secret=$(tr -d '\r\n' < "$SHARED_SECRET_FILE")
    if [ "${#secret}" -lt 32 ]; then echo "the shared secret must be at least 32 bytes" >&2; exit 1; fi
    case $secret in *'"'*|*'\'*) echo "the shared secret must not contain \" or \\" >&2; exit 1 ;; esac
    console config:set "UnikGate.shared_secret=\"${secret}\"" >/dev/null
    echo "[UnikGate] shared_secret set (${#secret} bytes, from $SHARED_SECRET_FILE)"
    # Superusers may sign in through unikgate unless this is 0 (unikgate's
    # matomo.deny_superusers refuses them earlier, with a clearer page).
    console config:set 'UnikGate.allow_superusers=1' >/dev/null
    echo "[UnikGate] allow_superusers = 1"
    if [ -n "$PUBLIC_URL" ]; then
      console config:set "UnikGate.public_url=\"${PUBLIC_URL%/}\"" >/dev/null
      echo "[UnikGate] public_url = ${PUBLIC_URL%/}"
      # Matomo under a path: unikgate's endpoints are under it too (server.prefix after the path).
      base=$(printf %s "${PUBLIC_URL%/}" | sed -E 's#^https?://[^/]+##')
      if [ -n "$base" ]; then
        console config:set "UnikGate.prefix=\"${base}/_unikgate\"" >/dev/null
        echo "[UnikGate] prefix = ${base}/_unikgate"
      fi
    fi
    console plugin:activate UnikGate | grep -v '^$' || true
    # A plugin updated in place (a new Menu.php: the superusers' page) shows in Matomo's menus
    # once its caches are rebuilt.
    console core:clear-caches >/dev/null 2>&1 || true
    ;;
  autologin)
    if [ ! -d plugins/AutoLogin ]; then
      echo "AutoLogin is not in plugins/: install it from the Matomo Marketplace (Administration → Marketplace) first" >&2
      exit 1
    fi
    console plugin:activate AutoLogin | grep -v '^$' || true
    ;;
  *) echo "MINTER must be signed or autologin" >&2; exit 1 ;;
esac
echo "Done. Check it from the unikgate container: unikgate doctor -c /etc/unikgate/unikgate.toml --as <a Matomo login>"
