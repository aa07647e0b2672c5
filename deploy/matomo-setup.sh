#!/usr/bin/env bash
# Run inside the Matomo container once Matomo is installed (its web installer done):
#   docker compose -f deploy/docker-compose.yml exec matomo bash /unikgate/matomo-setup.sh
# 1. Matomo behind unikgate: trusted host, real client IP (https comes from unikgate's headers).
# 2. The minter's plugin: UnikGate (signed assertions, the default) or AutoLogin.
set -euo pipefail
cd /var/www/html
: "${PUBLIC_HOST:?PUBLIC_HOST is not set}"
./console config:set "General.trusted_hosts[]=\"${PUBLIC_HOST}\""
# unikgate sends the client address as X-Forwarded-For (Matomo reads its last address).
./console config:set 'General.proxy_client_headers[]="HTTP_X_FORWARDED_FOR"'
case "${MINTER:-signed}" in
  signed)
    secret=$(tr -d '\r\n' < /run/secrets/shared_secret)
    if [ "${#secret}" -lt 32 ]; then echo "the shared secret must be at least 32 bytes" >&2; exit 1; fi
    ./console config:set "UnikGate.shared_secret=\"${secret}\""
    # Superusers may sign in through unikgate unless this is 0 (unikgate's
    # matomo.deny_superusers refuses them earlier, with a clearer page).
    ./console config:set 'UnikGate.allow_superusers=1'
    ./console plugin:activate UnikGate
    ;;
  autologin)
    if [ ! -d plugins/AutoLogin ]; then
      echo "Installing AutoLogin from the Matomo Marketplace"
      curl -fsSL -o /tmp/AutoLogin.zip "https://plugins.matomo.org/api/2.0/plugins/AutoLogin/download/latest"
      apt-get update -qq >/dev/null && apt-get install -y -qq unzip >/dev/null
      unzip -q /tmp/AutoLogin.zip -d plugins/
      chown -R www-data:www-data plugins/AutoLogin
    fi
    ./console plugin:activate AutoLogin
    ;;
  *) echo "MINTER must be signed or autologin" >&2; exit 1 ;;
esac
echo "Done. Check it from the unikgate container: unikgate doctor -c /etc/unikgate/unikgate.toml"
