//! Signing in: the sign-in page, `start` (PKCE, state and nonce into the session, 303 to the
//! provider) and the provider's `callback` (code exchange, identity, session cycled and indexed,
//! link looked up, first Matomo session).

use super::*;

/// `GET <prefix>/sign_in` (and the prefix itself): the page with the provider's button.
pub(super) async fn sign_in(
    v: Visit,
    mut sess: Session,
    Query(q): Query,
) -> Result<Response, Error> {
    let (app, t, sess, q) = (&*v.app, v.t, &mut *sess, &q);
    oidc(app)?;
    let rd = rd_of(app, q);
    let data = app.sessions.load(sess).await?;
    if data.user.is_some() && !q.contains_key("signed_out") {
        // Already signed in: nothing to do here.
        return Ok(redirect_local(app, &rd));
    }
    let csrf = data.csrf.clone();
    sess.changed();
    let password_url = app.cfg.matomo.password_login.then(|| {
        format!(
            "{}/index.php?module=Login&action=login",
            app.cfg.server.base
        )
    });
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

/// `POST <prefix>/start`, the sign-in page's form.
pub(super) async fn start(
    State(app): State<Arc<App>>,
    CsrfForm { mut sess, form }: CsrfForm,
) -> Result<Response, Error> {
    begin(&app, &mut sess, &form).await
}

/// `GET <prefix>/start?rd=…`, routed only with `provider.allow_get_start`.
pub(super) async fn start_get(
    State(app): State<Arc<App>>,
    mut sess: Session,
    Query(q): Query,
) -> Result<Response, Error> {
    begin(&app, &mut sess, &q).await
}

/// PKCE, state and nonce into the session; 303 to the provider.
async fn begin(app: &App, sess: &mut Sess, f: &Form) -> Result<Response, Error> {
    let oidc = oidc(app)?;
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

/// `GET <prefix>/callback`: the provider's redirect back.
pub(super) async fn callback(
    v: Visit,
    mut sess: Session,
    Query(q): Query,
) -> Result<Response, Error> {
    let (app, ctx, sess, q) = (&*v.app, &v.ctx, &mut *sess, &q);
    let oidc = oidc(app)?;
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let data = app.sessions.load(sess).await?;
    let pending = data.take_pending(state);
    sess.changed();
    let Some(pending) = pending else {
        // Missing, expired, replayed, or started in another browser: quietly start over.
        crate::audit!(
            app,
            info,
            event = "refused",
            client_ip = ctx.client_ip,
            reason = "unknown or used state"
        );
        return Ok(redirect_local(
            app,
            &format!("{}/sign_in", app.cfg.server.prefix),
        ));
    };
    if let Some(err) = q.get("error") {
        crate::audit!(
            app,
            info,
            event = "refused",
            client_ip = ctx.client_ip,
            reason = "provider error",
            error = err.chars().take(64).collect::<String>()
        );
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
    if let Err(r) = app.access.evaluate(&id.subject, &id.claims) {
        // Nobody is signed in in this browser after a refusal (a person signed in before it is
        // signed out: this browser just proved to be somebody else).
        sess.cycle().await?;
        app.sessions.load(sess).await?.user = None;
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = id.subject,
            client_ip = ctx.client_ip,
            reason = r.rule(app.access.config()),
            email = id.email.as_deref().unwrap_or("-")
        );
        return Err(Error::NotAllowed(
            id.email.clone().unwrap_or_else(|| id.subject.clone()),
        ));
    }
    // A new session id at sign-in: whatever id the browser had before (possibly planted) is gone.
    sess.cycle().await?;
    let data = app.sessions.load(sess).await?;
    let now = now_ms();
    data.pending.clear();
    data.csrf = crate::util::random_token();
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
        policy: app.access.stamp(),
        claims: app.access.project(&id.claims),
        proposal: None,
        client_ip: Some(ctx.client_ip.to_string()),
        access_claim: super::provision::access_claim_of(app, &id.claims),
    };
    crate::audit!(
        app,
        info,
        event = "sign_in",
        subject = id.subject,
        client_ip = ctx.client_ip
    );
    let link = app.links.get(&id.issuer, &id.subject).await?;
    let Some(link) = link else {
        if super::provision::provisioning(app) {
            match super::provision::proposal(&app.cfg.provision, &id.subject, &id.claims) {
                Ok(p) => user.proposal = Some(p),
                Err(why) => {
                    tracing::info!(subject = %id.subject, reason = why, "no Matomo account can be made for this person; the link page asks for an existing one")
                }
            }
        }
        let auto =
            app.cfg.provision.mode == crate::config::ProvisionMode::Auto && user.proposal.is_some();
        data.user = Some(user.clone());
        index_this_session(app, sess).await?;
        if auto {
            return super::provision::make_account(&v, sess, user, &pending.rd).await;
        }
        return Ok(redirect_local(app, &own_url(app, "link", &pending.rd)));
    };
    if link.superuser && app.cfg.matomo.deny_superusers {
        data.user = None;
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = id.subject,
            matomo_login = link.matomo_login,
            reason = "superuser"
        );
        return Err(Error::SuperuserDenied);
    }
    if !link.superuser {
        if let Err(e) = super::provision::apply_access_claim(
            app,
            ctx,
            &link.matomo_login,
            &id.subject,
            &user.access_claim,
        )
        .await
        {
            // Fails closed: nobody is signed in with access the claim may no longer grant.
            data.user = None;
            return Err(e);
        }
    }
    let v = mint(app, ctx, &link.matomo_login, &id.subject, "sign_in").await;
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            data.user = Some(user);
            return Err(e);
        }
    };
    user.link = Some(crate::context::link_ref(&link));
    user.matomo = Some(MatomoSession::minted(&link.matomo_login, &v, now));
    data.user = Some(user);
    index_this_session(app, sess).await?;
    if let Err(e) = app.links.touch(&link.id).await {
        tracing::warn!(error = %e.chain(), "could not record the last sign-in time");
    }
    let mut res = redirect_local(app, &pending.rd);
    append_matomo_cookie(app, res.headers_mut(), &v);
    Ok(res)
}
