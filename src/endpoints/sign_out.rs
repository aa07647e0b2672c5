//! Signing out (unikgate's and the provider's), and back-channel logout tokens from the provider.

use super::*;

/// Logs the browser's Matomo session out and ends unikgate's session.
pub(super) async fn end_everything(
    app: &App,
    ctx: &Ctx,
    sess: &mut Sess,
    headers: &HeaderMap,
) -> Result<(), Error> {
    logout_request_matomo(app, ctx, headers, None).await;
    sess.end().await
}

/// `GET <prefix>/sign_out` (and Matomo's logout link, which cannot carry a CSRF token).
pub(super) async fn sign_out_get(v: Visit, mut sess: Session) -> Result<Response, Error> {
    sign_out(&v, &mut sess).await
}

/// `POST <prefix>/sign_out`, the pages' sign-out form.
pub(super) async fn sign_out_post(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, .. } = posted;
    sign_out(&v, &mut sess).await
}

/// `GET <prefix>/signed_out`: where a sign-out ends (and the provider sends people back).
pub(super) async fn signed_out(v: Visit) -> Response {
    let t = v.t;
    v.app.pages.render(
        StatusCode::OK,
        &crate::pages::SignedOutPage {
            t,
            title: t.get("signed_out.title"),
            prefix: &v.app.cfg.server.prefix,
        },
    )
}

async fn sign_out(v: &Visit, sess: &mut Sess) -> Result<Response, Error> {
    let (app, ctx, headers) = (&*v.app, &v.ctx, &v.headers);
    let user = if sess.had_cookie() {
        app.sessions.load(sess).await?.user.clone()
    } else {
        None
    };
    if let Some(u) = &user {
        crate::audit!(
            app,
            info,
            event = "sign_out",
            subject = u.subject,
            client_ip = ctx.client_ip
        );
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

/// `POST <prefix>/backchannel_logout` (OpenID Connect Back-Channel Logout 1.0): the provider says
/// a session ended. A valid logout token (see `Oidc::verify_logout_token`), used once across
/// replicas, ends the unikgate sessions it names (by `sid`, else every session of `sub`) and the
/// Matomo sessions minted for them. 200 with `Cache-Control: no-store`; 400 with the
/// specification's error JSON for a bad token (nothing ended); 503 when the store is down (the
/// provider may retry).
pub(super) async fn backchannel_logout(
    State(app): State<Arc<App>>,
    form: Result<extract::Form, Error>,
) -> Response {
    let refuse = |why: &str| {
        crate::audit!(
            app,
            warn,
            event = "backchannel_logout_refused",
            reason = why
        );
        json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": why }),
        )
    };
    let unavailable = |e: Error| {
        crate::audit!(
            app,
            error,
            event = "backchannel_logout_failed",
            reason = e.chain()
        );
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "temporarily_unavailable", "error_description": e.to_string() }),
        )
    };
    let Some(oidc) = &app.oidc else {
        return refuse("unikgate is not configured yet");
    };
    let form = match form {
        Ok(extract::Form(f)) => f,
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
        .logout_tokens
        .first_use_of_jti(&oidc.identity_issuer, &claims.jti, now_ms() - window)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse("this logout token was used already (jti)"),
        Err(e) => return unavailable(e),
    }
    let ids = match app
        .session_index
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
    crate::audit!(
        app,
        info,
        event = "backchannel_logout",
        subject = claims.sub.as_deref().unwrap_or(""),
        by = if claims.sid.is_some() { "sid" } else { "sub" },
        ended = ended
    );
    let mut res = StatusCode::OK.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
