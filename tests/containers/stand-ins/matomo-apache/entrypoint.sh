#!/usr/bin/env bash
# As the official image: a first start on an empty volume gets the Matomo tree, owned by www-data.
set -euo pipefail
if [ ! -e /var/www/html/matomo.php ]; then
  tar -C /usr/src/matomo -cf - . | tar -C /var/www/html -xf -
  chown -R www-data:www-data /var/www/html
fi
exec "$@"
