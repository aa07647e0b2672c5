//! The life of a request, phase by phase: limits → classify → (own endpoint | public | UI gate) →
//! ensure the Matomo session → forward → fix the response.
//!
//! Invariants: every request is classified before anything else looks at it; a UI request reaches
//! Matomo only with a Matomo cookie unikgate minted for the signed-in user (or, with
//! `password_login`, untouched for browsers that are not signed in to unikgate).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tracing::Instrument;

use crate::app::App;
use crate::context::{
    append_matomo_cookie, finish, mint, own_url, redirect_local, set_matomo_cookie_header, Ctx,
};
use crate::error::Error;
use crate::request::classify::{BodyRule, Class};
use crate::request::php::Params;
use crate::session::{MatomoSession, Sess, UserSession};
use crate::upstream::matomo::{self, MATOMO_COOKIE};
use crate::util::now_ms;

/// Longest path + query accepted.
pub const MAX_URI: usize = 8 * 1024;
/// Most header bytes (names + values) accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Largest form body read to classify a request (`index.php` posts).
pub const MAX_CLASSIFY_BODY: usize = 1024 * 1024;
/// Largest 403 body read to recognise Matomo's sign-in page.
const MAX_403_BODY: usize = 4 * 1024 * 1024;

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
    ids: RequestIds,
}

impl Gate {
    /// What the gate serves with (the listener reads its limits from the configuration).
    pub fn app(&self) -> &Arc<App> {
        &self.inner.app
    }

    pub fn new(app: Arc<App>) -> Gate {
        Gate {
            inner: Arc::new(GateInner {
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
        let res = entry(app, peer, req).instrument(span.clone()).await;
        let mut res = crate::pages::render_error(&app.pages, res, id_str, accept.as_ref());
        span.in_scope(|| tracing::debug!(status = res.status().as_u16(), "answered"));
        if let Some(v) = id {
            res.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        res
    }
}

async fn entry(app: &Arc<App>, peer: SocketAddr, req: Request) -> Response {
    let ctx = Ctx {
        client_ip: crate::upstream::proxy::client_ip(peer.ip(), req.headers(), &app.cfg),
    };
    // Timed only when a metrics listener is configured (no clock read per request otherwise).
    let started = app.cfg.server.metrics_listen.is_some().then(Instant::now);
    let (class, res) = match handle(app, &ctx, req).await {
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

/// What a request must be before anything looks at it (RFC 9110 / 9112): a method unikgate
/// serves, one `Host` on HTTP/1.1, an expectation it can meet, an origin-form target.
fn well_formed(req: &mut Request) -> Result<(), Error> {
    // CONNECT asks for a tunnel and TRACE echoes the request back (its cookies included):
    // neither is Matomo's, on any path.
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(Error::MethodNotAllowed);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Err(Error::BadRequest(
                "an HTTP/1.1 request must carry a Host header".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(
                "a request must carry one Host header, not several".into(),
            ))
        }
        _ => {}
    }
    // `100-continue` is met by the server itself (it answers 100 when the body is first read)
    // and never forwarded; nothing else can be.
    for v in req.headers().get_all(header::EXPECT) {
        if !v
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            return Err(Error::ExpectationFailed);
        }
    }
    // Absolute-form (`GET http://host?x HTTP/1.1`): the target becomes origin-form, with `/`
    // when it has no path, before it is classified or forwarded.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let origin_form = if pq.starts_with('/') {
            pq.to_string()
        } else {
            format!("/{pq}")
        };
        *req.uri_mut() = origin_form
            .parse()
            .map_err(|_| Error::BadRequest("the request target is not a valid path".into()))?;
    }
    Ok(())
}

async fn handle(app: &Arc<App>, ctx: &Ctx, mut req: Request) -> Outcome {
    if let Err(e) = well_formed(&mut req) {
        if matches!(e, Error::MethodNotAllowed) {
            let mut res = e.into_response();
            res.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Ok(("invalid", res));
        }
        return Err(("invalid", e));
    }
    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > MAX_URI {
        return Err(("invalid", Error::UriTooLong));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(("invalid", Error::HeadersTooLarge));
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (req, body_params) =
        match app
            .classifier
            .body_rule(req.method(), &path, query.as_deref(), ctype.as_deref())
        {
            BodyRule::Stream => (req, None),
            BodyRule::RefuseMultipart => {
                return Err((
                    "invalid",
                    Error::BadRequest(
                        "a multipart post to index.php must name its module in the query string"
                            .into(),
                    ),
                ))
            }
            BodyRule::ReadForm => {
                let (parts, body) = req.into_parts();
                let bytes = match crate::limits::read_body(
                    body,
                    MAX_CLASSIFY_BODY,
                    app.cfg.server.body_timeout,
                )
                .await
                {
                    Ok(b) => b,
                    Err(e) => return Err(("invalid", e)),
                };
                let params = Params::parse(&String::from_utf8_lossy(&bytes));
                (
                    Request::from_parts(parts, Body::new(Full::new(bytes))),
                    Some(params),
                )
            }
        };
    let class = app
        .classifier
        .classify_with(&path, query.as_deref(), body_params.as_ref(), || {
            crate::request::classify::is_bearer(req.headers())
        });
    match class {
        // unikgate's own endpoints (sign-in, link, …) are boxed: their futures are large (HTTP
        // calls to the provider and Matomo) and would otherwise make every proxied request's
        // future that large, copied at each await level.
        Class::Own(ep) => Ok((
            "own",
            Box::pin(crate::endpoints::own(app, ctx, &ep, req)).await,
        )),
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
            None => forward_public(app, ctx, req)
                .await
                .map(|r| ("public", r))
                .map_err(|e| ("public", e)),
        },
        Class::Public => forward_public(app, ctx, req)
            .await
            .map(|r| ("public", r))
            .map_err(|e| ("public", e)),
        Class::Forbidden(why) => {
            tracing::warn!(target: "unikgate::audit", event = "refused", client_ip = %ctx.client_ip, reason = why);
            Err(("forbidden", Error::Forbidden(why)))
        }
        Class::BadRequest(why) => Err(("invalid", Error::BadRequest(why.into()))),
        Class::Logout => Ok((
            "own",
            Box::pin(crate::endpoints::own(app, ctx, "sign_out", req)).await,
        )),
        Class::Ui { login_module } => Ok(("ui", ui(app, ctx, req, login_module).await)),
    }
}

/// Public traffic: forwarded as it is (after the header policy). When it carries the Matomo cookie
/// unikgate minted, it counts as activity of that Matomo session.
async fn forward_public(app: &Arc<App>, ctx: &Ctx, req: Request) -> Result<Response, Error> {
    if let Some(browser) = matomo::request_cookie(req.headers(), MATOMO_COOKIE) {
        if app.sessions.public_activity_due(req.headers()) {
            Box::pin(record_public_activity(app, req.headers(), &browser)).await;
        }
    }
    let (mut parts, body) = req.into_parts();
    app.upstream
        .sanitize_request(&mut parts.headers, ctx.client_ip);
    app.upstream.send(Request::from_parts(parts, body)).await
}

/// Public traffic with the Matomo cookie unikgate minted counts as activity of that Matomo
/// session. Activity bookkeeping must never block public traffic: errors are logged only.
async fn record_public_activity(app: &Arc<App>, headers: &HeaderMap, browser: &str) {
    let mut sess = app.sessions.open(headers);
    if let Ok(data) = app.sessions.load(&mut sess).await {
        let mut changed = false;
        if let Some(m) = data.user.as_mut().and_then(|u| u.matomo.as_mut()) {
            if m.is_cookie(browser)
                && now_ms() - m.seen >= app.sessions.touch_every().as_millis() as i64
            {
                m.seen = now_ms();
                changed = true;
            }
        }
        if changed {
            sess.changed();
            let mut ignored = HeaderMap::new();
            if let Err(e) = app.sessions.finish(sess, &mut ignored).await {
                tracing::warn!(error = %e, "could not record Matomo activity");
            }
        }
    }
}

/// The Matomo UI: signed in and linked → ensure the Matomo session, then forward.
async fn ui(app: &Arc<App>, ctx: &Ctx, req: Request, login_module: bool) -> Response {
    let mut sess = app.sessions.open(req.headers());
    let res = match ui_inner(app, ctx, &mut sess, req, login_module).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    finish(app, sess, res).await
}

async fn ui_inner(
    app: &Arc<App>,
    ctx: &Ctx,
    sess: &mut Sess,
    req: Request,
    login_module: bool,
) -> Result<Response, Error> {
    let uri = req.uri().clone();
    let rd = || {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        crate::request::redirect::safe_rd(pq, &app.cfg.server.prefix)
    };
    // Read shared (no copy of the session); the user is copied only when this request changes
    // it, and then goes back into the session, which is saved.
    let data = if sess.had_cookie() {
        Some(app.sessions.load_shared(sess).await?)
    } else {
        None
    };
    let Some(signed_in) = data.as_ref().and_then(|d| d.user.as_ref()) else {
        if app.cfg.matomo.password_login {
            // Matomo's own login and the sessions it makes pass through untouched.
            let _ = login_module;
            return forward_plain(app, ctx, req).await;
        }
        if app.oidc.is_none() {
            return Err(Error::NotConfigured);
        }
        return Ok(redirect_local(app, &own_url(app, "sign_in", &rd())));
    };
    let mut user = Cow::Borrowed(signed_in);
    let res = signed_in_ui(app, ctx, sess, req, &mut user, &rd).await;
    // A changed user goes back into the session unless the session ended; the session is saved
    // only if something marked it changed.
    if let (Cow::Owned(user), false) = (user, sess.is_ended()) {
        if let Ok(data) = app.sessions.load(sess).await {
            data.user = Some(user);
        }
    }
    res
}

/// The signed-in part of the UI gate: the link, the Matomo session, the forward, the retry.
async fn signed_in_ui(
    app: &Arc<App>,
    ctx: &Ctx,
    sess: &mut Sess,
    req: Request,
    user: &mut Cow<'_, UserSession>,
    rd: &(dyn Fn() -> String + Sync),
) -> Result<Response, Error> {
    let link = match &user.link {
        Some(l) => l.clone(),
        // Not linked when this session began: linked since (another browser, the CLI)?
        None => match Box::pin(linked_since(app, sess, user.to_mut())).await? {
            None => return Ok(redirect_local(app, &own_url(app, "link", &rd()))),
            Some(r) => r,
        },
    };
    if link.superuser && app.cfg.matomo.deny_superusers {
        Box::pin(sess.end()).await?;
        return Err(Error::SuperuserDenied);
    }
    let now = now_ms();
    let browser = matomo::request_cookie(req.headers(), MATOMO_COOKIE);
    let idle = app.cfg.matomo.idle_timeout.as_millis() as i64;
    let margin = (idle / 10).min(60_000);
    let fresh = user.matomo.as_ref().is_some_and(|m| {
        m.login == link.matomo_login
            && browser.as_deref().is_some_and(|b| m.is_cookie(b))
            && now - m.seen < idle - margin
    });
    let mut minted: Option<String> = None;
    let cookie = if fresh {
        browser.unwrap_or_default()
    } else {
        // Boxed (as every cold path here): minting's future is large, the hot path's is not.
        let v = Box::pin(mint(app, ctx, &link.matomo_login, &user.subject, "ui")).await?;
        minted = Some(v.clone());
        v
    };
    // The Matomo session's activity rides on the session's own activity write: one request per
    // session and `touch_every` (the one that claimed it while reading the session) records both,
    // so a burst of parallel requests writes once. `seen` then lags real use by at most two
    // `touch_every` (60 s), which only makes the gate re-mint earlier, never later.
    let record_seen = minted.is_some()
        || (sess.will_save()
            && user
                .matomo
                .as_ref()
                .is_some_and(|m| now - m.seen >= app.sessions.touch_every().as_millis() as i64));
    if record_seen {
        user.to_mut().matomo = Some(MatomoSession::minted(&link.matomo_login, &cookie, now));
    }
    let method = req.method().clone();
    let (mut parts, body) = req.into_parts();
    app.upstream
        .sanitize_request_as(&mut parts.headers, ctx.client_ip, Some(&cookie));
    // Kept for the one retry below (GET/HEAD whose Matomo cookie was not just minted).
    // (A tuple, not a `Resend`: kept across the await below, a struct holding the method too
    // made every request's future dearer, ~700 instructions on every path in bench/instructions.)
    let retry = (minted.is_none() && (method == Method::GET || method == Method::HEAD))
        .then(|| (parts.uri.clone(), parts.headers.clone()));
    let mut res = app.upstream.send(Request::from_parts(parts, body)).await?;
    // Matomo answered as to an anonymous visitor: mint once more and retry once.
    if let (StatusCode::FORBIDDEN, Some((uri, headers))) = (res.status(), retry) {
        let resend = Resend {
            method,
            uri,
            headers,
        };
        let retried = Box::pin(retry_as_anonymous(app, ctx, user, &link, res, resend)).await?;
        res = retried.0;
        if retried.1.is_some() {
            minted = retried.1;
        }
    }
    if let Some(v) = &minted {
        let already =
            matomo::set_cookie_value(res.headers(), MATOMO_COOKIE).as_deref() == Some(v.as_str());
        if !already {
            append_matomo_cookie(app, res.headers_mut(), v);
        }
    }
    if record_seen || minted.is_some() {
        // The caller puts `user` back into the session; this saves it.
        sess.changed();
    }
    Ok(res)
}

/// Not linked when this session began: linked since (another browser, the CLI)? Then the session
/// is indexed under its identity and carries the link from now on.
async fn linked_since(
    app: &Arc<App>,
    sess: &Sess,
    user: &mut crate::session::UserSession,
) -> Result<Option<crate::session::LinkRef>, Error> {
    let Some(l) = app.links.get(&user.issuer, &user.subject).await? else {
        return Ok(None);
    };
    if let Some(id) = sess.id() {
        crate::context::index_session(app, &id, user).await?;
    }
    let r = crate::context::link_ref(&l);
    user.link = Some(r.clone());
    Ok(Some(r))
}

/// A bodiless request (GET or HEAD) as it went to Matomo, to send once more.
struct Resend {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

/// Matomo answered 403 to a request sent with the Matomo cookie: if the answer is its sign-in
/// page (the Matomo session is gone), mints a new session and sends the request once more.
/// Returns the answer to give and the value minted, if any.
async fn retry_as_anonymous(
    app: &Arc<App>,
    ctx: &Ctx,
    user: &mut Cow<'_, UserSession>,
    link: &crate::session::LinkRef,
    res: Response,
    resend: Resend,
) -> Result<(Response, Option<String>), Error> {
    let Resend {
        method,
        uri: orig_uri,
        mut headers,
    } = resend;
    let (rparts, rbody) = res.into_parts();
    let bytes = match read_prefix(rbody, MAX_403_BODY).await {
        Ok(Prefix::Whole(b)) => b,
        // Larger than any sign-in page: Matomo's own page, passed on whole.
        Ok(Prefix::Longer(body)) => return Ok((Response::from_parts(rparts, body), None)),
        Err(e) => {
            tracing::warn!(error = %e, "Matomo's 403 answer broke off while unikgate read it");
            return Err(Error::MatomoUnexpected(
                "Matomo's answer (a 403) broke off before its end; reload the page".into(),
            ));
        }
    };
    if !matomo::is_anonymous_page(rparts.status, &bytes) {
        return Ok((Response::from_parts(rparts, Body::from(bytes)), None));
    }
    tracing::info!(subject = %user.subject, "Matomo answered as anonymous; minting again");
    let v = mint(app, ctx, &link.matomo_login, &user.subject, "retry").await?;
    set_matomo_cookie_header(&mut headers, &v);
    user.to_mut().matomo = Some(MatomoSession::minted(&link.matomo_login, &v, now_ms()));
    let mut retry = Request::new(Body::empty());
    *retry.method_mut() = method;
    *retry.uri_mut() = orig_uri;
    *retry.headers_mut() = headers;
    let res = app.upstream.send(retry).await?;
    Ok((res, Some(v)))
}

/// The start of an answer's body, read to recognise it.
enum Prefix {
    /// The whole body, no longer than the limit.
    Whole(Bytes),
    /// Longer: the body as it came (what was read, then the rest).
    Longer(Body),
}

async fn read_prefix(mut body: Body, max: usize) -> Result<Prefix, axum::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > max {
            use futures_util::StreamExt;
            let read = buf.freeze();
            let whole = futures_util::stream::once(async move { Ok::<_, axum::Error>(read) })
                .chain(body.into_data_stream());
            return Ok(Prefix::Longer(Body::from_stream(whole)));
        }
    }
    Ok(Prefix::Whole(buf.freeze()))
}

/// Forwards without touching sessions (password-login browsers).
async fn forward_plain(app: &Arc<App>, ctx: &Ctx, req: Request) -> Result<Response, Error> {
    let (mut parts, body) = req.into_parts();
    app.upstream
        .sanitize_request(&mut parts.headers, ctx.client_ip);
    app.upstream.send(Request::from_parts(parts, body)).await
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

    #[tokio::test]
    async fn a_large_403_page_is_passed_on_whole_and_a_cut_one_is_an_error() {
        // Longer than any sign-in page: passed on as it came, every byte.
        let big = vec![b'p'; MAX_403_BODY + 10];
        let pieces: Vec<Result<Bytes, std::io::Error>> = big
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(pieces));
        let Ok(Prefix::Longer(whole)) = read_prefix(body, MAX_403_BODY).await else {
            panic!("not passed on");
        };
        let got = whole.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), big.len());
        assert!(got.iter().all(|b| *b == b'p'));
        // A short one is read whole, to be recognised.
        let body = Body::from("<html>login</html>");
        assert!(matches!(
            read_prefix(body, MAX_403_BODY).await,
            Ok(Prefix::Whole(b)) if b == "<html>login</html>"
        ));
        // One that breaks off is an error (a page of its own), not an empty 403.
        let cut: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"<html>")),
            Err(std::io::Error::other("reset")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(cut));
        assert!(read_prefix(body, MAX_403_BODY).await.is_err());
    }
}
