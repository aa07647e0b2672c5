//! The UnikGate plugin (`module=UnikGate`, matomo-plugin/UnikGate), installed when
//! `[UnikGate] shared_secret` is set (else every action is a 500). `action=whoami` names the
//! session's login; `action=login`, POST only, verifies unikgate's HS256 assertion
//! ([`verify_assertion`]) against the audience (`[UnikGate] public_url`, else the URL Matomo
//! computes) and opens a session for its `sub`, redirecting to its `rd`. A refusal is a 403
//! whose first line is the reason; for a caller who proved the secret a facts line follows
//! (the version, the URL Matomo sees, its proxy settings).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};

use super::php::Req;
use super::{cookie_header, json, Guard, Shared};

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
    if action != "login" || rq.method != Method::POST {
        return refuse("POST only");
    }
    inner.mints += 1;
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
        &mut inner.jtis,
    );
    match verified {
        Ok((sub, rd)) => sign_in(rq, inner, sub, rd),
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
            refuse_with(&why, facts)
        }
    }
}

/// The facts line's content: what this Matomo is and how it sees the request.
fn facts(st: &Shared, seen: &str, configured: Option<&str>) -> serde_json::Value {
    let v = st.version();
    serde_json::json!({
        "matomo": v.to_string(),
        "sees": seen,
        "public_url": configured.unwrap_or_default(),
        "proxy_scheme_headers": *st.proxy_scheme_headers.lock().unwrap(),
        "proxy_client_headers": ["HTTP_X_FORWARDED_FOR"],
        "proxy_host_headers": [],
        "logout_user": v.at_least(5, 9),
    })
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
    r
}

fn refuse(reason: &str) -> Response {
    refuse_with(reason, None)
}

/// The plugin's 403: the reason, then for a caller who proved the secret the facts line.
fn refuse_with(reason: &str, facts: Option<serde_json::Value>) -> Response {
    let mut body = format!("UnikGate: {reason}\n");
    if let Some(f) = facts {
        body.push_str(&format!("UnikGate-Facts: {f}\n"));
    }
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The UnikGate plugin's verification rules (matomo-plugin/UnikGate/Assertion.php), written
/// independently of unikgate's signer: returns (sub, rd) or the one-line reason and whether the
/// signature was good (then the refusal carries the facts).
fn verify_assertion(
    token: &str,
    secret: &str,
    audience: &str,
    now: i64,
    seen: &mut HashSet<String>,
) -> Result<(String, String), (String, bool)> {
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
    Ok((sub, rd))
}
