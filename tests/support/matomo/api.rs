//! The API module (`module=API`, and `Widgetize`, which authenticates the same way): Matomo
//! checks the token_auth itself. Where the token comes from (the `token_auth` parameter; from
//! 5.4 also a Bearer header, [`bearer`]; from 5.8 two different ones are refused,
//! [`conflicting`]), whose it is (an app-specific token, valid for an hour, or the fixed
//! `tok-<login>` every user has), and the UsersManager methods unikgate calls:
//! `createAppSpecificTokenAuth` (a login and password for a token), `getUser`, `logoutUser`
//! (from 5.9). Any other method answers with its name and the token's owner.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use super::php::Req;
use super::{json, token_hex, Guard, Inner, Version};

/// 5.4 (PR #23335, core/Request/AuthenticationToken.php): `$_SERVER['HTTP_AUTHORIZATION']`
/// starting with exactly "Bearer " is a token_auth, on every module. PHP sees that header under
/// PHP-FPM, and under Apache only with `CGIPassAuth On`.
pub(super) fn bearer(rq: &Req, version: Version) -> Option<String> {
    if version.at_least(5, 4) && (rq.fpm || rq.st.cgi_pass_auth.load(Ordering::Relaxed)) {
        rq.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    } else {
        None
    }
}

/// 5.8 (validateNoConflictingAuthParameters, on the root request): two different non-empty
/// token_auth values among the header, the body and the query, or force_api_session differing
/// between the query and the body, are a 400 before anything runs: that answer, else None.
pub(super) fn conflicting(rq: &Req, version: Version, bearer: Option<&str>) -> Option<Response> {
    if !version.at_least(5, 8) {
        return None;
    }
    let (get, post) = (&rq.get, &rq.post);
    let mut tokens: Vec<&str> = [
        bearer,
        post.get("token_auth").map(String::as_str),
        get.get("token_auth").map(String::as_str),
    ]
    .into_iter()
    .flatten()
    .filter(|t| !t.is_empty())
    .collect();
    tokens.dedup();
    let truthy = |v: Option<&String>| v.is_some_and(|v| !v.is_empty() && v != "0");
    let forced_differs = get.contains_key("force_api_session")
        && post.contains_key("force_api_session")
        && truthy(get.get("force_api_session")) != truthy(post.get("force_api_session"));
    if tokens.len() > 1 || forced_differs {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                api_error("Conflicting authentication parameters were provided in the request."),
            )
                .into_response(),
        );
    }
    None
}

pub(super) fn answer(
    rq: &Req,
    mut inner: Guard<'_>,
    version: Version,
    bearer: Option<String>,
) -> Response {
    let method = rq.var("method");
    if method == "UsersManager.createAppSpecificTokenAuth" {
        return create_token(rq, &mut inner, version);
    }
    let token = token(rq, version, bearer);
    let owner = owner(&inner, &token);
    // force_api_session=1 with a session cookie keeps the session alive.
    if rq.var("force_api_session") == "1" {
        let _ = rq.st.session_login(&mut inner, rq.cookie.as_deref());
    }
    let Some(owner) = owner else {
        drop(inner);
        rq.record(None);
        return (
            StatusCode::UNAUTHORIZED,
            api_error("You can't access this resource as it requires 'view' access."),
        )
            .into_response();
    };
    match method.as_str() {
        "UsersManager.logoutUser" => logout_user(rq, &mut inner, version, &owner),
        "UsersManager.getUser" => get_user(rq, &inner, &owner),
        _ => {
            drop(inner);
            rq.record(Some(owner.clone()));
            api_json(version, serde_json::json!({"method": method, "as": owner}))
        }
    }
}

/// Which token Matomo runs the request as: up to 5.3 the parameter; 5.4 to 5.7 a token_auth
/// parameter wins over the header (query before body); from 5.8 they cannot differ
/// ([`conflicting`]), the header first.
fn token(rq: &Req, version: Version, bearer: Option<String>) -> String {
    match (bearer, version.at_least(5, 8)) {
        (Some(b), true) => b,
        (Some(b), false) => {
            let t = rq.var("token_auth");
            if t.is_empty() {
                b
            } else {
                t
            }
        }
        (None, _) => rq.var("token_auth"),
    }
}

/// The login a token belongs to: an app-specific token younger than an hour, or `tok-<login>`.
fn owner(inner: &Inner, token: &str) -> Option<String> {
    inner
        .tokens
        .get(token)
        .filter(|(_, at)| at.elapsed() < Duration::from_secs(3600))
        .map(|(l, _)| l.clone())
        .or_else(|| {
            inner
                .users
                .values()
                .find(|u| format!("tok-{}", u.login) == token)
                .map(|u| u.login.clone())
        })
}

/// `UsersManager.createAppSpecificTokenAuth`: a login (or email) and its password for a new
/// token; a wrong password counts toward the brute-force block.
fn create_token(rq: &Req, inner: &mut Inner, version: Version) -> Response {
    let st = &rq.st;
    // 5.13 (PR #24821/#24843): a signed-in caller may make a token only for itself;
    // an anonymous caller still exchanges a login and password for that user's token.
    if version.at_least(5, 13) {
        let acting = st.session_login(inner, rq.cookie.as_deref());
        let who = rq.var("userLogin");
        if acting.is_some_and(|a| a != who) {
            return api_error("You can only create an app specific token for yourself.");
        }
    }
    if st.blocked(inner, rq.ip) {
        return api_error("You are currently not allowed to log in because you had too many failed logins, try again later.");
    }
    let who = rq.var("userLogin");
    let pw = rq.var("passwordConfirmation");
    let user = inner
        .users
        .values()
        .find(|u| u.login == who || u.email == who)
        .cloned();
    match user {
        Some(u) if u.password == pw => {
            let t = token_hex();
            inner
                .tokens
                .insert(t.clone(), (u.login.clone(), Instant::now()));
            json(serde_json::json!({"value": t}))
        }
        _ => {
            st.fail(inner, rq.ip);
            if pw.chars().count() < 6 {
                return api_error(
                    "This password is too weak, please supply another value or reset it.",
                );
            }
            api_error("The current password you entered is not correct.")
        }
    }
}

/// 5.9 (PR #24226): a superuser ends every Matomo session of a login.
fn logout_user(rq: &Req, inner: &mut Inner, version: Version, owner: &str) -> Response {
    if !version.at_least(5, 9) {
        return api_error("The method 'logoutUser' does not exist or is not available in the module 'UsersManager'.");
    }
    if !inner.users.get(owner).is_some_and(|u| u.superuser) {
        return api_error("You can't access this resource as it requires Super User access.");
    }
    let target = rq.var("userLogin");
    if !inner.users.contains_key(&target) {
        return api_error(&format!("The user '{target}' doesn't exist."));
    }
    inner
        .sessions
        .retain(|_, s| s.login.as_deref() != Some(target.as_str()));
    api_json(
        version,
        serde_json::json!({"result": "success", "message": "ok"}),
    )
}

/// `UsersManager.getUser`: a user may read itself, a superuser anyone.
fn get_user(rq: &Req, inner: &Inner, owner: &str) -> Response {
    let target = rq.var("userLogin");
    let owner_user = inner.users.get(owner).cloned();
    let Some(ou) = owner_user else {
        return api_error("no user");
    };
    if ou.login != target && !ou.superuser {
        return api_error(&format!(
            "The user has to be either a Super User or the user '{}' itself.",
            ou.email
        ));
    }
    let Some(t) = inner.users.get(&target).cloned() else {
        return api_error("The user does not exist.");
    };
    json(serde_json::json!({
        "login": t.login, "email": t.email,
        "superuser_access": if t.superuser { 1 } else { 0 },
        "last_seen": "2026-11-01 10:00:00", "invite_status": "active"
    }))
}

fn api_error(msg: &str) -> Response {
    json(serde_json::json!({"result": "error", "message": msg}))
}

/// An API answer: from 5.14 with `SecurityHeaders::sendForDataResponse()`'s headers (one value
/// each: PHP's header() replaces).
fn api_json(version: Version, v: serde_json::Value) -> Response {
    let mut r = json(v);
    if version.at_least(5, 14) {
        let h = r.headers_mut();
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert("x-frame-options", HeaderValue::from_static("deny"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none';"),
        );
    }
    r
}
