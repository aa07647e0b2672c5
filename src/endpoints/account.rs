//! The account page, unlinking, and `status` (the browser's own link as JSON for the plugin's
//! Security section).

use super::*;

/// `GET <prefix>/account`.
pub(super) async fn account(v: Visit, mut sess: Session) -> Result<Response, Error> {
    let (app, ctx, t, sess) = (&*v.app, &v.ctx, v.t, &mut *sess);
    let Some(user) = signed_in_user(app, ctx, sess).await? else {
        return Ok(to_sign_in(
            app,
            &format!("{}/account", app.cfg.server.prefix),
        ));
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
            home: &format!("{}/", app.cfg.server.base),
            identity: user.display.as_deref().unwrap_or(&user.subject),
            matomo_login: link.as_ref().map(|l| l.matomo_login.as_str()),
            linked_at,
            csrf: &csrf,
            can_unlink: app.cfg.links.allow_unlink,
        },
    ))
}

/// Removes this @unikname's link. Every other session of it ends (on every replica), and so
/// does this browser's Matomo session; this browser stays signed in with its @unikname, under a
/// new session id and unlinked, and goes to `rd` (default: the account page), where the next
/// Matomo page asks to link again.
pub(super) async fn unlink(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, form } = posted;
    let (app, ctx, headers, sess, f) = (&*v.app, &v.ctx, &v.headers, &mut *sess, &form);
    let account = format!("{}/account", app.cfg.server.prefix);
    let Some(user) = signed_in_user(app, ctx, sess).await? else {
        return Ok(to_sign_in(app, &account));
    };
    if !app.cfg.links.allow_unlink {
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = user.subject,
            client_ip = ctx.client_ip,
            reason = "unlink is off (links.allow_unlink = false)"
        );
        return Err(Error::Forbidden(
            "unlinking is turned off here (links.allow_unlink = false); an administrator unlinks with `unikgate links remove`",
        ));
    }
    let rd = match f.get("rd") {
        Some(_) => rd_of(app, f),
        None => account,
    };
    // Ends every session of the identity, this one included, with the Matomo sessions they hold.
    let removed = app.unlink(&user.issuer, &user.subject).await?;
    crate::audit!(
        app,
        info,
        event = "unlink",
        subject = user.subject,
        client_ip = ctx.client_ip,
        removed = removed
    );
    let ended = user.matomo.as_ref().and_then(|m| m.cookie.as_deref());
    logout_request_matomo(app, ctx, headers, ended).await;
    // The old id was deleted with the identity's sessions: a new one, for what remains.
    sess.cycle().await?;
    let data = app.sessions.load(sess).await?;
    data.csrf = crate::util::random_token();
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
pub(super) async fn status(v: Visit, mut sess: Session) -> Result<Response, Error> {
    let (app, ctx, headers, sess) = (&*v.app, &v.ctx, &v.headers, &mut *sess);
    if let Some(site) = cross_site(headers) {
        crate::audit!(
            app,
            warn,
            event = "refused",
            reason = "status read from another site",
            sec_fetch_site = site
        );
        return Ok(json(
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": "same-origin requests only" }),
        ));
    }
    let Some(user) = json_user(app, ctx, sess).await? else {
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
            "can_unlink": app.cfg.links.allow_unlink,
            "csrf": csrf,
        }),
    ))
}
