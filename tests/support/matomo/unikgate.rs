//! The UnikGate plugin (`module=UnikGate`, matomo-plugin/UnikGate), installed when
//! `[UnikGate] shared_secret` is set (else every action is a 500). `action=whoami` names the
//! session's login; the POST actions verify unikgate's HS256 assertion ([`verify_assertion`],
//! made for that action: its `act` claim, missing = login) against the audience
//! (`[UnikGate] public_url`, else the URL Matomo computes):
//! - `login` opens a session for its `sub`, redirecting to its `rd`;
//! - `provision` creates the user `sub` (`email`, `acc`, `owner`; [`provision`]), then as login;
//! - `access` sets `acc`'s levels on `sub`'s sites, and with `prune` removes the others
//!   ([`access`]): 200 JSON of what changed;
//! - `superuser` says whether `sub` is a superuser now ([`superuser`]): 200 JSON
//!   `{"login","exists","superuser"}`, nothing changed.
//!
//! The plugin's admin page (`action=admin`, Administration → System → Unikname) is not modelled:
//! here it is the "POST only" refusal.
//!
//! A refusal is text/plain whose first line is `UnikGate: <reason>` (403; 409 for a collision,
//! 400 for what Matomo refuses); after a good signature a facts line follows (the version, the URL
//! Matomo sees, its proxy settings, the plugin's actions). With
//! [`StandInState::unikgate_old_plugin`] the plugin is 1.1.0: login and whoami only, `act` not
//! read, no actions in the facts (provision, access and superuser are Matomo's "Action not
//! found" page).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};

use super::php::Req;
use super::{cookie_header, json, Guard, Inner, Shared, User};

/// The actions of the plugin, as its facts list them.
const ACTIONS: [&str; 5] = ["login", "whoami", "provision", "access", "superuser"];
/// The levels an assertion may grant on a site.
const LEVELS: [&str; 3] = ["view", "write", "admin"];

pub(super) fn answer(rq: &Req, mut inner: Guard<'_>) -> Response {
    let st = &rq.st;
    let secret = st.unikgate_secret.lock().unwrap().clone();
    let Some(secret) = secret else {
        drop(inner);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "<p>The plugin UnikGate is not activated.</p>",
        )
            .into_response();
    };
    let action = rq.var("action");
    if action == "whoami" {
        let login = st.session_login(&mut inner, rq.cookie.as_deref());
        drop(inner);
        return json(serde_json::json!({ "login": login }));
    }
    let old = st.unikgate_old_plugin.load(Ordering::Relaxed);
    if old && ["provision", "access", "superuser"].contains(&action.as_str()) {
        // Matomo's error page for an action its controller lacks (ControllerResolver).
        drop(inner);
        rq.record(None);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!("<p>Action '{action}' not found in the module 'UnikGate'</p>"),
        )
            .into_response();
    }
    if !["login", "provision", "access", "superuser"].contains(&action.as_str())
        || rq.method != Method::POST
    {
        return refuse("POST only");
    }
    if action == "login" || action == "provision" {
        inner.mints += 1;
    }
    let scheme = if rq.https { "https" } else { "http" };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + st.clock_offset.load(Ordering::Relaxed);
    // Controller.php: the audience is [UnikGate] public_url, else the URL Matomo computes.
    let seen = format!("{scheme}://{}/", rq.host);
    let configured = st
        .unikgate_public_url
        .lock()
        .unwrap()
        .clone()
        .map(|u| format!("{}/", u.trim_end_matches('/')));
    let verified = verify_assertion(
        &rq.post.get("assertion").cloned().unwrap_or_default(),
        &secret,
        configured.as_deref().unwrap_or(&seen),
        now,
        (!old).then_some(action.as_str()),
        &mut inner.jtis,
    );
    match verified {
        Ok(v) => match action.as_str() {
            "provision" => provision(rq, inner, v),
            "access" => access(rq, inner, v),
            "superuser" => superuser(rq, inner, v),
            _ => sign_in(rq, inner, v.sub, v.rd),
        },
        Err((mut why, signed)) => {
            if why.starts_with("wrong audience") {
                why.push_str(&match &configured {
                    Some(_) => {
                        format!(" (from [UnikGate] public_url; Matomo sees its own URL as {seen})")
                    }
                    None => " (the URL Matomo computes for this request)".to_string(),
                });
            }
            let facts = signed.then(|| facts(st, &seen, configured.as_deref()));
            drop(inner);
            rq.record(None);
            refuse_with(&why, facts, StatusCode::FORBIDDEN)
        }
    }
}

/// The facts line's content: what this Matomo is and how it sees the request.
fn facts(st: &Shared, seen: &str, configured: Option<&str>) -> serde_json::Value {
    let v = st.version();
    let mut f = serde_json::json!({
        "matomo": v.to_string(),
        "sees": seen,
        "public_url": configured.unwrap_or_default(),
        "proxy_scheme_headers": *st.proxy_scheme_headers.lock().unwrap(),
        "proxy_client_headers": ["HTTP_X_FORWARDED_FOR"],
        "proxy_host_headers": [],
        "logout_user": v.at_least(5, 9),
    });
    if !st.unikgate_old_plugin.load(Ordering::Relaxed) {
        f["actions"] = serde_json::json!(ACTIONS);
    }
    f
}

/// A verified assertion: the login must exist (and be no superuser unless
/// `[UnikGate] allow_superusers`); a new session replaces the browser's previous one.
fn sign_in(rq: &Req, mut inner: Guard<'_>, sub: String, rd: String) -> Response {
    let Some(user) = inner.users.get(&sub).cloned() else {
        drop(inner);
        return refuse("unknown login");
    };
    if user.superuser && !rq.st.unikgate_allow_superusers.load(Ordering::Relaxed) {
        drop(inner);
        return refuse("superusers may not sign in through unikgate");
    }
    if let Some(old) = &rq.cookie {
        inner.sessions.remove(old);
    }
    let id = rq.st.new_session(&mut inner, Some(sub.clone()));
    drop(inner);
    rq.record(Some(sub));
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&id, rq.https, false));
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&rd).unwrap());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn refuse(reason: &str) -> Response {
    refuse_with(reason, None, StatusCode::FORBIDDEN)
}

/// The plugin's refusal (403, 409 or 400): the reason, then for a caller who proved the secret
/// the facts line.
fn refuse_with(reason: &str, facts: Option<serde_json::Value>, status: StatusCode) -> Response {
    let mut body = format!("UnikGate: {}\n", reason.replace(['\r', '\n'], " "));
    if let Some(f) = facts {
        body.push_str(&format!("UnikGate-Facts: {f}\n"));
    }
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `action=provision` (Controller::provision): the claims checked (email, owner, acc), then as
/// superuser: an existing login is a retry only for the owner that had it made (else 409), an
/// e-mail another user has is a 409, what Matomo's addUser refuses a 400 ([`addable`]); the
/// owner is kept beside the new user, the access granted ([`grant`]), and the session opened as
/// `login` does.
fn provision(rq: &Req, mut inner: Guard<'_>, v: Verified) -> Response {
    let checked = email_claim(&v.claims).and_then(|e| {
        let owner = owner_claim(&v.claims)?;
        Ok((e, owner, access_claim(&v.claims)?))
    });
    let (email, owner, acc) = match checked {
        Ok(c) => c,
        Err(why) => {
            drop(inner);
            rq.record(None);
            return refuse(&why);
        }
    };
    let outcome = match find_login(&inner, &v.sub) {
        Some(login) => {
            if inner.owners.get(&login) == Some(&owner) {
                Ok(login)
            } else {
                Err((StatusCode::CONFLICT, format!("exists login {login}")))
            }
        }
        None => match inner
            .users
            .values()
            .find(|u| u.email.to_lowercase() == email.to_lowercase())
        {
            Some(other) => Err((
                StatusCode::CONFLICT,
                format!("exists email {}", other.login),
            )),
            None => match addable(rq, &inner, &v.sub, &email) {
                Err(why) => Err((
                    StatusCode::BAD_REQUEST,
                    format!("cannot create {}: {why}", v.sub),
                )),
                Ok(()) => {
                    inner.users.insert(
                        v.sub.clone(),
                        User {
                            login: v.sub.clone(),
                            email,
                            password: super::token_hex(),
                            superuser: false,
                            sites: BTreeMap::new(),
                        },
                    );
                    inner.owners.insert(v.sub.clone(), owner);
                    Ok(v.sub.clone())
                }
            },
        },
    };
    let granted = outcome.and_then(|login| {
        if inner.users.get(&login).is_some_and(|u| u.superuser) {
            return Ok(login);
        }
        grant(rq, &mut inner, &login, &acc, false)
            .map(|_| login.clone())
            .map_err(|why| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot set the access of {login}: {why}"),
                )
            })
    });
    match granted {
        Ok(login) => sign_in(rq, inner, login, v.rd),
        Err((status, why)) => {
            drop(inner);
            rq.record(None);
            refuse_with(&why, None, status)
        }
    }
}

/// `action=access` (Controller::access): `acc`'s levels set where they differ and, with `prune`,
/// the user's other sites removed; 200 JSON of what changed. A superuser is left as it is. No
/// session.
fn access(rq: &Req, mut inner: Guard<'_>, v: Verified) -> Response {
    let checked = access_claim(&v.claims).and_then(|a| Ok((a, prune_claim(&v.claims)?)));
    let (acc, prune) = match checked {
        Ok(c) => c,
        Err(why) => {
            drop(inner);
            rq.record(None);
            return refuse(&why);
        }
    };
    let Some(login) = find_login(&inner, &v.sub) else {
        drop(inner);
        rq.record(None);
        return refuse("unknown login");
    };
    let answer = if inner.users.get(&login).is_some_and(|u| u.superuser) {
        Ok(serde_json::json!({"set": {}, "removed": [], "superuser": true}))
    } else {
        grant(rq, &mut inner, &login, &acc, prune).map(|(set, removed)| {
            serde_json::json!({"set": set, "removed": removed, "superuser": false})
        })
    };
    drop(inner);
    rq.record(None);
    match answer {
        Ok(v) => {
            let mut r = json(v);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(why) => refuse_with(
            &format!("cannot set the access of {login}: {why}"),
            None,
            StatusCode::BAD_REQUEST,
        ),
    }
}

/// `action=superuser` (Controller::superuser): whether `sub` is a superuser, from the users as
/// they are now; an unknown login is `exists: false`. No session, nothing changed.
fn superuser(rq: &Req, inner: Guard<'_>, v: Verified) -> Response {
    let answer = match find_login(&inner, &v.sub).and_then(|l| inner.users.get(&l)) {
        Some(u) => serde_json::json!({"login": u.login, "exists": true, "superuser": u.superuser}),
        None => serde_json::json!({"login": v.sub, "exists": false, "superuser": false}),
    };
    drop(inner);
    rq.record(None);
    let mut r = json(answer);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The stored login Matomo finds for `login` (MySQL compares logins without case).
fn find_login(inner: &Inner, login: &str) -> Option<String> {
    let want = login.to_lowercase();
    inner
        .users
        .values()
        .find(|u| u.login.to_lowercase() == want)
        .map(|u| u.login.clone())
}

/// What Matomo 5.1.2's `addUser` checks before it inserts (UsersManager::dieIfUsersAdminIsDisabled,
/// UserRepository::create's validators, whose messages BaseValidator::check prefixes with the
/// field's name), with its messages.
fn addable(rq: &Req, inner: &Inner, login: &str, email: &str) -> Result<(), String> {
    if !rq.st.enable_users_admin.load(Ordering::Relaxed) {
        return Err("Creating, updating, and deleting users has been disabled.".into());
    }
    let login_chars = |c: char| c.is_ascii_alphanumeric() || "_.@+-ÄäÖöÜüß".contains(c);
    if !(2..=100).contains(&login.len()) || !login.chars().all(login_chars) {
        return Err("Username: The username must be between 2 and 100 characters long and contain only letters, numbers, or the characters '_' or '-' or '.' or '@' or '+'".into());
    }
    if inner
        .users
        .values()
        .any(|u| u.email.to_lowercase() == login.to_lowercase())
    {
        return Err(format!(
            "Username: Username '{login}' already used as an email."
        ));
    }
    let well_formed = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !well_formed {
        return Err(format!(
            "Email: The value \"{email}\" does not look like a valid email."
        ));
    }
    if find_login(inner, email).is_some() {
        return Err(format!(
            "Email: Email '{email}' already used as a username."
        ));
    }
    Ok(())
}

/// Controller::grant: each site of `acc` that exists and where `login` has another level gets
/// its level; with `prune`, every other site of `login` is removed. Returns (set, removed), or
/// Matomo's refusal of setUserAccess (users admin disabled) when something was to change.
fn grant(
    rq: &Req,
    inner: &mut Inner,
    login: &str,
    acc: &BTreeMap<u32, &'static str>,
    prune: bool,
) -> Result<(BTreeMap<String, &'static str>, Vec<u32>), String> {
    let current = inner
        .users
        .get(login)
        .map(|u| u.sites.clone())
        .unwrap_or_default();
    let set: BTreeMap<u32, &'static str> = acc
        .iter()
        .filter(|(id, level)| {
            inner.site_ids.contains(id) && current.get(id).map(String::as_str) != Some(**level)
        })
        .map(|(id, level)| (*id, *level))
        .collect();
    let removed: Vec<u32> = if prune {
        current
            .keys()
            .filter(|id| !acc.contains_key(id))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    if (!set.is_empty() || !removed.is_empty()) && !rq.st.enable_users_admin.load(Ordering::Relaxed)
    {
        return Err("Creating, updating, and deleting users has been disabled.".into());
    }
    if let Some(u) = inner.users.get_mut(login) {
        for (id, level) in &set {
            u.sites.insert(*id, level.to_string());
        }
        for id in &removed {
            u.sites.remove(id);
        }
    }
    Ok((
        set.into_iter().map(|(id, l)| (id.to_string(), l)).collect(),
        removed,
    ))
}

/// Assertion::access: `acc`, an object of site id (digits, no leading zero) => view, write or
/// admin (json_decode's arrays: an empty list reads as `{}`, a list's keys are 0, 1, …).
fn access_claim(c: &serde_json::Value) -> Result<BTreeMap<u32, &'static str>, String> {
    let entries: Vec<(String, serde_json::Value)> = match c.get("acc") {
        Some(serde_json::Value::Object(m)) => {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        _ => return Err("acc missing or not an object of site ids to view, write or admin".into()),
    };
    let mut out = BTreeMap::new();
    for (id, level) in entries {
        let digits = !id.is_empty()
            && id.len() <= 10
            && !id.starts_with('0')
            && id.bytes().all(|b| b.is_ascii_digit());
        if !digits {
            return Err(format!("acc: {} is not a site id", serde_json::json!(id)));
        }
        let Some(level) = LEVELS.iter().find(|l| level.as_str() == Some(**l)) else {
            return Err(format!(
                "acc: site {id} cannot be given {level} (only view, write or admin)"
            ));
        };
        // Past u32 no site exists: the plugin accepts the id and finds no such site.
        if let Ok(n) = id.parse::<u32>() {
            out.insert(n, *level);
        }
    }
    Ok(out)
}

/// Assertion::email: a non-empty string without control characters.
fn email_claim(c: &serde_json::Value) -> Result<String, String> {
    c.get("email")
        .and_then(|v| v.as_str())
        .filter(|e| {
            !e.trim_matches([' ', '\t', '\n', '\r', '\0', '\x0b'])
                .is_empty()
        })
        .filter(|e| !e.chars().any(|ch| ch.is_ascii_control()))
        .map(str::to_string)
        .ok_or_else(|| "missing claim email".to_string())
}

/// Assertion::owner: 64 lowercase hex characters.
fn owner_claim(c: &serde_json::Value) -> Result<String, String> {
    c.get("owner")
        .and_then(|v| v.as_str())
        .filter(|o| o.len() == 64 && o.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .map(str::to_string)
        .ok_or_else(|| "owner is not 64 lowercase hex characters".to_string())
}

/// Assertion::prune: a boolean.
fn prune_claim(c: &serde_json::Value) -> Result<bool, String> {
    c.get("prune")
        .and_then(|v| v.as_bool())
        .ok_or_else(|| "prune is not a boolean".to_string())
}

/// A verified assertion: its login, return path and every claim.
struct Verified {
    sub: String,
    rd: String,
    claims: serde_json::Value,
}

/// The UnikGate plugin's verification rules (matomo-plugin/UnikGate/Assertion.php), written
/// independently of unikgate's signer: the assertion for the action `act` (None: the 1.1.0
/// plugin, which reads no `act`), or the one-line reason and whether the signature was good (then
/// the refusal carries the facts).
fn verify_assertion(
    token: &str,
    secret: &str,
    audience: &str,
    now: i64,
    act: Option<&str>,
    seen: &mut HashSet<String>,
) -> Result<Verified, (String, bool)> {
    let unsigned = |e: String| (e, false);
    let signed = |e: String| (e, true);
    use base64::Engine;
    use hmac::Mac;
    let dec = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| unsigned("malformed token".to_string()))
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().take(2).any(|p| p.is_empty()) {
        return Err(unsigned("malformed token".into()));
    }
    let header: serde_json::Value =
        serde_json::from_slice(&dec(parts[0])?).map_err(|_| unsigned("malformed token".into()))?;
    if header != serde_json::json!({"alg": "HS256", "typ": "JWT"}) {
        return Err(unsigned(
            "unsupported header: only {\"alg\":\"HS256\",\"typ\":\"JWT\"}".into(),
        ));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    if mac.verify_slice(&dec(parts[2])?).is_err() {
        return Err(unsigned("bad signature".into()));
    }
    let c: serde_json::Value = serde_json::from_slice(&dec(parts[1]).map_err(|(e, _)| signed(e))?)
        .map_err(|_| signed("malformed claims".into()))?;
    let s = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(signed(format!("missing claim {k}")))
    };
    let n = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_i64())
            .ok_or(signed(format!("missing claim {k}")))
    };
    let (iss, aud, sub, jti, rd) = (s("iss")?, s("aud")?, s("sub")?, s("jti")?, s("rd")?);
    let (iat, exp) = (n("iat")?, n("exp")?);
    if iss != "unikgate" {
        return Err(signed("wrong issuer".into()));
    }
    if let Some(want) = act {
        let got = match c.get("act") {
            None => "login",
            Some(v) => v
                .as_str()
                .filter(|a| {
                    (1..=32).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_lowercase())
                })
                .ok_or(signed("malformed claim act".into()))?,
        };
        if got != want {
            return Err(signed(format!(
                "wrong action: the assertion is for {got}, not {want}"
            )));
        }
    }
    if format!("{}/", aud.trim_end_matches('/')) != audience {
        return Err(signed(format!(
            "wrong audience: the assertion is for {}/, this Matomo is {audience}",
            aud.trim_end_matches('/')
        )));
    }
    if exp <= iat || exp - iat > 60 {
        return Err(signed("lifetime longer than 60 s".into()));
    }
    if iat > now + 30 {
        return Err(signed(format!("not yet valid (server time {now})")));
    }
    if exp + 30 <= now {
        return Err(signed(format!("expired (server time {now})")));
    }
    if sub.len() > 100
        || !sub
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.@+-ÄäÖöÜüß".contains(ch))
    {
        return Err(signed("sub is not a Matomo login".into()));
    }
    if !rd.starts_with('/')
        || rd.starts_with("//")
        || rd.starts_with("/\\")
        || rd
            .chars()
            .any(|ch| ch == '\\' || ch.is_whitespace() || ch.is_control())
    {
        return Err(signed("rd is not a relative path".into()));
    }
    if !seen.insert(jti) {
        return Err(signed("replayed assertion".into()));
    }
    Ok(Verified { sub, rd, claims: c })
}
