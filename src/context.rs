//! What the gate and unikgate's own endpoints both need to answer a request: the per-request
//! context, local redirects, saving the session into a response, minting, and the Matomo cookie
//! headers. Nothing here calls back into the gate or the endpoints (arrows: gate → endpoints → context).

use std::net::IpAddr;

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use crate::app::App;
use crate::error::Error;
use crate::session::{LinkRef, Sess};
use crate::store::Link;
use crate::upstream::matomo::MATOMO_COOKIE;

/// Per-request facts every phase may need.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub client_ip: IpAddr,
}

/// A 302 to a path on the public origin (never anywhere else).
pub fn redirect_local(app: &App, path: &str) -> Response {
    let location = format!("{}{}", app.upstream.public_origin(), path);
    let mut res = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `<prefix>/<page>?rd=<rd>`.
pub fn own_url(app: &App, page: &str, rd: &str) -> String {
    if rd.is_empty() || rd == format!("{}/", app.cfg.server.base) {
        return format!("{}/{page}", app.cfg.server.prefix);
    }
    format!(
        "{}/{page}?rd={}",
        app.cfg.server.prefix,
        percent_encoding::utf8_percent_encode(rd, crate::util::QUERY_VALUE)
    )
}

/// Saves the session after a response and adds its cookie.
pub async fn finish(app: &App, sess: Sess, mut res: Response) -> Response {
    match app.sessions.finish(sess, res.headers_mut()).await {
        Ok(()) => res,
        Err(e) => e.into_response(),
    }
}

/// Mints a Matomo session, with an audit event.
pub async fn mint(
    app: &App,
    ctx: &Ctx,
    login: &str,
    subject: &str,
    why: &'static str,
) -> Result<String, Error> {
    match app.minter.mint(&app.upstream, login, ctx.client_ip).await {
        Ok(v) => {
            metrics::counter!("unikgate_mints_total", "result" => "ok").increment(1);
            crate::audit!(
                app,
                info,
                event = "mint",
                subject = subject,
                matomo_login = login,
                client_ip = ctx.client_ip,
                reason = why,
                minter = app.minter.name()
            );
            Ok(v)
        }
        Err(e) => {
            metrics::counter!("unikgate_mints_total", "result" => "error").increment(1);
            crate::audit!(
                app,
                warn,
                event = "refused",
                subject = subject,
                matomo_login = login,
                client_ip = ctx.client_ip,
                reason = e.chain()
            );
            Err(e)
        }
    }
}

/// Replaces (or adds) `MATOMO_SESSID` in the request's `Cookie` header, keeping other cookies.
pub fn set_matomo_cookie_header(headers: &mut HeaderMap, value: &str) {
    let mut parts: Vec<String> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if let Ok(s) = v.to_str() {
            for p in s.split(';') {
                let p = p.trim();
                if !p.is_empty() && !p.starts_with("MATOMO_SESSID=") {
                    parts.push(p.to_string());
                }
            }
        }
    }
    parts.push(format!("{MATOMO_COOKIE}={value}"));
    if let Ok(v) = HeaderValue::from_str(&parts.join("; ")) {
        headers.insert(header::COOKIE, v);
    }
}

/// `Set-Cookie: MATOMO_SESSID=…` with the attributes Matomo itself uses, for the public origin.
pub fn append_matomo_cookie(app: &App, headers: &mut HeaderMap, value: &str) {
    matomo_set_cookie(app, headers, value, "");
}

pub fn clear_matomo_cookie(app: &App, headers: &mut HeaderMap) {
    matomo_set_cookie(
        app,
        headers,
        "",
        "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    );
}

fn matomo_set_cookie(app: &App, headers: &mut HeaderMap, value: &str, expiry: &str) {
    let secure = if app.cfg.public_is_https() {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{MATOMO_COOKIE}={value}; Path=/{expiry}; HttpOnly; SameSite=Lax{secure}"
    )) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// What a session keeps of its link (no link-store read on the hot path).
pub fn link_ref(l: &Link) -> LinkRef {
    LinkRef {
        id: l.id.clone(),
        matomo_login: l.matomo_login.clone(),
        superuser: l.superuser,
    }
}

/// What the `[access]` rules say of a session made under other rules (its stamp differs).
pub enum Readmitted {
    /// Still allowed: the caller records the new stamp in the session.
    Allowed,
    /// Refused (the session and its Matomo session are ended): the page to show.
    Refused(Error),
    /// The rules read a claim the session did not keep (the session is ended): sign in again.
    SignInAgain,
}

/// Checks a session again under the current `[access]` rules (cold: only when its stamp is not
/// the rules'). A refusal ends this session and logs its Matomo session out of Matomo, with an
/// audit event naming the rule.
pub async fn readmit(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    user: &crate::session::UserSession,
) -> Result<Readmitted, Error> {
    use crate::access::Recheck;
    let verdict = app.access.check(&user.subject, &user.claims);
    let out = match verdict {
        Recheck::Allowed => return Ok(Readmitted::Allowed),
        Recheck::Refused(r) => {
            crate::audit!(
                app,
                warn,
                event = "refused",
                subject = user.subject,
                client_ip = ctx.client_ip,
                reason = r.rule(app.access.config()),
                when = "access rules changed"
            );
            Readmitted::Refused(Error::NotAllowed(
                user.display.clone().unwrap_or_else(|| user.subject.clone()),
            ))
        }
        Recheck::SignInAgain => {
            crate::audit!(
                app,
                info,
                event = "sign_out",
                subject = user.subject,
                client_ip = ctx.client_ip,
                reason = "access rules read a claim this session did not keep: sign in again"
            );
            Readmitted::SignInAgain
        }
    };
    sess.end().await?;
    if let Some(cookie) = user.matomo.as_ref().and_then(|m| m.cookie.as_deref()) {
        if let Err(e) = crate::upstream::matomo::logout(&app.upstream, cookie, ctx.client_ip).await
        {
            tracing::warn!(error = %e.chain(), "could not log the Matomo session out");
        }
    }
    Ok(out)
}

/// Records the session `id` under its identity and provider session, so that unlinking the
/// identity, or a back-channel logout naming it, ends it on every replica.
pub async fn index_session(
    app: &App,
    id: &str,
    user: &crate::session::UserSession,
) -> Result<(), Error> {
    app.session_index
        .index_session(&crate::store::SessionEntry {
            issuer: user.issuer.clone(),
            subject: user.subject.clone(),
            session_id: id.to_string(),
            sid: user.sid.clone(),
            id_sub: user.id_sub.clone(),
            created_at: crate::util::now_ms(),
            client_ip: user.client_ip.clone(),
        })
        .await
}
