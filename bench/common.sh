# Shared by bench/run and bench/instructions (sourced): the upstream page, nginx configurations,
# unikgate's configuration, and waiting for a port.

# A 20 KB HTML page, the size of a Matomo UI page.
bench_page() { # file
  python3 - "$1" <<'PY'
import sys
row = "<tr><td>Visits</td><td>1234</td><td>Unique visitors</td><td>987</td></tr>\n"
body = "<!DOCTYPE html><html><head><title>Matomo</title></head><body><table>\n"
while len(body) < 20 * 1024 - 40:
    body += row
body += "</table></body></html>\n"
open(sys.argv[1], "w").write(body[:20 * 1024])
PY
}

# nginx with one worker and keep-alive, writing its files under DIR.
nginx_conf() { # dir, http block content, [main-context directives]
  cat > "$1/nginx.conf" <<NG
daemon off;
${3:-}
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
  $2
}
NG
}

# nginx serving the page on PORT for any path (the upstream every proxy is measured in front of).
nginx_page_block() { # port, folder holding page.html
  echo "server { listen 127.0.0.1:$1; root $2; location / { default_type text/html; try_files /page.html =404; } }"
}

# nginx as a reverse proxy on PORT to the upstream on UPSTREAM_PORT, as a deployment would set it.
nginx_proxy_block() { # port, upstream port
  echo "upstream up { server 127.0.0.1:$2; keepalive 256; }
  server { listen 127.0.0.1:$1; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; } }"
}

# The oauth2-proxy pattern's floor: nginx on PORT checks every request with `auth_request` against
# an auth service over keep-alive before proxying to UPSTREAM_PORT, but the auth service (a server
# of the same nginx process, on AUTH_PORT) answers 204 without checking anything. Any real check
# (oauth2-proxy decrypting its cookie) only adds to it.
nginx_auth_block() { # port, upstream port, auth port
  echo "upstream up { server 127.0.0.1:$2; keepalive 256; }
  upstream auth { server 127.0.0.1:$3; keepalive 256; }
  server { listen 127.0.0.1:$3; location / { return 204; } }
  server { listen 127.0.0.1:$1;
    location = /_auth { internal; proxy_pass http://auth; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass_request_body off; proxy_set_header Content-Length \"\"; proxy_set_header X-Original-URI \$request_uri; }
    location / { auth_request /_auth; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; } }"
}

# unikgate on PORT in front of UPSTREAM_PORT, SQLite store at DB, a provider that is never called.
unikgate_toml() { # file, port, upstream port, db path
  cat > "$1" <<T
[server]
listen = "127.0.0.1:$2"
public_url = "http://127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$3"
[provider]
issuer = "none"
authorize_url = "http://127.0.0.1:9/oidc/authorize"
token_url = "http://127.0.0.1:9/oidc/accessToken"
userinfo_url = "http://127.0.0.1:9/oidc/profile"
client_id = "bench"
client_secret = "bench-secret"
[store]
url = "sqlite://$4"
T
}

wait_port() { # port (up to 30 s: a server under valgrind starts slowly)
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  exit 1
}
