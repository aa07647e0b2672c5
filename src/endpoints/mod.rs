//! unikgate's own endpoints under the prefix: sign-in, start, callback, link, account, unlink,
//! sign-out, health and readiness, the stylesheet.
//!
//! Invariant: every state-changing endpoint is a POST checked against the session's CSRF token
//! (the only GET that changes state is sign-out, which Matomo's own logout link needs).

mod account;
mod admin;
mod extract;
mod health;
mod link;
mod provision;
mod sign_in;
mod sign_out;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::app::App;
use crate::context::{
    append_matomo_cookie, clear_matomo_cookie, mint, own_url, redirect_local, Ctx, Readmitted,
};
use crate::error::Error;
use crate::pages::{AccountPage, LinkPage, SignInPage};
use crate::request::redirect::safe_rd;
use crate::session::{MatomoSession, Sess, UserSession};
use crate::store::{Link, LinkConflict};
use crate::upstream::matomo::{self, Proof, MATOMO_COOKIE};
use crate::util::now_ms;

pub use admin::link_rows;
pub use extract::MAX_FORM;
use extract::{CsrfForm, Pairs as Form, Query, Session, SessionSlot, Visit};

/// Link attempts allowed per identity and per client IP in [`LINK_WINDOW`].
pub const LINK_ATTEMPTS: u32 = 5;
pub const LINK_WINDOW: Duration = Duration::from_secs(600);

/// unikgate's own endpoints: an axum router mounted under the prefix. The gate hands it every
/// request the classifier found under the prefix (and Matomo's logout URL, as `sign_out`),
/// with the path the classifier normalised; routing, methods (405 with `Allow`) and extraction
/// are axum's.
#[derive(Clone)]
pub struct Endpoints {
    router: Router,
    prefix: String,
}

impl Endpoints {
    pub fn new(app: &Arc<App>) -> Endpoints {
        let prefix = app.cfg.server.prefix.clone();
        let at = |name: &str| format!("{prefix}/{name}");
        let mut start = post(sign_in::start);
        if app.cfg.provider.allow_get_start {
            start = start.get(sign_in::start_get);
        }
        // Routes with a session: opened before the handler, saved after it (`around_session`).
        let with_session = Router::new()
            .route(&at(""), get(sign_in::sign_in))
            .route(&at("sign_in"), get(sign_in::sign_in))
            .route(&at("start"), start)
            .route(&at("callback"), get(sign_in::callback))
            .route(&at("link"), get(link::link_get).post(link::link_post))
            .route(&at("account"), get(account::account))
            .route(&at("status"), get(account::status))
            .route(&at("unlink"), post(account::unlink))
            .route(&at("provision"), post(provision::provision_post))
            .route(&at("admin"), get(admin::page))
            .route(&at("admin/api/me"), get(admin::me))
            .route(&at("admin/api/links"), get(admin::links))
            .route(&at("admin/api/events"), get(admin::events))
            .route(&at("admin/api/unlink"), post(admin::unlink))
            .route(&at("admin/api/end_sessions"), post(admin::end_sessions))
            .route(
                &at("sign_out"),
                get(sign_out::sign_out_get).post(sign_out::sign_out_post),
            )
            .route_layer(middleware::from_fn_with_state(app.clone(), around_session));
        // Routes without one.
        let router = Router::new()
            .route(&at("healthz"), get(|| async { (StatusCode::OK, "ok\n") }))
            .route(&at("readyz"), get(health::readyz))
            .route(
                &at("static/unikgate.css"),
                get(|| async { crate::pages::stylesheet() }),
            )
            .route(
                &at("static/fragment.js"),
                get(|| async { crate::pages::fragment_script() }),
            )
            .route(
                &at("static/admin.js"),
                get(|| async { crate::pages::admin_script() }),
            )
            .route(&at("signed_out"), get(sign_out::signed_out))
            // Server to server: no session, no cookie, no page, never a redirect.
            .route(
                &at("backchannel_logout"),
                post(sign_out::backchannel_logout),
            )
            .merge(with_session)
            .fallback(|| async { Error::NotFound })
            .with_state(app.clone());
        Endpoints { router, prefix }
    }

    /// Answers a request for the endpoint `name` (the normalised path below the prefix; `""` for
    /// the prefix itself).
    pub async fn serve(&self, ctx: Ctx, name: &str, mut req: Request) -> Response {
        let target = match req.uri().query() {
            Some(q) => format!("{}/{name}?{q}", self.prefix),
            None => format!("{}/{name}", self.prefix),
        };
        match target.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Error::NotFound.into_response(),
        }
        req.extensions_mut().insert(ctx);
        // Routing cannot fail (`Router`'s error type is `Infallible`).
        match tower::ServiceExt::oneshot(self.router.clone(), req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}

/// The layer around the session routes: the session is opened from the request's cookie before
/// the handler and saved (with its cookie) after it, once.
async fn around_session(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let slot = SessionSlot(Arc::new(tokio::sync::Mutex::new(
        app.sessions.open(req.headers()),
    )));
    req.extensions_mut().insert(slot.clone());
    let mut res = next.run(req).await;
    let Ok(sess) = Arc::try_unwrap(slot.0).map(tokio::sync::Mutex::into_inner) else {
        tracing::error!("a session handle outlived its request");
        return Error::Internal("a session handle outlived its request".into()).into_response();
    };
    // Forms on these pages redirect to the provider (start, sign-out): allow its resolved origins.
    if res.headers().contains_key(header::CONTENT_SECURITY_POLICY) {
        if let Some(o) = &app.oidc {
            let ep = o.endpoints().await;
            let origins = std::iter::once(ep.authorize.origin().ascii_serialization()).chain(
                ep.end_session
                    .iter()
                    .map(|u| u.origin().ascii_serialization()),
            );
            res.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                crate::pages::PageEnv::csp_for(origins),
            );
        }
    }
    crate::context::finish(&app, sess, res).await
}

fn oidc(app: &App) -> Result<&crate::oidc::Oidc, Error> {
    app.oidc.as_ref().ok_or(Error::NotConfigured)
}

fn rd_of(app: &App, q: &Form) -> String {
    safe_rd(
        q.get("rd").map(String::as_str).unwrap_or(""),
        &app.cfg.server.base,
        &app.cfg.server.prefix,
    )
}

/// The signed-in user of this session, if any (see [`to_sign_in`] for the others). A session
/// let in under other `[access]` rules is checked again: refused, it ends with the refusal's page;
/// lacking a claim the rules now read, it ends (the person signs in again).
async fn signed_in_user(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
) -> Result<Option<UserSession>, Error> {
    let Some(mut user) = app.sessions.load(sess).await?.user.clone() else {
        return Ok(None);
    };
    if user.policy != app.access.stamp() {
        match crate::context::readmit(app, ctx, sess, &user).await? {
            Readmitted::Allowed => {
                user.policy = app.access.stamp();
                let data = app.sessions.load(sess).await?;
                if let Some(u) = &mut data.user {
                    u.policy = user.policy;
                }
                sess.changed();
            }
            Readmitted::Refused(e) => return Err(e),
            Readmitted::SignInAgain => return Ok(None),
        }
    }
    Ok(Some(user))
}

/// The signed-in user for the same-origin JSON answers (`status`, the admin API): none without a
/// session cookie, and none for a person the access rules now refuse (that session has just
/// ended: a JSON answer is no place for the refusal's page).
async fn json_user(app: &App, ctx: &Ctx, sess: &mut Sess) -> Result<Option<UserSession>, Error> {
    if !sess.had_cookie() {
        return Ok(None);
    }
    match signed_in_user(app, ctx, sess).await {
        Err(Error::NotAllowed(_)) => Ok(None),
        other => other,
    }
}

/// `Sec-Fetch-Site` when the browser says another site's page made the request (the
/// same-origin JSON answers refuse it), at most 32 characters of it.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("same-origin");
    (site != "same-origin" && site != "none").then(|| site.chars().take(32).collect())
}

/// 429 for too many link or account attempts, with when to try again.
fn rate_limited() -> Response {
    let mut r = Error::RateLimited.into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(LINK_WINDOW.as_secs()),
    );
    r
}

/// The way to the sign-in page, coming back to `rd`.
fn to_sign_in(app: &App, rd: &str) -> Response {
    redirect_local(app, &own_url(app, "sign_in", rd))
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut res = (status, v.to_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// Saves the session now (it needs its id) and records it under its identity, so that unlinking
/// the identity anywhere ends it.
async fn index_this_session(app: &App, sess: &mut Sess) -> Result<(), Error> {
    let user = app.sessions.load(sess).await?.user.clone();
    if let (Some(id), Some(user)) = (sess.save_now().await?, user) {
        crate::context::index_session(app, &id, &user).await?;
    }
    Ok(())
}

/// Logs the Matomo session of the request's cookie out of Matomo, unless it is `ended` (logged
/// out already). A failure is logged: unikgate's side ends either way.
async fn logout_request_matomo(app: &App, ctx: &Ctx, headers: &HeaderMap, ended: Option<&str>) {
    if let Some(c) = matomo::request_cookie(headers, MATOMO_COOKIE) {
        if ended == Some(c.as_str()) {
            return;
        }
        if let Err(e) = matomo::logout(&app.upstream, &c, ctx.client_ip).await {
            tracing::warn!(error = %e.chain(), "could not log the Matomo session out");
        }
    }
}
