//! unikgate's own endpoints under the prefix: sign-in, start, callback, link, account, unlink,
//! sign-out, health and readiness, the stylesheet.
//!
//! Invariant: every state-changing endpoint is a POST checked against the session's CSRF token
//! (the only GET that changes state is sign-out, which Matomo's own logout link needs).

mod account;
mod health;
mod link;
mod sign_in;
mod sign_out;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::app::App;
use crate::context::{
    append_matomo_cookie, clear_matomo_cookie, mint, own_url, redirect_local, Ctx,
};
use crate::error::Error;
use crate::pages::i18n::Texts;
use crate::pages::{AccountPage, LinkPage, SignInPage};
use crate::request::redirect::safe_rd;
use crate::session::{MatomoSession, Sess, UserSession};
use crate::store::{Link, LinkConflict};
use crate::upstream::matomo::{self, Proof, MATOMO_COOKIE};
use crate::util::now_ms;

/// Largest form accepted by unikgate's own endpoints.
pub const MAX_FORM: usize = 64 * 1024;
/// Link attempts allowed per identity and per client IP in [`LINK_WINDOW`].
pub const LINK_ATTEMPTS: u32 = 5;
pub const LINK_WINDOW: Duration = Duration::from_secs(600);

pub(super) type Form = HashMap<String, String>;

/// What every handler of one request reads: the app, the client, the request's headers and its
/// language, handed on as one value.
#[derive(Clone, Copy)]
struct Visit<'a> {
    app: &'a App,
    ctx: &'a Ctx,
    headers: &'a HeaderMap,
    t: &'a Texts,
}

fn parse_pairs(s: &str) -> Form {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

async fn read_form(app: &App, body: Body) -> Result<Form, Error> {
    let bytes = crate::limits::read_body(body, MAX_FORM, app.cfg.server.body_timeout).await?;
    Ok(parse_pairs(&String::from_utf8_lossy(&bytes)))
}

/// Dispatches an own endpoint; loads and saves the session around it.
pub async fn own(app: &Arc<App>, ctx: &Ctx, ep: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parse_pairs(parts.uri.query().unwrap_or(""));
    let m = &parts.method;
    let t = crate::pages::i18n::for_request(&parts.headers);
    // Endpoints without a session.
    match (m, ep) {
        (&Method::GET, "healthz") => return (StatusCode::OK, "ok\n").into_response(),
        (&Method::GET, "readyz") => return health::readyz(app).await,
        (&Method::GET, "static/unikgate.css") => return crate::pages::stylesheet(),
        (&Method::GET, "static/fragment.js") => return crate::pages::fragment_script(),
        (&Method::GET, "signed_out") => {
            return app.pages.render(
                StatusCode::OK,
                &crate::pages::SignedOutPage {
                    t,
                    title: t.get("signed_out.title"),
                    prefix: &app.cfg.server.prefix,
                },
            )
        }
        (&Method::GET, "metrics") => return Error::NotFound.into_response(),
        // Server to server: no session, no cookie, no page, never a redirect.
        (&Method::POST, "backchannel_logout") => {
            return sign_out::backchannel_logout(app, body).await
        }
        _ => {}
    }
    let mut sess = app.sessions.open(&parts.headers);
    let visit = Visit {
        app,
        ctx,
        headers: &parts.headers,
        t,
    };
    let res = match (m, ep) {
        (&Method::GET, "sign_in") | (&Method::GET, "") => {
            sign_in::sign_in(app, &mut sess, &query, t).await
        }
        (&Method::POST, "start") => match read_form(app, body).await {
            Ok(f) => sign_in::start(app, &mut sess, &f, true).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "start") if app.cfg.provider.allow_get_start => {
            sign_in::start(app, &mut sess, &query, false).await
        }
        (&Method::GET, "callback") => sign_in::callback(app, ctx, &mut sess, &query).await,
        (&Method::GET, "link") => {
            link::link_page(visit, &mut sess, &query, link::Notice::NONE).await
        }
        (&Method::POST, "link") => match read_form(app, body).await {
            Ok(f) => link::link_post(visit, &mut sess, &f).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "account") => account::account(app, &mut sess, t).await,
        (&Method::GET, "status") => account::status(app, &mut sess, &parts.headers).await,
        (&Method::POST, "unlink") => match read_form(app, body).await {
            Ok(f) => account::unlink(app, ctx, &mut sess, &parts.headers, &f).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "sign_out") => match read_form(app, body).await {
            Ok(f) => sign_out::sign_out(app, ctx, &mut sess, &parts.headers, Some(&f)).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "sign_out") => {
            sign_out::sign_out(app, ctx, &mut sess, &parts.headers, None).await
        }
        (
            _,
            "sign_in" | "start" | "callback" | "link" | "account" | "status" | "unlink"
            | "sign_out" | "signed_out" | "healthz" | "readyz" | "backchannel_logout",
        ) => {
            let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            Ok(r)
        }
        _ => Err(Error::NotFound),
    };
    let mut res = res.unwrap_or_else(|e| e.into_response());
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
    crate::context::finish(app, sess, res).await
}

fn oidc(app: &App) -> Result<&crate::oidc::Oidc, Error> {
    app.oidc.as_ref().ok_or(Error::NotConfigured)
}

fn rd_of(app: &App, q: &Form) -> String {
    safe_rd(
        q.get("rd").map(String::as_str).unwrap_or("/"),
        &app.cfg.server.prefix,
    )
}

async fn check_csrf(app: &App, sess: &mut Sess, f: &Form) -> Result<(), Error> {
    let data = app.sessions.load(sess).await?;
    if data.csrf_ok(f.get("csrf").map(String::as_str).unwrap_or("")) {
        Ok(())
    } else {
        tracing::warn!(target: "unikgate::audit", event = "refused", reason = "CSRF token missing or wrong");
        Err(Error::Csrf)
    }
}

/// The signed-in user, or a redirect to sign in.
/// The signed-in user of this session, if any (see [`to_sign_in`] for the others).
async fn signed_in_user(app: &App, sess: &mut Sess) -> Result<Option<UserSession>, Error> {
    Ok(app.sessions.load(sess).await?.user.clone())
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
            tracing::warn!(error = %e, "could not log the Matomo session out");
        }
    }
}
