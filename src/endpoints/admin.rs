//! The superusers' page: every link with its live sessions, the audit trail's refusals, and two
//! actions (unlink, end a person's sessions). Same-origin JSON under `<prefix>/admin/api/`, read
//! by `static/admin.js` in the UnikGate plugin's page in Matomo's admin, or in unikgate's own
//! `<prefix>/admin` page (the one `minter = "autologin"` deployments use).
//!
//! Invariants: every call is for a browser whose unikgate session is linked to a Matomo login
//! that Matomo says is a superuser *at this request* (asked through the minter: a superuser
//! demoted in Matomo loses the page at once); anybody else gets 403 and nothing about anybody;
//! reads are same-origin only (`Sec-Fetch-Site`); every change carries the session's CSRF token
//! and is an audit event naming the superuser.

use super::*;
use crate::store::AuditQuery;

/// Links per page at most.
const MAX_PER_PAGE: u64 = 100;
/// Events per page.
const EVENTS_PER_PAGE: u64 = 50;

/// The superuser a request comes from.
struct Admin {
    login: String,
    csrf: String,
}

fn forbidden(why: &str) -> Response {
    json(StatusCode::FORBIDDEN, serde_json::json!({ "error": why }))
}

/// The superuser of this request, or the 403 to answer.
async fn admin_of(
    app: &App,
    ctx: &Ctx,
    headers: &HeaderMap,
    sess: &mut Sess,
) -> Result<Result<Admin, Response>, Error> {
    if let Some(site) = cross_site(headers) {
        crate::audit!(
            app,
            warn,
            event = "refused",
            client_ip = ctx.client_ip,
            reason = "admin API called from another site",
            sec_fetch_site = site
        );
        return Ok(Err(forbidden("same-origin requests only")));
    }
    let Some(user) = json_user(app, ctx, sess).await? else {
        return Ok(Err(forbidden("sign in with your @unikname first")));
    };
    let Some(link) = app.links.get(&user.issuer, &user.subject).await? else {
        return Ok(Err(forbidden("only Matomo superusers may use this page")));
    };
    let cookie = user.matomo.as_ref().and_then(|m| m.cookie.as_deref());
    let superuser = app
        .minter
        .is_superuser(&app.upstream, &link.matomo_login, cookie, ctx.client_ip)
        .await?;
    if !superuser {
        crate::audit!(
            app,
            warn,
            event = "refused",
            subject = user.subject,
            matomo_login = link.matomo_login,
            client_ip = ctx.client_ip,
            reason = "admin page: not a Matomo superuser"
        );
        return Ok(Err(forbidden("only Matomo superusers may use this page")));
    }
    let csrf = app.sessions.load(sess).await?.csrf.clone();
    Ok(Ok(Admin {
        login: link.matomo_login,
        csrf,
    }))
}

fn date(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

/// The texts of the page, in the request's language.
const TEXTS: &[&str] = &[
    "title",
    "intro",
    "search",
    "links",
    "none",
    "matomo_login",
    "unikname",
    "linked",
    "last_sign_in",
    "sessions",
    "last_seen",
    "client_ip",
    "actions",
    "unlink",
    "end_sessions",
    "confirm",
    "done_unlink",
    "done_end",
    "previous",
    "next",
    "page",
    "refusals",
    "no_refusals",
    "at",
    "reason",
    "forbidden",
    "failed",
    "never",
];

/// `GET <prefix>/admin/api/me`: who the page is for, its CSRF token and its texts.
pub(super) async fn me(v: Visit, mut sess: Session) -> Result<Response, Error> {
    let (app, ctx, t) = (&*v.app, &v.ctx, v.t);
    let admin = match admin_of(app, ctx, &v.headers, &mut sess).await? {
        Ok(a) => a,
        Err(res) => return Ok(res),
    };
    let texts: serde_json::Map<String, serde_json::Value> = TEXTS
        .iter()
        .map(|k| (k.to_string(), t.get(&format!("admin.{k}")).into()))
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "login": admin.login,
            "csrf": admin.csrf,
            "lang": t.lang,
            "texts": texts,
        }),
    ))
}

/// `GET <prefix>/admin/api/links?q=&page=&per_page=`: a page of links, each with its live
/// sessions (count, last seen, the last one's address).
pub(super) async fn links(v: Visit, mut sess: Session, Query(q): Query) -> Result<Response, Error> {
    let (app, ctx) = (&*v.app, &v.ctx);
    if let Err(res) = admin_of(app, ctx, &v.headers, &mut sess).await? {
        return Ok(res);
    }
    let filter: String = q
        .get("q")
        .map(|s| s.trim().chars().take(100).collect())
        .unwrap_or_default();
    let per_page = q
        .get("per_page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(25)
        .clamp(1, MAX_PER_PAGE);
    let page = q
        .get("page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, 1_000_000);
    Ok(json(
        StatusCode::OK,
        link_rows(app, &filter, page, per_page).await?,
    ))
}

/// A page of links (`page` from 1), each with its live sessions: how many, when the last was
/// last seen, and the address it signed in from. What `admin/api/links` answers (and
/// `examples/bench_admin.rs` times with 10,000 links).
pub async fn link_rows(
    app: &App,
    filter: &str,
    page: u64,
    per_page: u64,
) -> Result<serde_json::Value, Error> {
    let found = app
        .links
        .list_page(filter, (page - 1) * per_page, per_page)
        .await?;
    let mut rows = Vec::with_capacity(found.links.len());
    for l in &found.links {
        let entries = app.session_index.list_sessions(Some(&l.subject)).await?;
        let (mut live, mut last_seen, mut ip, mut display) = (0u32, None::<i64>, None, None);
        for e in entries.iter().filter(|e| e.issuer == l.issuer) {
            let Some(data) = app.sessions.peek(&e.session_id).await? else {
                continue;
            };
            let Some(u) = &data.user else { continue };
            live += 1;
            if last_seen.is_none_or(|t| data.touched > t) {
                last_seen = Some(data.touched);
                ip = e.client_ip.clone().or_else(|| u.client_ip.clone());
            }
            if display.is_none() {
                display = u.display.clone();
            }
        }
        rows.push(serde_json::json!({
            "id": l.id,
            "matomo_login": l.matomo_login,
            "subject": l.subject,
            "unikname": display.unwrap_or_else(|| l.subject.clone()),
            "linked": date(l.created_at),
            "last_sign_in": l.last_login_at.and_then(date),
            "sessions": live,
            "last_seen": last_seen.and_then(date),
            "client_ip": ip,
        }));
    }
    Ok(serde_json::json!({
        "total": found.total,
        "page": page,
        "per_page": per_page,
        "links": rows,
    }))
}

/// `GET <prefix>/admin/api/events?days=7&page=&event=refused`: the audit trail, newest first.
pub(super) async fn events(
    v: Visit,
    mut sess: Session,
    Query(q): Query,
) -> Result<Response, Error> {
    let (app, ctx) = (&*v.app, &v.ctx);
    if let Err(res) = admin_of(app, ctx, &v.headers, &mut sess).await? {
        return Ok(res);
    }
    let days = q
        .get("days")
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or(7)
        .clamp(1, 3660);
    let page = q
        .get("page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, 1_000_000);
    let events: Vec<String> = q
        .get("event")
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .take(16)
                .collect()
        })
        .unwrap_or_default();
    let rows = app
        .audit
        .list(&AuditQuery {
            subject: None,
            since: Some(now_ms() - days * 86_400_000),
            events,
            offset: (page - 1) * EVENTS_PER_PAGE,
            limit: EVENTS_PER_PAGE + 1,
        })
        .await?;
    let more = rows.len() as u64 > EVENTS_PER_PAGE;
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .take(EVENTS_PER_PAGE as usize)
        .map(|r| {
            serde_json::json!({
                "at": date(r.at),
                "event": r.event,
                "unikname": r.subject,
                "matomo_login": r.matomo_login,
                "client_ip": r.client_ip,
                "reason": r.reason,
                "details": r.details,
                "actor": r.actor,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "page": page, "more": more, "events": rows }),
    ))
}

/// The link a change names (`link`: its id), after the superuser and CSRF checks.
async fn target(
    v: &Visit,
    sess: &mut Sess,
    form: &Form,
) -> Result<Result<(Admin, crate::store::Link), Response>, Error> {
    let (app, ctx) = (&*v.app, &v.ctx);
    let admin = match admin_of(app, ctx, &v.headers, sess).await? {
        Ok(a) => a,
        Err(res) => return Ok(Err(res)),
    };
    let id = form.get("link").map(String::as_str).unwrap_or("");
    match app.links.get_by_id(id).await? {
        Some(l) => Ok(Ok((admin, l))),
        None => Ok(Err(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "no such link (removed meanwhile?)" }),
        ))),
    }
}

/// `POST <prefix>/admin/api/unlink` (`csrf`, `link`): removes the link and ends its sessions,
/// in unikgate and in Matomo.
pub(super) async fn unlink(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, form } = posted;
    let (admin, link) = match target(&v, &mut sess, &form).await? {
        Ok(t) => t,
        Err(res) => return Ok(res),
    };
    let app = &*v.app;
    let ids = app
        .session_index
        .list_sessions(Some(&link.subject))
        .await?
        .into_iter()
        .filter(|e| e.issuer == link.issuer)
        .count();
    let removed = app.unlink(&link.issuer, &link.subject).await?;
    crate::audit!(
        app,
        warn,
        event = "admin_unlink",
        subject = link.subject,
        matomo_login = link.matomo_login,
        client_ip = v.ctx.client_ip,
        actor = admin.login,
        sessions = ids
    );
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "unlinked": removed }),
    ))
}

/// `POST <prefix>/admin/api/end_sessions` (`csrf`, `link`): ends every session of that person,
/// in unikgate and in Matomo; the link stays.
pub(super) async fn end_sessions(v: Visit, posted: CsrfForm) -> Result<Response, Error> {
    let CsrfForm { mut sess, form } = posted;
    let (admin, link) = match target(&v, &mut sess, &form).await? {
        Ok(t) => t,
        Err(res) => return Ok(res),
    };
    let app = &*v.app;
    let ids = app
        .session_index
        .take_sessions(&link.issuer, &link.subject)
        .await?;
    let ended = app.end_sessions(&ids).await?;
    crate::audit!(
        app,
        warn,
        event = "admin_end_sessions",
        subject = link.subject,
        matomo_login = link.matomo_login,
        client_ip = v.ctx.client_ip,
        actor = admin.login,
        ended = ended
    );
    Ok(json(StatusCode::OK, serde_json::json!({ "ended": ended })))
}

/// `GET <prefix>/admin`: unikgate's own page holding the same script (for deployments without
/// the UnikGate plugin); 403 page for anybody but a Matomo superuser.
pub(super) async fn page(v: Visit, mut sess: Session) -> Result<Response, Error> {
    let (app, ctx, t) = (&*v.app, &v.ctx, v.t);
    let here = format!("{}/admin", app.cfg.server.prefix);
    if !sess.had_cookie() || signed_in_user(app, ctx, &mut sess).await?.is_none() {
        return Ok(to_sign_in(app, &here));
    }
    match admin_of(app, ctx, &v.headers, &mut sess).await? {
        Ok(admin) => Ok(app.pages.render(
            StatusCode::OK,
            &crate::pages::AdminPage {
                t,
                title: t.get("admin.title"),
                prefix: &app.cfg.server.prefix,
                login: &admin.login,
            },
        )),
        Err(_) => Err(Error::Forbidden("only Matomo superusers may use this page")),
    }
}
