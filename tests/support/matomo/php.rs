//! The request as Matomo's PHP sees it behind Apache: the path Apache serves ([`apache_path`]),
//! `$_GET` and `$_POST` ([`params`]), `getallheaders()` ([`php_headers`]), `$_SERVER['HTTP_…']`,
//! the client IP (`proxy_client_headers[]`), the scheme (`ProxyHttp::isHttps()`) and the session
//! cookie, gathered once per request as [`Req`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::body::Body;
use http::request::Parts;
use http::{header, HeaderMap, Method};
use http_body_util::BodyExt;

use super::{record, Shared, StandInState};

/// One request, with what the modules read of it.
pub(super) struct Req {
    pub(super) st: Shared,
    pub(super) method: Method,
    /// The request target as received (what the log records).
    pub(super) uri: String,
    pub(super) headers: HeaderMap,
    /// [`apache_path`] of the target.
    pub(super) path: String,
    pub(super) get: HashMap<String, String>,
    /// Only for a form POST.
    pub(super) post: HashMap<String, String>,
    pub(super) body_len: u64,
    /// The client's address as Matomo takes it ([`client_ip`]).
    pub(super) ip: IpAddr,
    pub(super) https: bool,
    /// The `Host` header ("" without one).
    pub(super) host: String,
    /// The `MATOMO_SESSID` cookie.
    pub(super) cookie: Option<String>,
    /// [`StandInState::fpm`] when the request came.
    pub(super) fpm: bool,
}

impl Req {
    /// Reads the body counting bytes (uploads up to any size are streamed, not kept).
    pub(super) async fn read(
        st: Shared,
        peer: SocketAddr,
        parts: Parts,
        path: String,
        body: Body,
    ) -> Req {
        let h = parts.headers;
        let ip = client_ip(peer.ip(), &h);
        let https = st.is_https(&h);
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body_len = 0u64;
        let mut kept = Vec::new();
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(d) = frame.data_ref() {
                body_len += d.len() as u64;
                if kept.len() < 1024 * 1024 {
                    kept.extend_from_slice(d);
                }
            }
        }
        let is_form = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        let post = if parts.method == Method::POST && is_form {
            params(&String::from_utf8_lossy(&kept))
        } else {
            HashMap::new()
        };
        let get = params(parts.uri.query().unwrap_or(""));
        let fpm = st.fpm.load(Ordering::Relaxed);
        let cookie = request_cookie(&h);
        Req {
            st,
            method: parts.method,
            uri: parts.uri.to_string(),
            headers: h,
            path,
            get,
            post,
            body_len,
            ip,
            https,
            host,
            cookie,
            fpm,
        }
    }

    /// A request parameter: GET before POST, "" when absent.
    pub(super) fn var(&self, k: &str) -> String {
        self.get
            .get(k)
            .or_else(|| self.post.get(k))
            .cloned()
            .unwrap_or_default()
    }

    /// Adds the request to the stand-in's log, as served to `as_login` (None: anonymous).
    pub(super) fn record(&self, as_login: Option<String>) {
        record(
            &self.st,
            &self.method,
            &self.uri,
            &self.headers,
            self.body_len,
            as_login,
        );
    }
}

/// PHP-style parameters: last duplicate wins, GET before POST.
pub(super) fn params(q: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        m.insert(k.into_owned(), v.into_owned());
    }
    m
}

/// What `getallheaders()` returns under mod_php (names as sent; hyper lower-cases them, which is
/// what unikgate sends anyway) or PHP-FPM (capitalised).
pub(super) fn php_headers(h: &HeaderMap, fpm: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in h {
        let v = value.to_str().unwrap_or("").to_string();
        // Read `_` as `-` (the stricter reading: every spelling counts as the header).
        let mut n = name.as_str().replace('_', "-");
        if fpm {
            n = n
                .split('-')
                .map(|p| {
                    let mut c = p.chars();
                    match c.next() {
                        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                        None => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join("-");
        }
        // Apache merges duplicates into one comma-separated value.
        if let Some(e) = out.iter_mut().find(|(k, _)| *k == n) {
            e.1 = format!("{}, {}", e.1, v);
        } else {
            out.push((n, v));
        }
    }
    out
}

pub(super) fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn request_cookie(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(header::COOKIE) {
        for part in v.to_str().unwrap_or("").split(';') {
            if let Some(val) = part.trim().strip_prefix("MATOMO_SESSID=") {
                return Some(val.to_string());
            }
        }
    }
    None
}

fn client_ip(peer: IpAddr, h: &HeaderMap) -> IpAddr {
    // proxy_client_headers[] = HTTP_X_FORWARDED_FOR: the last address of the list.
    h.get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next_back())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

/// `$_SERVER['HTTP_…']` for `key` (`HTTP_X_FORWARDED_PROTO`): Apache joins duplicates with ", ".
fn server_var(h: &HeaderMap, key: &str) -> Option<String> {
    let name = key
        .strip_prefix("HTTP_")?
        .replace('_', "-")
        .to_ascii_lowercase();
    let values: Vec<&str> = h
        .get_all(name.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

impl StandInState {
    /// `ProxyHttp::isHttps()` (the stand-in is reached over plain http: `$_SERVER['HTTPS']` is
    /// never on).
    ///
    /// - up to 5.6 (`core/Url.php` getCurrentScheme, as in 5.1.2): `X-Forwarded-Scheme` or
    ///   `X-Url-Scheme` equal to https (any case), or `X-Forwarded-Proto` exactly `https`;
    ///   nothing to configure.
    /// - from 5.7 (PR #23968): `assume_secure_protocol`, else the first header that
    ///   `proxy_scheme_headers[]` names whose value, trimmed and lower-cased, is `http` or
    ///   `https` (other values are skipped); no such header: http.
    fn is_https(&self, h: &HeaderMap) -> bool {
        if self.assume_secure_protocol.load(Ordering::Relaxed) {
            return true;
        }
        if !self.version().at_least(5, 7) {
            let ci = |n: &str| {
                h.get(n)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("https"))
            };
            return ci("x-forwarded-scheme")
                || ci("x-url-scheme")
                || h.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
        }
        for key in self.proxy_scheme_headers.lock().unwrap().iter() {
            if let Some(v) = server_var(h, key) {
                match v.trim().to_ascii_lowercase().as_str() {
                    "https" => return true,
                    "http" => return false,
                    _ => {}
                }
            }
        }
        false
    }
}

/// The path as Apache serves it: `%xx` decoded (an encoded slash stays encoded), dot segments
/// resolved, repeated slashes merged (MergeSlashes On).
pub(super) fn apache_path(raw: &str) -> String {
    let mut segs: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let mut out = Vec::new();
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    if v != b'/' {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
            }
            out.push(b[i]);
            i += 1;
        }
        let s = String::from_utf8_lossy(&out).into_owned();
        match s.as_str() {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            _ => segs.push(s),
        }
    }
    let mut p = format!("/{}", segs.join("/"));
    if raw.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}
