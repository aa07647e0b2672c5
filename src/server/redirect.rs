//! `server.http_listen`: plain HTTP, every request answered with a redirect to the same path and
//! query on `server.public_url` (301 for GET and HEAD, 308 for the other methods, so that a form
//! posted over http is posted again over https, not turned into a GET); with ACME, also the
//! HTTP-01 answers under `/.well-known/acme-challenge/`.
//!
//! Invariants: the redirect's origin is always `public_url`'s, never the request's `Host` (an
//! attacker's Host cannot make it point elsewhere); nothing else is served here; connections are
//! capped as on `server.listen` (`server.max_connections`, `max_connections_per_ip`, counted for
//! this listener on its own), a refused one answered 503 and closed unread.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::limits::Connections;
use crate::tls::acme::Acme;

/// Where the CA asks for HTTP-01 answers.
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The answer to one request on the plain-HTTP listener: an ACME HTTP-01 answer, or the redirect.
pub fn to_https(
    public_origin: &str,
    acme: Option<&Acme>,
    req: &Request<Incoming>,
) -> Response<Body> {
    if let (Some(acme), Some(token)) = (acme, req.uri().path().strip_prefix(CHALLENGE_PATH)) {
        let (status, body) = match acme.http01(token) {
            Some(ka) => (StatusCode::OK, ka),
            None => (
                StatusCode::NOT_FOUND,
                "No such ACME challenge.\n".to_string(),
            ),
        };
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return res;
    }
    answer(public_origin, req.method(), req.uri())
}

fn answer(public_origin: &str, method: &Method, uri: &http::Uri) -> Response<Body> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    // An absolute-form target keeps only its path and query; a target without a leading slash
    // (`*`, or garbage) goes to the root.
    let pq = if pq.starts_with('/') { pq } else { "/" };
    let status = if method == Method::GET || method == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut res = Response::new(Body::from("Use HTTPS.\n"));
    *res.status_mut() = status;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{public_origin}{pq}")) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Serves redirects (and `acme`'s HTTP-01 answers) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cfg: &Config,
    acme: Option<Arc<Acme>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let origin: Arc<str> = cfg.public_origin().into();
    let head_timeout = cfg.server.head_timeout;
    let conns = Connections::new(
        cfg.server.max_connections,
        cfg.server.max_connections_per_ip,
        cfg.server.trusted_proxies.clone(),
    );
    let refusals = super::RefusalLog::default();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (server.http_listen)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match conns.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                refusals.note(why, peer.ip(), &conns);
                let _ = stream.try_write(super::AT_CAPACITY);
                continue;
            }
        };
        let origin = origin.clone();
        let acme = acme.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let res = to_https(&origin, acme.as_deref(), &req);
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_buf_size(super::MAX_HEAD)
            .header_read_timeout(head_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, "http_listen connection ended with an error");
            }
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(method: Method, target: &str) -> (StatusCode, String) {
        let uri: http::Uri = target.parse().unwrap();
        let res = answer("https://analytics.example.com", &method, &uri);
        let loc = res.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
        (res.status(), loc)
    }

    #[test]
    fn every_request_goes_to_the_public_origin_with_its_path() {
        assert_eq!(
            location(Method::GET, "/index.php?module=CoreHome&action=index"),
            (
                StatusCode::MOVED_PERMANENTLY,
                "https://analytics.example.com/index.php?module=CoreHome&action=index".into()
            )
        );
        // A post keeps its method (308), the host a client names is never used.
        assert_eq!(
            location(Method::POST, "http://evil.example/matomo.php?x=1"),
            (
                StatusCode::PERMANENT_REDIRECT,
                "https://analytics.example.com/matomo.php?x=1".into()
            )
        );
        assert_eq!(
            location(Method::OPTIONS, "*").1,
            "https://analytics.example.com/"
        );
        // `//evil.example` stays a path of the public origin, not another host.
        assert_eq!(
            location(Method::GET, "//evil.example/x").1,
            "https://analytics.example.com//evil.example/x"
        );
    }
}
