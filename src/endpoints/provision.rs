//! Matomo accounts made at the first sign-in (`[provision]`), and site access from a claim
//! (`provision.access_claim`): what the account would be (from the provider's claims), the link
//! page's "Create my Matomo account" (`POST <prefix>/provision`), the `auto` mode at the callback,
//! and the access set at each sign-in.
//!
//! Invariants: unikgate holds no Matomo superuser token: the UnikGate plugin makes the account
//! when handed a signed, single-use `provision` assertion; an account is never made superuser;
//! the e-mail is one the provider verified; a collision makes nothing and offers linking instead.

use super::*;
use crate::config::{ProvisionMode, SiteAccess};
use crate::oidc::{claim, claim_bool, claim_values};
use crate::session::Proposal;
use crate::upstream::matomo::{owner_of, NewAccount, Provisioned};

/// The longest login made (Matomo's limit is 100).
const MAX_LOGIN: usize = 100;

/// Whether this unikgate makes accounts at all (`[provision] mode`, with the signed minter).
pub(super) fn provisioning(app: &App) -> bool {
    app.cfg.provision.mode != ProvisionMode::Off
}

/// The account `[provision]` would make for a person, or why none can be made (for the log).
pub(super) fn proposal(
    cfg: &crate::config::ProvisionConfig,
    subject: &str,
    claims: &serde_json::Value,
) -> Result<Proposal, &'static str> {
    let email = claim(claims, "email").ok_or("the provider gave no e-mail address")?;
    if !claim_bool(claims, "email_verified") {
        return Err("the provider did not say the e-mail address is verified");
    }
    let raw = match cfg.login_claim.as_str() {
        "email" => email.split('@').next().map(str::to_string),
        "subject" => Some(subject.to_string()),
        path => claim(claims, path),
    }
    .ok_or("the provider gave no value for provision.login_claim")?;
    let login =
        sanitize_login(&raw).ok_or("provision.login_claim's value makes no Matomo login")?;
    Ok(Proposal { login, email })
}

/// A Matomo login from any text: ASCII letters, digits and `_ . - +` kept, anything else `_`,
/// at most 100 characters; `None` when fewer than 2 useful characters remain.
pub fn sanitize_login(raw: &str) -> Option<String> {
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LOGIN)
        .collect();
    let useful = s.chars().filter(|c| c.is_ascii_alphanumeric()).count();
    (useful >= 2 && s.chars().count() >= 2).then_some(s)
}

/// The site access a claim's entries name (`/matomo/<idSite>/<level>`); others are ignored,
/// with a log line.
pub(super) fn claimed_access(entries: &[String]) -> Vec<SiteAccess> {
    entries
        .iter()
        .filter_map(|e| {
            let a = SiteAccess::parse(e);
            if a.is_none() {
                tracing::info!(entry = %e.chars().take(80).collect::<String>(), "an access claim entry that is not /matomo/<idSite>/<view|write|admin> is ignored");
            }
            a
        })
        .collect()
}

/// The access claim's entries in the provider's claims (empty without `provision.access_claim`).
pub(super) fn access_claim_of(app: &App, claims: &serde_json::Value) -> Vec<String> {
    match &app.cfg.provision.access_claim {
        Some(path) => claim_values(claims, path),
        None => Vec::new(),
    }
}

/// At each sign-in with `provision.access_claim`: the claim's access set through the plugin
/// (superusers are left alone by it). A failure fails the sign-in closed.
pub(super) async fn apply_access_claim(
    app: &App,
    ctx: &Ctx,
    login: &str,
    subject: &str,
    entries: &[String],
) -> Result<(), Error> {
    if app.cfg.provision.access_claim.is_none() {
        return Ok(());
    }
    let access = claimed_access(entries);
    let prune = app.cfg.provision.access_claim_prune;
    let change = app
        .minter
        .set_access(&app.upstream, login, &access, prune, ctx.client_ip)
        .await
        .inspect_err(|e| {
            crate::audit!(
                app,
                warn,
                event = "refused",
                subject = subject,
                matomo_login = login,
                client_ip = ctx.client_ip,
                reason = e.chain(),
                when = "setting access from the claim"
            );
        })?;
    if !change.set.is_empty() || !change.removed.is_empty() {
        let set: Vec<String> = change.set.iter().map(|(s, l)| format!("{s}:{l}")).collect();
        crate::audit!(
            app,
            info,
            event = "access",
            subject = subject,
            matomo_login = login,
            client_ip = ctx.client_ip,
            set = set.join(","),
            removed = format!("{:?}", change.removed)
        );
    }
    Ok(())
}

/// The claim's access for a link just made: when it cannot be set, the link is taken back (no
/// link stands whose access the claim did not set: the next Matomo page would otherwise open a
/// session with whatever access the account had) and the sign-in fails closed.
pub(super) async fn access_for_new_link(
    app: &App,
    ctx: &Ctx,
    link: &Link,
    entries: &[String],
) -> Result<(), Error> {
    let Err(e) = apply_access_claim(app, ctx, &link.matomo_login, &link.subject, entries).await
    else {
        return Ok(());
    };
    if let Err(undo) = app.links.remove(&link.issuer, &link.subject).await {
        tracing::error!(error = %undo.chain(), matomo_login = %link.matomo_login, "could not take back a link whose access the claim did not set");
        return Err(undo);
    }
    crate::audit!(
        app,
        warn,
        event = "unlink",
        subject = link.subject,
        matomo_login = link.matomo_login,
        client_ip = ctx.client_ip,
        reason = "taken back: the access claim could not be set"
    );
    Err(e)
}

/// `POST <prefix>/provision`: the link page's "Create my Matomo account".
pub(super) async fn provision_post(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, form } = posted;
    let (app, ctx, sess, f) = (&*v.app, &v.ctx, &mut *sess, &form);
    let rd = rd_of(app, f);
    if !provisioning(app) {
        return Err(Error::NotFound);
    }
    let Some(user) = signed_in_user(app, ctx, sess).await? else {
        return Ok(to_sign_in(app, &rd));
    };
    if app.links.get(&user.issuer, &user.subject).await?.is_some() {
        return Ok(redirect_local(app, &rd));
    }
    let by_identity = format!("provision:sub:{}:{}", user.issuer, user.subject);
    if !app
        .attempts
        .attempt(&by_identity, LINK_ATTEMPTS, LINK_WINDOW)
        .await?
    {
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = user.subject,
            client_ip = ctx.client_ip,
            reason = "provision rate limit"
        );
        return Ok(rate_limited());
    }
    make_account(&v, sess, user, &rd).await
}

/// Makes the account the session's proposal names, links it, and lands in Matomo with its first
/// session; a collision shows the link page (409) with that login filled in.
pub(super) async fn make_account(
    v: &Visit,
    sess: &mut Sess,
    mut user: UserSession,
    rd: &str,
) -> Result<Response, Error> {
    let (app, ctx) = (&*v.app, &v.ctx);
    let Some(p) = user.proposal.clone() else {
        return Err(Error::ProvisionFailed(
            "the provider did not give what a new account needs (a verified e-mail address, and a login from provision.login_claim); link an existing account instead".into(),
        ));
    };
    // A login already linked in unikgate belongs to somebody else's @unikname.
    if app.links.get_by_login(&p.login).await?.is_some() {
        crate::audit!(
            app,
            info,
            event = "refused",
            subject = user.subject,
            matomo_login = p.login,
            reason = "provision: login linked to another identity"
        );
        return collision(v, sess, rd, "link.err_exists_login", &p.login).await;
    }
    let account = NewAccount {
        login: p.login.clone(),
        email: p.email.clone(),
        access: app.cfg.provision.access.clone(),
        owner: owner_of(&user.issuer, &user.subject),
    };
    let cookie = match app
        .minter
        .provision(
            &app.upstream,
            &account,
            &format!("{}/index.php", app.cfg.server.base),
            ctx.client_ip,
        )
        .await
    {
        Ok(Provisioned::Created(c)) => c,
        Ok(Provisioned::LoginExists(l)) => {
            crate::audit!(
                app,
                info,
                event = "refused",
                subject = user.subject,
                matomo_login = l,
                reason = "provision: the login exists in Matomo"
            );
            return collision(v, sess, rd, "link.err_exists_login", &l).await;
        }
        Ok(Provisioned::EmailExists(l)) => {
            crate::audit!(
                app,
                info,
                event = "refused",
                subject = user.subject,
                matomo_login = l,
                reason = "provision: the e-mail address belongs to an account"
            );
            return collision(v, sess, rd, "link.err_exists_email", &l).await;
        }
        Err(e) => {
            crate::audit!(
                app,
                warn,
                event = "refused",
                subject = user.subject,
                matomo_login = p.login,
                client_ip = ctx.client_ip,
                reason = e.chain(),
                when = "provision"
            );
            return Err(e);
        }
    };
    let access: Vec<String> = account
        .access
        .iter()
        .map(|a| format!("{}:{}", a.site, a.level.as_str()))
        .collect();
    crate::audit!(
        app,
        info,
        event = "provision",
        subject = user.subject,
        matomo_login = p.login,
        email = p.email,
        access = access.join(","),
        client_ip = ctx.client_ip
    );
    let link = Link {
        id: crate::util::random_token(),
        issuer: user.issuer.clone(),
        subject: user.subject.clone(),
        matomo_login: p.login.clone(),
        superuser: false,
        created_at: now_ms(),
        last_login_at: Some(now_ms()),
    };
    match app.links.create(&link).await? {
        Ok(()) => {}
        Err(LinkConflict::Identity) => return Err(Error::IdentityAlreadyLinked),
        Err(LinkConflict::Login) => return Err(Error::LoginAlreadyLinked),
    }
    crate::audit!(
        app,
        info,
        event = "link",
        subject = user.subject,
        matomo_login = p.login,
        client_ip = ctx.client_ip,
        by = "provision"
    );
    if let Err(e) = access_for_new_link(app, ctx, &link, &user.access_claim).await {
        // The session the plugin opened is not handed to the browser: closed in Matomo too.
        if let Err(out) =
            crate::upstream::matomo::logout(&app.upstream, &cookie, ctx.client_ip).await
        {
            tracing::warn!(error = %out.chain(), "could not log the Matomo session out");
        }
        return Err(e);
    }
    user.link = Some(crate::context::link_ref(&link));
    user.matomo = Some(MatomoSession::minted(&p.login, &cookie, now_ms()));
    user.proposal = None;
    let data = app.sessions.load(sess).await?;
    data.user = Some(user);
    sess.changed();
    index_this_session(app, sess).await?;
    let mut res = redirect_local(app, rd);
    append_matomo_cookie(app, res.headers_mut(), &cookie);
    Ok(res)
}

/// The link page with the existing account's login filled in, and what happened (409).
async fn collision(
    v: &Visit,
    sess: &mut Sess,
    rd: &str,
    msg: &'static str,
    login: &str,
) -> Result<Response, Error> {
    let mut q = Form::new();
    q.insert("rd".into(), rd.to_string());
    q.insert("login".into(), login.to_string());
    let notice = super::link::Notice {
        error: Some(msg),
        code_needed: false,
        status: StatusCode::CONFLICT,
    };
    super::link::link_page(v, sess, &q, notice).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProvisionConfig;
    use serde_json::json;

    fn cfg(login_claim: &str) -> ProvisionConfig {
        ProvisionConfig {
            mode: ProvisionMode::Offer,
            login_claim: login_claim.into(),
            access: vec![],
            access_claim: None,
            access_claim_prune: false,
        }
    }

    #[test]
    fn logins_come_from_the_chosen_claim_sanitised() {
        let c = json!({"email": "Ann.Lee@example.org", "email_verified": true,
                       "preferred_username": "ann lee!", "org": {"uid": "a-1"}});
        let p = |k: &str| proposal(&cfg(k), "uns-0123abc", &c);
        assert_eq!(p("preferred_username").unwrap().login, "ann_lee_");
        assert_eq!(p("email").unwrap().login, "Ann.Lee");
        assert_eq!(p("subject").unwrap().login, "uns-0123abc");
        assert_eq!(p("org.uid").unwrap().login, "a-1");
        assert_eq!(p("email").unwrap().email, "Ann.Lee@example.org");
        assert!(p("missing").is_err());
        assert_eq!(sanitize_login("@"), None);
        assert_eq!(sanitize_login("a"), None);
        assert_eq!(sanitize_login("élise").as_deref(), Some("_lise"));
        assert_eq!(sanitize_login(&"x".repeat(300)).map(|s| s.len()), Some(100));
        assert!(sanitize_login("a@b.c").is_some_and(|s| !s.contains('@')));
    }

    #[test]
    fn no_account_without_a_verified_email() {
        let c =
            json!({"email": "a@example.org", "email_verified": false, "preferred_username": "ann"});
        assert!(proposal(&cfg("preferred_username"), "s", &c).is_err());
        let c = json!({"preferred_username": "ann"});
        assert!(proposal(&cfg("preferred_username"), "s", &c).is_err());
    }

    #[test]
    fn only_matomo_access_entries_count() {
        let got = claimed_access(&[
            "/matomo/1/view".into(),
            "/matomo/2/superuser".into(),
            "matomo/3/view".into(),
            "/matomo/x/admin".into(),
            "/matomo/4/ADMIN".into(),
        ]);
        assert_eq!(
            got,
            vec![
                SiteAccess::parse("/matomo/1/view").unwrap(),
                SiteAccess::parse("/matomo/4/admin").unwrap()
            ]
        );
    }
}
