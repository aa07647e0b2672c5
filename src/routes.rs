//! unikgate's own endpoints under the prefix: sign-in, start, callback, link, account, unlink,
//! sign-out, health and readiness, the stylesheet.
//!
//! Invariant: every state-changing endpoint is a POST checked against the session's CSRF token
//! (the only GET that changes state is sign-out, which Matomo's own logout link needs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::error::Error;
use crate::i18n::Texts;
use crate::links::{Link, LinkConflict};
use crate::matomo::{self, Proof, MATOMO_COOKIE};
use crate::now_ms;
use crate::pages::{AccountPage, LinkPage, SignInPage};
use crate::redirect::safe_rd;
use crate::session::{MatomoSession, Sess, UserSession};
use crate::web::{append_matomo_cookie, clear_matomo_cookie, mint, own_url, redirect_local, Ctx};
use crate::App;

/// Largest form accepted by unikgate's own endpoints.
pub const MAX_FORM: usize = 64 * 1024;
/// Link attempts allowed per identity and per client IP in [`LINK_WINDOW`].
pub const LINK_ATTEMPTS: u32 = 5;
pub const LINK_WINDOW: Duration = Duration::from_secs(600);

type Form = HashMap<String, String>;

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
    let t = crate::i18n::for_request(&parts.headers);
    // Endpoints without a session.
    match (m, ep) {
        (&Method::GET, "healthz") => return (StatusCode::OK, "ok\n").into_response(),
        (&Method::GET, "readyz") => return readyz(app).await,
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
        (&Method::POST, "backchannel_logout") => return backchannel_logout(app, body).await,
        _ => {}
    }
    let mut sess = app.sessions.open(&parts.headers);
    let res = match (m, ep) {
        (&Method::GET, "sign_in") | (&Method::GET, "") => sign_in(app, &mut sess, &query, t).await,
        (&Method::POST, "start") => match read_form(app, body).await {
            Ok(f) => start(app, &mut sess, &f, true).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "start") if app.cfg.provider.allow_get_start => {
            start(app, &mut sess, &query, false).await
        }
        (&Method::GET, "callback") => callback(app, ctx, &mut sess, &query).await,
        (&Method::GET, "link") => {
            link_page(
                app,
                ctx,
                &mut sess,
                &parts.headers,
                &query,
                None,
                false,
                StatusCode::OK,
                t,
            )
            .await
        }
        (&Method::POST, "link") => match read_form(app, body).await {
            Ok(f) => link_post(app, ctx, &mut sess, &parts.headers, &f, t).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "account") => account(app, &mut sess, t).await,
        (&Method::GET, "status") => status(app, &mut sess, &parts.headers).await,
        (&Method::POST, "unlink") => match read_form(app, body).await {
            Ok(f) => unlink(app, ctx, &mut sess, &parts.headers, &f).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "sign_out") => match read_form(app, body).await {
            Ok(f) => sign_out(app, ctx, &mut sess, &parts.headers, Some(&f)).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "sign_out") => sign_out(app, ctx, &mut sess, &parts.headers, None).await,
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
    crate::web::finish(app, sess, res).await
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

async fn sign_in(app: &App, sess: &mut Sess, q: &Form, t: &Texts) -> Result<Response, Error> {
    oidc(app)?;
    let rd = rd_of(app, q);
    let data = app.sessions.load(sess).await?;
    if data.user.is_some() && !q.contains_key("signed_out") {
        // Already signed in: nothing to do here.
        return Ok(redirect_local(app, &rd));
    }
    let csrf = data.csrf.clone();
    sess.changed();
    let password_url = app
        .cfg
        .matomo
        .password_login
        .then(|| "/index.php?module=Login&action=login".to_string());
    let notice = q
        .contains_key("signed_out")
        .then(|| t.get("sign_in.signed_out_notice"));
    // The default label is the seed's, in the page's language; a configured one is shown as set.
    let button = if app.cfg.provider.name == crate::config::DEFAULT_BUTTON {
        t.get("sign_in.button")
    } else {
        app.cfg.provider.name.as_str()
    };
    Ok(app.pages.render(
        StatusCode::OK,
        &SignInPage {
            t,
            title: t.get("sign_in.title"),
            prefix: &app.cfg.server.prefix,
            button,
            csrf: &csrf,
            rd: &rd,
            password_url: password_url.as_deref(),
            notice,
        },
    ))
}

async fn start(app: &App, sess: &mut Sess, f: &Form, posted: bool) -> Result<Response, Error> {
    let oidc = oidc(app)?;
    if posted {
        check_csrf(app, sess, f).await?;
    }
    let rd = rd_of(app, f);
    let (url, pending) = oidc.start(rd).await;
    let data = app.sessions.load(sess).await?;
    data.push_pending(pending);
    sess.changed();
    let mut res = StatusCode::SEE_OTHER.into_response();
    let loc =
        HeaderValue::from_str(url.as_str()).map_err(|_| Error::Internal("authorize URL".into()))?;
    res.headers_mut().insert(header::LOCATION, loc);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

async fn callback(app: &App, ctx: &Ctx, sess: &mut Sess, q: &Form) -> Result<Response, Error> {
    let oidc = oidc(app)?;
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let data = app.sessions.load(sess).await?;
    let pending = data.take_pending(state);
    sess.changed();
    let Some(pending) = pending else {
        // Missing, expired, replayed, or started in another browser: quietly start over.
        tracing::info!(target: "unikgate::audit", event = "refused", client_ip = %ctx.client_ip, reason = "unknown or used state");
        return Ok(redirect_local(
            app,
            &format!("{}/sign_in", app.cfg.server.prefix),
        ));
    };
    if let Some(err) = q.get("error") {
        tracing::info!(target: "unikgate::audit", event = "refused", client_ip = %ctx.client_ip, reason = "provider error", error = %err.chars().take(64).collect::<String>());
        return Err(match err.as_str() {
            "access_denied" => Error::AccessDenied(pending.rd),
            e => Error::ProviderError(
                e.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect(),
            ),
        });
    }
    let code = q.get("code").map(String::as_str).unwrap_or("");
    if code.is_empty() {
        return Err(Error::ProviderBadAnswer(
            "the callback carries no code".into(),
        ));
    }
    let id = oidc.finish(&pending, code).await?;
    // A new session id at sign-in: whatever id the browser had before (possibly planted) is gone.
    sess.cycle().await?;
    let data = app.sessions.load(sess).await?;
    let now = now_ms();
    data.pending.clear();
    data.csrf = crate::random_token();
    data.created = now;
    data.touched = now;
    let mut user = UserSession {
        issuer: id.issuer.clone(),
        subject: id.subject.clone(),
        display: id.email.clone(),
        signed_in: now,
        id_token: id.id_token.clone(),
        sid: id.sid.clone(),
        id_sub: id.id_sub.clone(),
        link: None,
        matomo: None,
    };
    tracing::info!(target: "unikgate::audit", event = "sign_in", subject = %id.subject, client_ip = %ctx.client_ip);
    let link = app.links.get(&id.issuer, &id.subject).await?;
    let Some(link) = link else {
        data.user = Some(user);
        index_this_session(app, sess).await?;
        return Ok(redirect_local(app, &own_url(app, "link", &pending.rd)));
    };
    if link.superuser && app.cfg.matomo.deny_superusers {
        data.user = None;
        tracing::warn!(target: "unikgate::audit", event = "refused", subject = %id.subject, matomo_login = %link.matomo_login, reason = "superuser");
        return Err(Error::SuperuserDenied);
    }
    let v = mint(app, ctx, &link.matomo_login, &id.subject, "sign_in").await;
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            data.user = Some(user);
            return Err(e);
        }
    };
    user.link = Some(crate::web::link_ref(&link));
    user.matomo = Some(MatomoSession::minted(&link.matomo_login, &v, now));
    data.user = Some(user);
    index_this_session(app, sess).await?;
    if let Err(e) = app.links.touch(&link.id).await {
        tracing::warn!(error = %e, "could not record the last sign-in time");
    }
    let mut res = redirect_local(app, &pending.rd);
    append_matomo_cookie(app, res.headers_mut(), &v);
    Ok(res)
}

/// Saves the session now (it needs its id) and records it under its identity, so that unlinking
/// the identity anywhere ends it.
async fn index_this_session(app: &App, sess: &mut Sess) -> Result<(), Error> {
    let user = app.sessions.load(sess).await?.user.clone();
    if let (Some(id), Some(user)) = (sess.save_now().await?, user) {
        crate::web::index_session(app, &id, &user).await?;
    }
    Ok(())
}

/// The signed-in user, or a redirect to sign in.
async fn require_user(
    app: &App,
    sess: &mut Sess,
    rd: &str,
) -> Result<Result<UserSession, Response>, Error> {
    let data = app.sessions.load(sess).await?;
    match &data.user {
        Some(u) => Ok(Ok(u.clone())),
        None => Ok(Err(redirect_local(app, &own_url(app, "sign_in", rd)))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn link_page(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    q: &Form,
    error: Option<&str>,
    code_needed: bool,
    status: StatusCode,
    t: &Texts,
) -> Result<Response, Error> {
    let rd = rd_of(app, q);
    let user = match require_user(app, sess, &rd).await? {
        Ok(u) => u,
        Err(r) => return Ok(r),
    };
    if app.links.get(&user.issuer, &user.subject).await?.is_some() {
        return Ok(redirect_local(app, &rd));
    }
    // Offer the Matomo session the browser already holds (password login), by its owner.
    let session_login = match matomo::request_cookie(headers, MATOMO_COOKIE) {
        Some(c) if !app.cfg.matomo.deny_superusers => app
            .minter
            .who_am_i(&app.upstream, &c, ctx.client_ip)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "who-am-i probe failed");
                None
            }),
        _ => None,
    };
    let data = app.sessions.load(sess).await?;
    let csrf = data.csrf.clone();
    let login = q.get("login").cloned().unwrap_or_default();
    Ok(app.pages.render(
        status,
        &LinkPage {
            t,
            title: t.get("link.title"),
            prefix: &app.cfg.server.prefix,
            identity: user.display.as_deref().unwrap_or(&user.subject),
            csrf: &csrf,
            rd: &rd,
            login: &login,
            error: error.map(|key| t.get(key)),
            session_login: session_login.as_deref(),
            code_needed,
        },
    ))
}

async fn link_post(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    f: &Form,
    t: &Texts,
) -> Result<Response, Error> {
    check_csrf(app, sess, f).await?;
    let rd = rd_of(app, f);
    let mut user = match require_user(app, sess, &rd).await? {
        Ok(u) => u,
        Err(r) => return Ok(r),
    };
    if app.links.get(&user.issuer, &user.subject).await?.is_some() {
        return Err(Error::IdentityAlreadyLinked);
    }
    let by_identity = format!("link:sub:{}:{}", user.issuer, user.subject);
    let by_ip = format!("link:ip:{}", ctx.client_ip);
    let ok_identity = app
        .links
        .attempt(&by_identity, LINK_ATTEMPTS, LINK_WINDOW)
        .await?;
    let ok_ip = app
        .links
        .attempt(&by_ip, LINK_ATTEMPTS, LINK_WINDOW)
        .await?;
    if !ok_identity || !ok_ip {
        tracing::warn!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "link rate limit");
        let mut r = Error::RateLimited.into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("600"));
        return Ok(r);
    }
    let (login, superuser) = match f.get("mode").map(String::as_str) {
        Some("session") => {
            if app.cfg.matomo.deny_superusers {
                return Err(Error::BadRequest(
                    "linking by session is off here; use the password".into(),
                ));
            }
            let Some(c) = matomo::request_cookie(headers, MATOMO_COOKIE) else {
                return again(app, ctx, sess, headers, f, t, "link.err_no_session").await;
            };
            match app
                .minter
                .who_am_i(&app.upstream, &c, ctx.client_ip)
                .await?
            {
                Some(l) => (l, false),
                None => {
                    return again(app, ctx, sess, headers, f, t, "link.err_session_ended").await
                }
            }
        }
        _ => {
            let login = f.get("login").map(|s| s.trim()).unwrap_or("");
            let password = f.get("password").map(String::as_str).unwrap_or("");
            if login.is_empty() || password.is_empty() {
                return again(app, ctx, sess, headers, f, t, "link.err_empty").await;
            }
            // The two-factor code, when the account has one: digits only (spaces people type
            // between groups are dropped); anything else is not sent.
            let code: String = f
                .get("code")
                .map(|c| c.chars().filter(|c| !c.is_whitespace()).collect())
                .unwrap_or_default();
            if !code.is_empty() && (code.len() > 10 || !code.bytes().all(|b| b.is_ascii_digit())) {
                return again_with(app, ctx, sess, headers, f, t, "link.err_code_format", true)
                    .await;
            }
            let code = (!code.is_empty()).then_some(code.as_str());
            match matomo::prove_password(&app.upstream, login, password, code, ctx.client_ip)
                .await?
            {
                Proof::Valid { login, superuser } => (login, superuser),
                Proof::CodeRequired => {
                    tracing::info!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "two-factor code required");
                    return again_with(
                        app,
                        ctx,
                        sess,
                        headers,
                        f,
                        t,
                        "link.err_code_required",
                        true,
                    )
                    .await;
                }
                Proof::WrongCode => {
                    tracing::info!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "wrong two-factor code");
                    return again_with(app, ctx, sess, headers, f, t, "link.err_code_wrong", true)
                        .await;
                }
                Proof::TwoFactorSetupRequired => {
                    tracing::info!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "two-factor setup required by Matomo");
                    return again(app, ctx, sess, headers, f, t, "link.err_setup_2fa").await;
                }
                Proof::Blocked => {
                    tracing::warn!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "blocked by Matomo's brute-force protection");
                    return again(app, ctx, sess, headers, f, t, "link.err_blocked").await;
                }
                Proof::WrongPassword => {
                    tracing::info!(target: "unikgate::audit", event = "refused", subject = %user.subject, client_ip = %ctx.client_ip, reason = "wrong Matomo password or unknown user");
                    return again(app, ctx, sess, headers, f, t, "link.err_wrong_password").await;
                }
                Proof::NotTheLogin => {
                    return again(app, ctx, sess, headers, f, t, "link.err_email").await;
                }
            }
        }
    };
    if superuser && app.cfg.matomo.deny_superusers {
        tracing::warn!(target: "unikgate::audit", event = "refused", subject = %user.subject, matomo_login = %login, reason = "superuser");
        return Err(Error::SuperuserDenied);
    }
    let link = Link {
        id: crate::random_token(),
        issuer: user.issuer.clone(),
        subject: user.subject.clone(),
        matomo_login: login.clone(),
        superuser,
        created_at: now_ms(),
        last_login_at: Some(now_ms()),
    };
    match app.links.create(&link).await? {
        Ok(()) => {}
        Err(LinkConflict::Identity) => return Err(Error::IdentityAlreadyLinked),
        Err(LinkConflict::Login) => {
            tracing::warn!(target: "unikgate::audit", event = "refused", subject = %user.subject, matomo_login = %login, reason = "login linked to another identity");
            return Err(Error::LoginAlreadyLinked);
        }
    }
    tracing::info!(target: "unikgate::audit", event = "link", subject = %user.subject, matomo_login = %login, client_ip = %ctx.client_ip);
    let v = match mint(app, ctx, &login, &user.subject, "link").await {
        Ok(v) => v,
        Err(e @ (Error::MintFailed(_) | Error::PluginMintFailed(_))) => {
            return Err(Error::LinkedButMintFailed(login, Box::new(e)))
        }
        Err(e) => return Err(e),
    };
    user.link = Some(crate::web::link_ref(&link));
    user.matomo = Some(MatomoSession::minted(&login, &v, now_ms()));
    let data = app.sessions.load(sess).await?;
    data.user = Some(user);
    sess.changed();
    let mut res = redirect_local(app, &rd);
    append_matomo_cookie(app, res.headers_mut(), &v);
    Ok(res)
}

/// The link page again, with a message (`msg`: a `link.err_*` catalogue key).
async fn again(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    f: &Form,
    t: &Texts,
    msg: &str,
) -> Result<Response, Error> {
    again_with(app, ctx, sess, headers, f, t, msg, false).await
}

/// The link page again, with a message; `code_needed` asks for the two-factor code. Neither the
/// password nor the code is written back into the page: unikgate keeps no password between
/// requests, so a two-factor account types it again with its code.
#[allow(clippy::too_many_arguments)]
async fn again_with(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    f: &Form,
    t: &Texts,
    msg: &str,
    code_needed: bool,
) -> Result<Response, Error> {
    let mut q = f.clone();
    q.remove("password");
    q.remove("code");
    link_page(
        app,
        ctx,
        sess,
        headers,
        &q,
        Some(msg),
        code_needed,
        StatusCode::UNAUTHORIZED,
        t,
    )
    .await
}

async fn account(app: &App, sess: &mut Sess, t: &Texts) -> Result<Response, Error> {
    let user = match require_user(app, sess, &format!("{}/account", app.cfg.server.prefix)).await? {
        Ok(u) => u,
        Err(r) => return Ok(r),
    };
    let link = app.links.get(&user.issuer, &user.subject).await?;
    let data = app.sessions.load(sess).await?;
    let csrf = data.csrf.clone();
    let linked_at = link.as_ref().and_then(|l| {
        time::OffsetDateTime::from_unix_timestamp(l.created_at / 1000)
            .ok()
            .map(|t| format!("{} UTC", t.date()))
    });
    Ok(app.pages.render(
        StatusCode::OK,
        &AccountPage {
            t,
            title: t.get("account.title"),
            prefix: &app.cfg.server.prefix,
            identity: user.display.as_deref().unwrap_or(&user.subject),
            matomo_login: link.as_ref().map(|l| l.matomo_login.as_str()),
            linked_at,
            csrf: &csrf,
        },
    ))
}

/// Removes this @unikname's link. Every other session of it ends (on every replica), and so
/// does this browser's Matomo session; this browser stays signed in with its @unikname, under a
/// new session id and unlinked, and goes to `rd` (default: the account page), where the next
/// Matomo page asks to link again.
async fn unlink(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    f: &Form,
) -> Result<Response, Error> {
    check_csrf(app, sess, f).await?;
    let account = format!("{}/account", app.cfg.server.prefix);
    let user = match require_user(app, sess, &account).await? {
        Ok(u) => u,
        Err(r) => return Ok(r),
    };
    let rd = match f.get("rd") {
        Some(_) => rd_of(app, f),
        None => account,
    };
    // Ends every session of the identity, this one included, with the Matomo sessions they hold.
    let removed = app.unlink(&user.issuer, &user.subject).await?;
    tracing::info!(target: "unikgate::audit", event = "unlink", subject = %user.subject, client_ip = %ctx.client_ip, removed);
    let ended = user.matomo.as_ref().and_then(|m| m.cookie.as_deref());
    logout_request_matomo(app, ctx, headers, ended).await;
    // The old id was deleted with the identity's sessions: a new one, for what remains.
    sess.cycle().await?;
    let data = app.sessions.load(sess).await?;
    data.csrf = crate::random_token();
    if let Some(u) = data.user.as_mut() {
        u.link = None;
        u.matomo = None;
    }
    sess.changed();
    index_this_session(app, sess).await?;
    let mut res = redirect_local(app, &rd);
    clear_matomo_cookie(app, res.headers_mut());
    Ok(res)
}

/// `GET <prefix>/status`: this browser's own sign-in and link, as JSON, for the UnikGate plugin's
/// section in Matomo's Personal → Security page. Same-origin only: no CORS header, refused when
/// the browser says the request comes from another site (`Sec-Fetch-Site`), never cached, and
/// nothing in it names anybody but the session's own @unikname.
async fn status(app: &App, sess: &mut Sess, headers: &HeaderMap) -> Result<Response, Error> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("same-origin");
    if site != "same-origin" && site != "none" {
        tracing::warn!(target: "unikgate::audit", event = "refused", reason = "status read from another site", sec_fetch_site = %site.chars().take(32).collect::<String>());
        return Ok(json(
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": "same-origin requests only" }),
        ));
    }
    let user = if sess.had_cookie() {
        app.sessions.load(sess).await?.user.clone()
    } else {
        None
    };
    let Some(user) = user else {
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({ "signed_in": false }),
        ));
    };
    let link = app.links.get(&user.issuer, &user.subject).await?;
    let csrf = app.sessions.load(sess).await?.csrf.clone();
    let since = link.as_ref().and_then(|l| {
        time::OffsetDateTime::from_unix_timestamp(l.created_at / 1000)
            .ok()
            .map(|t| t.date().to_string())
    });
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "signed_in": true,
            "unikname": user.display.as_deref().unwrap_or(&user.subject),
            "linked": link.is_some(),
            "matomo_login": link.as_ref().map(|l| l.matomo_login.as_str()),
            "linked_since": since,
            "csrf": csrf,
        }),
    ))
}

/// `POST <prefix>/backchannel_logout` (OpenID Connect Back-Channel Logout 1.0): the provider says
/// a session ended. A valid logout token (see `Oidc::verify_logout_token`), used once across
/// replicas, ends the unikgate sessions it names (by `sid`, else every session of `sub`) and the
/// Matomo sessions minted for them. 200 with `Cache-Control: no-store`; 400 with the
/// specification's error JSON for a bad token (nothing ended); 503 when the store is down (the
/// provider may retry).
async fn backchannel_logout(app: &App, body: Body) -> Response {
    let refuse = |why: &str| {
        tracing::warn!(target: "unikgate::audit", event = "backchannel_logout_refused", reason = %why);
        json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": why }),
        )
    };
    let unavailable = |e: Error| {
        tracing::error!(target: "unikgate::audit", event = "backchannel_logout_failed", reason = %e);
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "temporarily_unavailable", "error_description": e.to_string() }),
        )
    };
    let Some(oidc) = &app.oidc else {
        return refuse("unikgate is not configured yet");
    };
    let form = match read_form(app, body).await {
        Ok(f) => f,
        Err(Error::PayloadTooLarge) => return refuse("the body is too large"),
        // Too slow or too busy: the status says so (408 closes the connection).
        Err(e @ (Error::RequestTimeout | Error::Busy)) => return e.into_response(),
        Err(e) => return refuse(&e.to_string()),
    };
    let Some(token) = form.get("logout_token").filter(|t| !t.is_empty()) else {
        return refuse("no logout_token");
    };
    let claims = match oidc.verify_logout_token(token).await {
        Ok(c) => c,
        Err(why) => return refuse(&why),
    };
    let window = crate::oidc::LOGOUT_TOKEN_MAX_AGE.as_millis() as i64 + 120_000;
    match app
        .links
        .first_use_of_jti(&oidc.identity_issuer, &claims.jti, now_ms() - window)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse("this logout token was used already (jti)"),
        Err(e) => return unavailable(e),
    }
    let ids = match app
        .links
        .take_logout_sessions(
            &oidc.identity_issuer,
            claims.sid.as_deref(),
            claims.sub.as_deref(),
        )
        .await
    {
        Ok(ids) => ids,
        Err(e) => return unavailable(e),
    };
    let ended = match app.end_sessions(&ids).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    tracing::info!(
        target: "unikgate::audit",
        event = "backchannel_logout",
        subject = claims.sub.as_deref().unwrap_or(""),
        by = if claims.sid.is_some() { "sid" } else { "sub" },
        ended
    );
    let mut res = StatusCode::OK.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
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

/// Logs the browser's Matomo session out and ends unikgate's session.
async fn end_everything(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
) -> Result<(), Error> {
    logout_request_matomo(app, ctx, headers, None).await;
    sess.end().await
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

async fn sign_out(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
    form: Option<&Form>,
) -> Result<Response, Error> {
    if let Some(f) = form {
        check_csrf(app, sess, f).await?;
    }
    let user = if sess.had_cookie() {
        app.sessions.load(sess).await?.user.clone()
    } else {
        None
    };
    if let Some(u) = &user {
        tracing::info!(target: "unikgate::audit", event = "sign_out", subject = %u.subject, client_ip = %ctx.client_ip);
    }
    end_everything(app, ctx, sess, headers).await?;
    // The post-logout redirect URI to register at the provider: exactly this, no query.
    let back = app.cfg.post_logout_redirect_uri();
    let provider_logout = match (&app.oidc, &user) {
        (Some(o), Some(u)) => o.end_session_url(u.id_token.as_deref(), &back).await,
        _ => None,
    };
    let mut res = match provider_logout {
        Some(url) => {
            let mut r = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(url.as_str()) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => redirect_local(app, &format!("{}/signed_out", app.cfg.server.prefix)),
    };
    clear_matomo_cookie(app, res.headers_mut());
    Ok(res)
}

async fn readyz(app: &App) -> Response {
    let mut problems = Vec::new();
    if app.oidc.is_none() {
        problems.push(
            "provider: not configured yet: set provider.client_id / client_secret".to_string(),
        );
    }
    if let Err(e) = app.stores.ping().await {
        problems.push(format!("store: {e}"));
    }
    let probe = app
        .upstream
        .call(
            Method::GET,
            "/robots.txt",
            HeaderMap::new(),
            None,
            std::net::IpAddr::from([127, 0, 0, 1]),
        )
        .await;
    if let Err(e) = probe {
        problems.push(format!("upstream: {e}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}
