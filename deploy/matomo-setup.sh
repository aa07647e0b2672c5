#!/usr/bin/env bash
# Run inside the Matomo container once Matomo is installed (its web installer done):
#   docker compose -f deploy/docker-compose.yml exec matomo bash /unikgate/matomo-setup.sh
# 1. Matomo behind unikgate: trusted host, real client IP, https from unikgate's headers.
# 2. The AutoLogin plugin (Marketplace), which unikgate uses to open sessions.
set -euo pipefail
cd /var/www/html
: "${PUBLIC_HOST:?PUBLIC_HOST is not set}"
./console config:set "General.trusted_hosts[]=\"${PUBLIC_HOST}\""
# unikgate sends the client address as X-Forwarded-For (Matomo reads its last address).
./console config:set 'General.proxy_client_headers[]="HTTP_X_FORWARDED_FOR"'
# unikgate sets X-Forwarded-Proto itself; Matomo honours it without configuration.
if [ ! -d plugins/AutoLogin ]; then
  echo "Installing AutoLogin from the Matomo Marketplace"
  curl -fsSL -o /tmp/AutoLogin.zip "https://plugins.matomo.org/api/2.0/plugins/AutoLogin/download/latest"
  apt-get update -qq >/dev/null && apt-get install -y -qq unzip >/dev/null
  unzip -q /tmp/AutoLogin.zip -d plugins/
  chown -R www-data:www-data plugins/AutoLogin
fi
./console plugin:activate AutoLogin
echo "Done. Check it from the unikgate container: unikgate doctor -c /etc/unikgate/unikgate.toml"
