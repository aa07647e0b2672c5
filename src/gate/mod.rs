//! The life of a request, phase by phase (Pingora's way: one name and one job each):
//! 0–1 admit (`admit.rs`: well formed, within limits) → 2 classify (here: the form body read when
//! the classifier needs it) → 3 dispatch: unikgate's own endpoints (`endpoints::Endpoints`), public
//! traffic (`public.rs`), or the Matomo UI (`ui.rs`: authenticate → link → ensure the Matomo
//! session → forward → fix the response → save the session).
//!
//! Invariants: every request is classified before anything else looks at it; a UI request reaches
//! Matomo only with a Matomo cookie unikgate minted for the signed-in user (or, with
//! `password_login`, untouched for browsers that are not signed in to unikgate).

mod admit;
mod public;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::Full;
use tracing::Instrument;

use crate::app::App;
use crate::context::Ctx;
use crate::endpoints::Endpoints;
use crate::error::{Error, ErrorPage};
use crate::request::classify::{BodyRule, Class};
use crate::request::php::Params;

pub use admit::{MAX_HEADER_BYTES, MAX_URI};

/// Largest form body read to classify a request (`index.php` posts).
pub const MAX_CLASSIFY_BODY: usize = 1024 * 1024;

/// Request ids: a random per-process prefix and a counter (no syscall per request). They only
/// correlate pages with log lines; nothing trusts them.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn next(&self) -> Option<HeaderValue> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `prefix-<n in hex>` written by hand (no formatting machinery per request).
        let mut buf = [0u8; 8 + 1 + 16];
        let p = self.prefix.as_bytes();
        let plen = p.len().min(8);
        buf[..plen].copy_from_slice(&p[..plen]);
        buf[plen] = b'-';
        let digits = (16 - (n.leading_zeros() / 4) as usize).max(1);
        for i in 0..digits {
            buf[plen + digits - i] = HEX[((n >> (4 * i)) & 15) as usize];
        }
        HeaderValue::from_bytes(&buf[..plen + 1 + digits]).ok()
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface, what `server` serves: a request id (any client-sent `x-request-id`
/// is replaced, on the request for the log span and the error pages, and on the response), the
/// log span, the gate, and the HTML page of an error. Plain async code instead of a tower stack:
/// nothing here is per-route, and the layers cost more than the gate (docs/PERFORMANCE.md).
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    app: Arc<App>,
    endpoints: Endpoints,
    ids: RequestIds,
    /// `Strict-Transport-Security` for every answer (`[tls]` with `tls.hsts`).
    hsts: Option<HeaderValue>,
}

impl Gate {
    /// What the gate serves with (the listener reads its limits from the configuration).
    pub fn app(&self) -> &Arc<App> {
        &self.inner.app
    }

    pub fn new(app: Arc<App>) -> Gate {
        Gate {
            inner: Arc::new(GateInner {
                hsts: app
                    .cfg
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.hsts)
                    .then(|| HeaderValue::from_static("max-age=31536000")),
                endpoints: Endpoints::new(&app),
                app,
                ids: RequestIds {
                    prefix: crate::util::random_token()[..8].to_string(),
                    next: std::sync::atomic::AtomicU64::new(1),
                },
            }),
        }
    }

    /// One request from `peer`, answered.
    pub async fn serve(&self, peer: SocketAddr, mut req: Request) -> Response {
        let app = &self.inner.app;
        let id = self.inner.ids.next();
        match &id {
            Some(v) => {
                req.headers_mut().insert(REQUEST_ID.clone(), v.clone());
            }
            None => {
                req.headers_mut().remove(&REQUEST_ID);
            }
        }
        let id_str = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        // The path only: a query may hold a code, a state or a token.
        let span = tracing::info_span!("request", id = %id_str, method = %req.method(), path = %req.uri().path());
        // Kept for the language of an error page (a reference count, not a copy).
        let accept = req.headers().get(header::ACCEPT_LANGUAGE).cloned();
        let res = entry(app, &self.inner.endpoints, peer, req)
            .instrument(span.clone())
            .await;
        // An error is logged once, here, with what caused it (making it logged nothing), and the
        // request id its page shows (the span is off at the default level).
        if let Some(ErrorPage(e)) = res.extensions().get::<ErrorPage>() {
            span.in_scope(|| log_error(e, id_str));
        }
        let mut res = crate::pages::render_error(&app.pages, res, id_str, accept.as_ref());
        span.in_scope(|| tracing::debug!(status = res.status().as_u16(), "answered"));
        if let Some(v) = id {
            res.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        if let Some(v) = &self.inner.hsts {
            res.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        res
    }
}

/// The one log line of an error that reached the edge: what failed underneath at warn (error for
/// unikgate's own faults), a refusal of the request itself at debug (the audit events say who).
fn log_error(e: &Error, request_id: &str) {
    let status = e.status().as_u16();
    match e {
        Error::StoreUnavailable(_) | Error::Internal(_) => {
            tracing::error!(request_id, status, error = %e.chain(), "failed")
        }
        _ if e.status().is_server_error() => {
            tracing::warn!(request_id, status, error = %e.chain(), "failed")
        }
        _ => tracing::debug!(request_id, status, error = %e, "refused"),
    }
}

async fn entry(app: &Arc<App>, endpoints: &Endpoints, peer: SocketAddr, req: Request) -> Response {
    let ctx = Ctx {
        client_ip: crate::upstream::proxy::client_ip(peer.ip(), req.headers(), &app.cfg),
    };
    // Timed only when a metrics listener is configured (no clock read per request otherwise).
    let started = app.cfg.server.metrics_listen.is_some().then(Instant::now);
    let (class, res) = match phases(app, endpoints, ctx, req).await {
        Ok((class, res)) => (class, res),
        Err((class, e)) => (class, e.into_response()),
    };
    // Labels cost allocations: only when a metrics listener is configured.
    if let Some(started) = started {
        metrics::counter!("unikgate_requests_total", "class" => class, "status" => res.status().as_str().to_string())
            .increment(1);
        metrics::histogram!("unikgate_request_seconds", "class" => class)
            .record(started.elapsed().as_secs_f64());
    }
    res
}

type Outcome = Result<(&'static str, Response), (&'static str, Error)>;

/// The phases, in their order.
async fn phases(app: &Arc<App>, endpoints: &Endpoints, ctx: Ctx, mut req: Request) -> Outcome {
    // 0–1: admit.
    if let Err(e) = admit::well_formed(&mut req) {
        if matches!(e, Error::MethodNotAllowed) {
            let mut res = e.into_response();
            res.headers_mut()
                .insert(header::ALLOW, admit::ALLOWED_METHODS);
            return Ok(("invalid", res));
        }
        return Err(("invalid", e));
    }
    admit::within_limits(&req).map_err(|e| ("invalid", e))?;
    // 2: classify.
    let class = classify(app, &mut req).await.map_err(|e| ("invalid", e))?;
    // 3: dispatch.
    match class {
        // unikgate's own endpoints (sign-in, link, …) are boxed: their futures are large (HTTP
        // calls to the provider and Matomo) and would otherwise make every proxied request's
        // future that large, copied at each await level.
        Class::Own(name) => Ok(("own", Box::pin(endpoints.serve(ctx, &name, req)).await)),
        // Matomo's logout URL is unikgate's sign-out.
        Class::Logout => Ok(("own", Box::pin(endpoints.serve(ctx, "sign_out", req)).await)),
        Class::UnsVerification => match &app.cfg.matomo.uns_verification_file {
            Some(f) => match Box::pin(tokio::fs::read(f)).await {
                Ok(b) => Ok((
                    "public",
                    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b).into_response(),
                )),
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "cannot read matomo.uns_verification_file");
                    Err(("public", Error::NotFound))
                }
            },
            None => public::forward_public(app, ctx, req)
                .await
                .map(|r| ("public", r))
                .map_err(|e| ("public", e)),
        },
        Class::Public => public::forward_public(app, ctx, req)
            .await
            .map(|r| ("public", r))
            .map_err(|e| ("public", e)),
        Class::Forbidden(why) => {
            crate::audit!(
                app,
                warn,
                event = "refused",
                client_ip = ctx.client_ip,
                reason = why
            );
            Err(("forbidden", Error::Forbidden(why)))
        }
        Class::BadRequest(why) => Err(("invalid", Error::BadRequest(why.into()))),
        // Matomo is under `server.public_url`'s path; nothing else is served here.
        Class::OutsideBase => Err(("outside", Error::NotFound)),
        // Boxed as well: the UI phases hold the session, the link and the retry across awaits,
        // and hyper moves the whole request future into its slot at every request (a smaller
        // future is a shorter copy on every path; bench/instructions counts it).
        Class::Ui => Ok(("ui", Box::pin(ui::serve(app, ctx, req)).await)),
    }
}

/// Phase 2, classify: what the request is (`request::classify`, pure), with a form body read
/// first (`limits::read_body`: 1 MiB, `body_timeout`) when the classifier must see it; the body
/// read is put back for Matomo. (The request is borrowed, not passed through: every move of it
/// on the hot path is a copy, counted by bench/instructions.)
async fn classify(app: &Arc<App>, req: &mut Request) -> Result<Class, Error> {
    let rule = app.classifier.body_rule(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let body_params = match rule {
        BodyRule::Stream => None,
        BodyRule::RefuseMultipart => {
            return Err(Error::BadRequest(
                "a multipart post to index.php must name its module in the query string".into(),
            ))
        }
        BodyRule::ReadForm => {
            let body = std::mem::take(req.body_mut());
            let bytes =
                crate::limits::read_body(body, MAX_CLASSIFY_BODY, app.cfg.server.body_timeout)
                    .await?;
            let params = Params::parse(&String::from_utf8_lossy(&bytes));
            *req.body_mut() = Body::new(Full::new(bytes));
            Some(params)
        }
    };
    Ok(app.classifier.classify_with(
        req.uri().path(),
        req.uri().query(),
        body_params.as_ref(),
        || crate::request::classify::is_bearer(req.headers()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        let ids = RequestIds {
            prefix: "a1b2c3d4".into(),
            next: std::sync::atomic::AtomicU64::new(0),
        };
        for want in ["a1b2c3d4-0", "a1b2c3d4-1", "a1b2c3d4-2"] {
            assert_eq!(ids.next().unwrap(), want);
        }
        for n in [15u64, 16, 255, 0xdead_beef, u64::MAX] {
            ids.next.store(n, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(ids.next().unwrap(), format!("a1b2c3d4-{n:x}").as_str());
        }
    }
}
