//! Linking an @unikname to a Matomo account once: the link page and its post (password, two-factor
//! code, or the browser's Matomo session), rate-limited.

use super::*;

/// What the link page says above its form, and with which status.
pub(super) struct Notice<'a> {
    /// A `link.err_*` catalogue key.
    pub error: Option<&'a str>,
    /// Ask for the two-factor code.
    pub code_needed: bool,
    pub status: StatusCode,
}

impl Notice<'static> {
    /// The page as first shown.
    pub const NONE: Notice<'static> = Notice {
        error: None,
        code_needed: false,
        status: StatusCode::OK,
    };
}

/// `GET <prefix>/link`.
pub(super) async fn link_get(
    v: Visit,
    mut sess: Session,
    Query(q): Query,
) -> Result<Response, Error> {
    link_page(&v, &mut sess, &q, Notice::NONE).await
}

pub(super) async fn link_page(
    v: &Visit,
    sess: &mut Sess,
    q: &Form,
    notice: Notice<'_>,
) -> Result<Response, Error> {
    let (app, ctx, headers, t) = (&*v.app, &v.ctx, &v.headers, v.t);
    let Notice {
        error,
        code_needed,
        status,
    } = notice;
    let rd = rd_of(app, q);
    let Some(user) = signed_in_user(app, ctx, sess).await? else {
        return Ok(to_sign_in(app, &rd));
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
                tracing::warn!(error = %e.chain(), "who-am-i probe failed");
                None
            }),
        _ => None,
    };
    let data = app.sessions.load(sess).await?;
    let csrf = data.csrf.clone();
    let login = q.get("login").cloned().unwrap_or_default();
    // "Create my Matomo account", unless the page says that account exists.
    let offer = (app.cfg.provision.mode == crate::config::ProvisionMode::Offer
        && !error.is_some_and(|e| e.starts_with("link.err_exists")))
    .then(|| user.proposal.as_ref().map(|p| p.login.clone()))
    .flatten();
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
            error: error.map(|key| t.fmt(key, &[("login", &login)])),
            offer: offer.as_deref(),
            session_login: session_login.as_deref(),
            code_needed,
        },
    ))
}

/// `POST <prefix>/link`: the proof (password, two-factor code, or the browser's Matomo session).
pub(super) async fn link_post(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, form } = posted;
    let (app, ctx, headers, sess, f) = (&*v.app, &v.ctx, &v.headers, &mut *sess, &form);
    let v = &v;
    let rd = rd_of(app, f);
    let Some(mut user) = signed_in_user(app, ctx, sess).await? else {
        return Ok(to_sign_in(app, &rd));
    };
    if app.links.get(&user.issuer, &user.subject).await?.is_some() {
        return Err(Error::IdentityAlreadyLinked);
    }
    let by_identity = format!("link:sub:{}:{}", user.issuer, user.subject);
    let by_ip = format!("link:ip:{}", ctx.client_ip);
    let ok_identity = app
        .attempts
        .attempt(&by_identity, LINK_ATTEMPTS, LINK_WINDOW)
        .await?;
    let ok_ip = app
        .attempts
        .attempt(&by_ip, LINK_ATTEMPTS, LINK_WINDOW)
        .await?;
    if !ok_identity || !ok_ip {
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = user.subject,
            client_ip = ctx.client_ip,
            reason = "link rate limit"
        );
        return Ok(rate_limited());
    }
    let (login, superuser) = match f.get("mode").map(String::as_str) {
        Some("session") => {
            if app.cfg.matomo.deny_superusers {
                return Err(Error::BadRequest(
                    "linking by session is off here; use the password".into(),
                ));
            }
            let Some(c) = matomo::request_cookie(headers, MATOMO_COOKIE) else {
                return again(v, sess, f, "link.err_no_session").await;
            };
            match app
                .minter
                .who_am_i(&app.upstream, &c, ctx.client_ip)
                .await?
            {
                Some(l) => (l, false),
                None => return again(v, sess, f, "link.err_session_ended").await,
            }
        }
        _ => {
            let login = f.get("login").map(|s| s.trim()).unwrap_or("");
            let password = f.get("password").map(String::as_str).unwrap_or("");
            if login.is_empty() || password.is_empty() {
                return again(v, sess, f, "link.err_empty").await;
            }
            // The two-factor code, when the account has one: digits only (spaces people type
            // between groups are dropped); anything else is not sent.
            let code: String = f
                .get("code")
                .map(|c| c.chars().filter(|c| !c.is_whitespace()).collect())
                .unwrap_or_default();
            if !code.is_empty() && (code.len() > 10 || !code.bytes().all(|b| b.is_ascii_digit())) {
                return again_with(v, sess, f, "link.err_code_format", true).await;
            }
            let code = (!code.is_empty()).then_some(code.as_str());
            match matomo::prove_password(&app.upstream, login, password, code, ctx.client_ip)
                .await?
            {
                Proof::Valid { login, superuser } => (login, superuser),
                Proof::CodeRequired => {
                    crate::audit!(
                        app,
                        info,
                        event = "refused",
                        subject = user.subject,
                        client_ip = ctx.client_ip,
                        reason = "two-factor code required"
                    );
                    return again_with(v, sess, f, "link.err_code_required", true).await;
                }
                Proof::WrongCode => {
                    crate::audit!(
                        app,
                        info,
                        event = "refused",
                        subject = user.subject,
                        client_ip = ctx.client_ip,
                        reason = "wrong two-factor code"
                    );
                    return again_with(v, sess, f, "link.err_code_wrong", true).await;
                }
                Proof::TwoFactorSetupRequired => {
                    crate::audit!(
                        app,
                        info,
                        event = "refused",
                        subject = user.subject,
                        client_ip = ctx.client_ip,
                        reason = "two-factor setup required by Matomo"
                    );
                    return again(v, sess, f, "link.err_setup_2fa").await;
                }
                Proof::Blocked => {
                    crate::audit!(
                        app,
                        warn,
                        event = "refused",
                        subject = user.subject,
                        client_ip = ctx.client_ip,
                        reason = "blocked by Matomo's brute-force protection"
                    );
                    return again(v, sess, f, "link.err_blocked").await;
                }
                Proof::WrongPassword => {
                    crate::audit!(
                        app,
                        info,
                        event = "refused",
                        subject = user.subject,
                        client_ip = ctx.client_ip,
                        reason = "wrong Matomo password or unknown user"
                    );
                    return again(v, sess, f, "link.err_wrong_password").await;
                }
                Proof::NotTheLogin => {
                    return again(v, sess, f, "link.err_email").await;
                }
            }
        }
    };
    if superuser && app.cfg.matomo.deny_superusers {
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = user.subject,
            matomo_login = login,
            reason = "superuser"
        );
        return Err(Error::SuperuserDenied);
    }
    let link = Link {
        id: crate::util::random_token(),
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
            crate::audit!(
                app,
                warn,
                event = "refused",
                subject = user.subject,
                matomo_login = login,
                reason = "login linked to another identity"
            );
            return Err(Error::LoginAlreadyLinked);
        }
    }
    crate::audit!(
        app,
        info,
        event = "link",
        subject = user.subject,
        matomo_login = login,
        client_ip = ctx.client_ip
    );
    if !superuser {
        super::provision::access_for_new_link(app, ctx, &link, &user.access_claim).await?;
    }
    let v = match mint(app, ctx, &login, &user.subject, "link").await {
        Ok(v) => v,
        Err(e @ Error::MintFailed(..)) => {
            return Err(Error::LinkedButMintFailed(login, Box::new(e)))
        }
        Err(e) => return Err(e),
    };
    user.link = Some(crate::context::link_ref(&link));
    user.matomo = Some(MatomoSession::minted(&login, &v, now_ms()));
    let data = app.sessions.load(sess).await?;
    data.user = Some(user);
    sess.changed();
    let mut res = redirect_local(app, &rd);
    append_matomo_cookie(app, res.headers_mut(), &v);
    Ok(res)
}

/// The link page again, with a message (`msg`: a `link.err_*` catalogue key).
async fn again(v: &Visit, sess: &mut Sess, f: &Form, msg: &str) -> Result<Response, Error> {
    again_with(v, sess, f, msg, false).await
}

/// The link page again, with a message; `code_needed` asks for the two-factor code. Neither the
/// password nor the code is written back into the page: unikgate keeps no password between
/// requests, so a two-factor account types it again with its code.
async fn again_with(
    v: &Visit,
    sess: &mut Sess,
    f: &Form,
    msg: &str,
    code_needed: bool,
) -> Result<Response, Error> {
    let mut q = f.clone();
    q.remove("password");
    q.remove("code");
    let notice = Notice {
        error: Some(msg),
        code_needed,
        status: StatusCode::UNAUTHORIZED,
    };
    link_page(v, sess, &q, notice).await
}
