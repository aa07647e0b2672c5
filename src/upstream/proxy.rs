//! Forwarding to Matomo and fixing its answer (the gate's last two phases), streaming both bodies.
//!
//! Invariant: `proxy` never reads a session and never decides who may pass; it applies the header
//! policy (what a client may not say to Matomo) and moves bytes. The gate decides before it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Cause, Error};
use crate::request::php::split_ascii;
use crate::upstream::pool::{Pool, PoolError};
use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

/// Largest Matomo answer unikgate reads whole (its own calls: AutoLogin, API, who-am-i page).
pub const MAX_BUFFERED_ANSWER: usize = 8 * 1024 * 1024;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    // Met by unikgate's server (100 Continue as the body is first read), never forwarded: the
    // body reaches Matomo already sent, or read whole before it.
    "expect",
];

/// Headers that say where a request came from; believed only from `server.trusted_proxies`.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-url-scheme",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
];

/// Headers a client cannot declare hop-by-hop through `Connection` (it would strip its own
/// request of what makes it the same request).
const END_TO_END: &[&str] = &[
    "host",
    "cookie",
    "authorization",
    "content-type",
    "content-length",
    // unikgate's own, set before the policy runs.
    "x-request-id",
];

/// Compares a header name with a lower-case `-` spelling the way PHP's `getallheaders()` /
/// `$_SERVER` may see it: ASCII case ignored, `_` read as `-`. No allocation (hot path).
fn php_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

fn php_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, b)| php_byte(a) == b)
}

fn php_eq(name: &str, other: &str) -> bool {
    name.len() == other.len() && php_starts_with(name, other)
}

/// True when PHP reads the cookie `name` as `$_COOKIE[php_name]`: it turns spaces and dots of a
/// cookie name into underscores.
fn php_cookie_name_is(name: &str, php_name: &str) -> bool {
    name.len() == php_name.len()
        && name.bytes().zip(php_name.bytes()).all(|(a, b)| {
            let a = if a == b' ' || a == b'.' { b'_' } else { a };
            a == b
        })
}

/// True for every spelling of a header that Matomo's login plugin trusts.
pub fn is_matomo_header(name: &str) -> bool {
    php_starts_with(name, "matomo-")
}

fn is_forwarding(name: &str) -> bool {
    php_starts_with(name, "x-forwarded-") || FORWARDING.iter().any(|f| php_eq(name, f))
}

/// The header names a `Connection` header declares hop-by-hop (`HeaderName` lower-cases them).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// An address as a header value; IPv4 written by hand (every proxied request sets one, and the
/// formatting machinery costs more than the rest of the header policy).
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// Where Matomo is, and what the public sees.
#[derive(Clone)]
pub struct Upstream {
    pool: Pool,
    /// `scheme://authority` of Matomo, e.g. `http://matomo:80`.
    upstream_origin: String,
    upstream_host: String,
    public_origin: String,
    /// `server.public_url`'s path (`""` or `"/analytics"`), the same on Matomo's own server:
    /// unikgate's own calls (`call`) name Matomo's paths below it.
    base: String,
    /// With an https public URL, `http://` + the public host: the URL a Matomo that ignores
    /// `X-Forwarded-Proto` (5.7 and later without `proxy_scheme_headers[]`) builds for itself.
    plain_public_origin: Option<String>,
    public_host: HeaderValue,
    public_proto: HeaderValue,
    timeout: Duration,
    /// Upstream latency histogram only when a metrics listener is configured.
    metrics: bool,
    session_cookie: String,
}

/// The client's address as unikgate believes it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, cfg: &Config) -> IpAddr {
    let trusted = |ip: &IpAddr| cfg.server.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    // From the right: the first address that is not one of our trusted proxies.
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            for part in s.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => chain.push(ip),
                    Err(_) => return peer,
                }
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !trusted(ip))
        .unwrap_or(peer)
}

impl Upstream {
    pub fn new(cfg: &Config) -> Upstream {
        let u = &cfg.upstream.url;
        let upstream_origin = u.origin().ascii_serialization();
        // The address to connect to: IPv6 literals without their URL brackets.
        let connect_host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        let pool = Pool::new(
            &connect_host,
            u.port_or_known_default().unwrap_or(80),
            cfg.upstream.connect_timeout,
            Duration::from_secs(60),
            // The time Matomo has to start answering is also the longest pause within a body.
            cfg.upstream.timeout,
            256,
        );
        Upstream {
            pool,
            upstream_origin,
            upstream_host: u.host_str().unwrap_or("").to_string(),
            public_origin: cfg.public_origin(),
            base: cfg.server.base.clone(),
            plain_public_origin: cfg
                .public_is_https()
                .then(|| format!("http://{}", cfg.public_host())),
            public_host: HeaderValue::from_str(&cfg.public_host())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            public_proto: HeaderValue::from_static(if cfg.public_is_https() {
                "https"
            } else {
                "http"
            }),
            timeout: cfg.upstream.timeout,
            metrics: cfg.server.metrics_listen.is_some(),
            session_cookie: cfg.session.cookie_name.clone(),
        }
    }

    /// The request header policy: drops hop-by-hop headers (and `Expect`, which unikgate met)
    /// and those named in `Connection`, every
    /// spelling of `matomo-*`, client-sent forwarding headers and unikgate's own cookie; then sets
    /// `Host` and `X-Forwarded-*` from the public URL and the client address.
    pub fn sanitize_request(&self, headers: &mut HeaderMap, client_ip: IpAddr) {
        self.sanitize_request_as(headers, client_ip, None)
    }

    /// [`Upstream::sanitize_request`], forwarding `matomo_cookie` as the request's only
    /// `MATOMO_SESSID` (the signed-in UI path). There the browser's `Authorization` goes too:
    /// Matomo 5.4 and later authenticate a `Bearer` token on every module and then ignore the
    /// session, so the signed-in UI would act as the token's owner, not as the linked login.
    pub fn sanitize_request_as(
        &self,
        headers: &mut HeaderMap,
        client_ip: IpAddr,
        matomo_cookie: Option<&str>,
    ) {
        let mut drop: Vec<HeaderName> = connection_tokens(headers)
            .filter(|n| !END_TO_END.contains(&n.as_str()))
            .collect();
        let signed_in = matomo_cookie.is_some();
        for name in headers.keys() {
            let s = name.as_str();
            if HOP_BY_HOP.contains(&s)
                || is_matomo_header(s)
                || is_forwarding(s)
                || (signed_in && name == header::AUTHORIZATION)
            {
                drop.push(name.clone());
            }
        }
        for n in drop {
            headers.remove(&n);
        }
        self.rewrite_cookies(headers, matomo_cookie);
        headers.insert(header::HOST, self.public_host.clone());
        if let Some(v) = ip_header_value(client_ip) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), self.public_proto.clone());
        // No X-Forwarded-Host: Host already is the public host, and Matomo's installer, seeing
        // one, writes `proxy_host_headers[]`, a header Matomo never checks against trusted_hosts.
    }

    /// Rewrites the `Cookie` header(s) in one pass: unikgate's session cookie is removed (Matomo
    /// never sees it), several headers are merged into one, and with `matomo` set, every cookie
    /// PHP would read as `MATOMO_SESSID` is dropped and that value is sent first (PHP keeps the
    /// first cookie of a name).
    fn rewrite_cookies(&self, headers: &mut HeaderMap, matomo: Option<&str>) {
        let mut out = String::new();
        let mut changed = matomo.is_some();
        let mut count = 0;
        if let Some(m) = matomo {
            out.push_str("MATOMO_SESSID=");
            out.push_str(m);
        }
        for v in headers.get_all(header::COOKIE) {
            count += 1;
            let Ok(s) = v.to_str() else {
                changed = true;
                continue;
            };
            for part in split_ascii(s, b';') {
                let p = part.trim();
                if p.is_empty() {
                    continue;
                }
                let name = p
                    .bytes()
                    .position(|b| b == b'=')
                    .map_or(p, |i| &p[..i])
                    .trim();
                if name == self.session_cookie
                    || (matomo.is_some() && php_cookie_name_is(name, "MATOMO_SESSID"))
                {
                    changed = true;
                    continue;
                }
                if !out.is_empty() {
                    out.push_str("; ");
                }
                out.push_str(p);
            }
        }
        if !changed && count <= 1 {
            return;
        }
        headers.remove(header::COOKIE);
        if !out.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&out) {
                headers.insert(header::COOKIE, v);
            }
        }
    }

    /// Sends a request to Matomo; the response body streams. `headers` must already be sanitized.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, Error> {
        // The pool writes HTTP/1.1 in origin-form (`/path?query`), whatever form the client used.
        let start = self.metrics.then(Instant::now);
        let res = match tokio::time::timeout(self.timeout, self.pool.send(req)).await {
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "Matomo did not answer in time");
                return Err(Error::UpstreamTimeout);
            }
            // The browser's own body broke off (it went away mid-upload): not Matomo's doing.
            Ok(Err(PoolError::RequestBody(e))) => {
                tracing::info!(error = %e, "the request body broke off before it reached Matomo");
                return Err(Error::BadRequest(
                    "the request's body broke off before it was complete; send it again".into(),
                ));
            }
            Ok(Err(e)) => {
                return Err(Error::UpstreamUnavailable(Cause::msg(format!(
                    "{}: {e}",
                    self.upstream_origin
                ))));
            }
            Ok(Ok(res)) => res,
        };
        if let Some(start) = start {
            metrics::histogram!("unikgate_upstream_seconds").record(start.elapsed().as_secs_f64());
        }
        let (mut parts, body) = res.into_parts();
        self.fix_response_headers(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    /// The response header policy: hop-by-hop headers go, `Location` and cookie domains that
    /// name the internal Matomo address are moved to the public origin (so is a `Location` on the
    /// public host over plain http when the public URL is https: a Matomo that ignores
    /// `X-Forwarded-Proto` sends those), and Matomo may not set unikgate's own cookie.
    pub fn fix_response_headers(&self, headers: &mut HeaderMap) {
        // One pass over the (few) response headers; only the names present are removed.
        let mut drop: Vec<HeaderName> = connection_tokens(headers).collect();
        drop.extend(
            headers
                .keys()
                .filter(|n| HOP_BY_HOP.contains(&n.as_str()))
                .cloned(),
        );
        for n in drop {
            headers.remove(&n);
        }
        if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let rest = loc.strip_prefix(&self.upstream_origin).or_else(|| {
                self.plain_public_origin
                    .as_deref()
                    .and_then(|o| loc.strip_prefix(o))
            });
            if let Some(rest) = rest {
                if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                    let new = format!(
                        "{}{}",
                        self.public_origin,
                        if rest.is_empty() { "/" } else { rest }
                    );
                    if let Ok(v) = HeaderValue::from_str(&new) {
                        headers.insert(header::LOCATION, v);
                    }
                }
            }
        }
        if headers.contains_key(header::SET_COOKIE) {
            let cookies: Vec<HeaderValue> = headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            headers.remove(header::SET_COOKIE);
            for v in cookies {
                if let Some(fixed) = self.fix_set_cookie(&v) {
                    headers.append(header::SET_COOKIE, fixed);
                }
            }
        }
    }

    fn fix_set_cookie(&self, v: &HeaderValue) -> Option<HeaderValue> {
        let s = v.to_str().ok()?;
        let name = s.split('=').next().unwrap_or("").trim();
        if name == self.session_cookie {
            return None;
        }
        let lower = s.to_ascii_lowercase();
        if !lower.contains("domain=") {
            return Some(v.clone());
        }
        let kept: Vec<&str> = s
            .split(';')
            .filter(|attr| {
                let a = attr.trim().to_ascii_lowercase();
                match a.strip_prefix("domain=") {
                    Some(d) => d.trim_start_matches('.') != self.upstream_host.to_ascii_lowercase(),
                    None => true,
                }
            })
            .collect();
        HeaderValue::from_str(&kept.join(";")).ok()
    }

    /// One of unikgate's own calls to Matomo, answered whole (bounded).
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        client_ip: IpAddr,
    ) -> Result<Answer, Error> {
        self.call_inner(method, path_and_query, headers, body, client_ip, None)
            .await
    }

    /// The mint call: the only request that carries the trusted `matomo-username` header, set
    /// once, lower-case, after the policy removed every client spelling of it.
    pub async fn call_as_user(
        &self,
        method: Method,
        path_and_query: &str,
        login: HeaderValue,
        client_ip: IpAddr,
    ) -> Result<Answer, Error> {
        self.call_inner(
            method,
            path_and_query,
            HeaderMap::new(),
            None,
            client_ip,
            Some(login),
        )
        .await
    }

    async fn call_inner(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Option<Bytes>,
        client_ip: IpAddr,
        login: Option<HeaderValue>,
    ) -> Result<Answer, Error> {
        self.sanitize_request(&mut headers, client_ip);
        if let Some(login) = login {
            headers.insert(HeaderName::from_static("matomo-username"), login);
        }
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        // Matomo's paths (`/index.php?…`) under the base path it is served at.
        let uri = if path_and_query.starts_with('/') && !self.base.is_empty() {
            format!("{}{path_and_query}", self.base)
        } else {
            path_and_query.to_string()
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::new(Full::new(body.unwrap_or_default())))
            .map_err(|e| Error::Internal(e.to_string()))?;
        *req.headers_mut() = headers;
        let res = self.send(req).await?;
        let (parts, body) = res.into_parts();
        let bytes = Limited::new(body, MAX_BUFFERED_ANSWER)
            .collect()
            .await
            .map_err(|e| Error::MatomoUnexpected(format!("the answer could not be read ({e})")))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: bytes,
        })
    }

    /// The public origin (`scheme://host[:port]`).
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }
}

/// A whole answer of Matomo to one of unikgate's own calls.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let cfg = crate::config::Config::from_toml(
            "[server]\npublic_url = \"https://analytics.example.com\"\n[upstream]\nurl = \"http://matomo:80\"\n",
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        Upstream::new(&cfg)
    }

    #[tokio::test]
    async fn a_browser_body_that_breaks_off_is_a_bad_request_not_matomo_unreachable() {
        // Matomo listens (and would answer); the browser's upload fails halfway.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut s = s;
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut s, &mut sink).await;
                });
            }
        });
        let cfg = crate::config::Config::from_toml(
            &format!("[server]\npublic_url = \"https://analytics.example.com\"\n[upstream]\nurl = \"http://127.0.0.1:{port}\"\n"),
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        let body = Body::from_stream(futures_util::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"idSite=1&")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "browser gone",
            )),
        ]));
        let req = Request::builder()
            .method(Method::POST)
            .uri("/index.php?module=API")
            .header(header::HOST, "analytics.example.com")
            .body(body)
            .unwrap();
        match Upstream::new(&cfg).send(req).await {
            Err(Error::BadRequest(msg)) => assert!(msg.contains("body"), "{msg}"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "1.20.203.4",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[tokio::test]
    async fn locations_and_cookie_domains_move_to_the_public_origin() {
        let up = upstream();
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://matomo/index.php?module=CoreHome"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("MATOMO_SESSID=abc; path=/; domain=matomo; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("unikgate_session=forged; path=/"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        up.fix_response_headers(&mut h);
        for gone in ["x-secret", "keep-alive", "connection", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone} is hop-by-hop");
        }
        assert_eq!(h[header::CONTENT_TYPE], "text/html");
        assert_eq!(
            h[header::LOCATION],
            "https://analytics.example.com/index.php?module=CoreHome"
        );
        let cookies: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies.len(), 1, "Matomo cannot set unikgate's cookie");
        assert_eq!(cookies[0], "MATOMO_SESSID=abc; path=/; HttpOnly");
        assert!(!h.contains_key("x-secret"));
        // The public host over plain http (a Matomo that ignores X-Forwarded-Proto) goes to https;
        // another port or host stays.
        for (from, to) in [
            (
                "http://analytics.example.com/index.php?module=CoreHome",
                "https://analytics.example.com/index.php?module=CoreHome",
            ),
            (
                "http://analytics.example.com",
                "https://analytics.example.com/",
            ),
            (
                "http://analytics.example.com:8080/x",
                "http://analytics.example.com:8080/x",
            ),
            (
                "http://analytics.example.com.evil/x",
                "http://analytics.example.com.evil/x",
            ),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_static(from));
            up.fix_response_headers(&mut h);
            assert_eq!(h[header::LOCATION], to, "{from}");
        }
        // Relative and foreign Locations are left alone.
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("index.php?module=CoreHome&action="),
        );
        up.fix_response_headers(&mut h);
        assert_eq!(h[header::LOCATION], "index.php?module=CoreHome&action=");
    }

    #[test]
    fn authorization_reaches_matomo_on_public_traffic_only() {
        let up = upstream();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let with = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer a-token"),
            );
            h
        };
        let mut h = with();
        up.sanitize_request(&mut h, ip);
        assert_eq!(h[header::AUTHORIZATION], "Bearer a-token");
        let mut h = with();
        up.sanitize_request_as(&mut h, ip, Some("minted"));
        assert!(!h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn the_browser_cannot_choose_the_forwarded_matomo_session() {
        let up = upstream();
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("MATOMO.SESSID=evil; a=1; unikgate_session =x"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("MATOMO SESSID=evil2; MATOMO_SESSID=old; b=2"),
        );
        up.rewrite_cookies(&mut h, Some("minted"));
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "MATOMO_SESSID=minted; a=1; b=2");
        // Public traffic keeps the browser's Matomo cookie; unikgate's never goes.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("MATOMO_SESSID=own; unikgate_session=x"),
        );
        up.rewrite_cookies(&mut h, None);
        assert_eq!(h[header::COOKIE], "MATOMO_SESSID=own");
    }

    #[test]
    fn matomo_headers_in_every_spelling() {
        for n in [
            "matomo-username",
            "Matomo-Username",
            "MATOMO_ROLE",
            "matomo_email",
            "Matomo_Group",
        ] {
            assert!(is_matomo_header(n), "{n}");
        }
        assert!(!is_matomo_header("x-matomo-username"));
        assert!(is_forwarding("X_Forwarded_Host"));
        assert!(is_forwarding("forwarded"));
    }
}
