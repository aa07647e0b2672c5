//! The AutoLogin plugin (`module=AutoLogin`, what unikgate's AutoLogin minter calls). Its headers
//! act on any AutoLogin request: `Matomo-Username` names who is signed in, `Matomo-Email`
//! registers an unknown login (AutoRegistration), `Matomo-Role` (`superuser`, `noaccess`)
//! changes the user's rights. They are read through `getallheaders()`: under PHP-FPM the names
//! come capitalised and the plugin never finds them. Each call opens an anonymous session
//! first, whose cookie its error page sets.

use std::sync::atomic::Ordering;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use super::php::{header_of, php_headers, Req};
use super::{cookie_header, token_hex, Guard, Inner, User};

pub(super) fn answer(rq: &Req, mut inner: Guard<'_>) -> Response {
    inner.mints += 1;
    let ph = php_headers(&rq.headers, rq.fpm);
    let username = header_of(&ph, "matomo-username").map(str::to_string);
    let role = header_of(&ph, "matomo-role").map(str::to_string);
    let email = header_of(&ph, "matomo-email").map(str::to_string);
    let anon = rq.st.new_session(&mut inner, None);
    let username = match known_user(rq, &mut inner, username, email) {
        Ok(u) => u,
        Err(msg) => {
            drop(inner);
            rq.record(None);
            let mut r = (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("<html><body><p>{msg}</p></body></html>"),
            )
                .into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, cookie_header(&anon, rq.https, false));
            return r;
        }
    };
    match role.as_deref() {
        Some("superuser") => {
            if let Some(u) = inner.users.get_mut(&username) {
                u.superuser = true;
            }
        }
        Some("noaccess") => {
            if let Some(u) = inner.users.get_mut(&username) {
                u.sites.clear();
            }
        }
        _ => {}
    }
    // A new login ends the browser's previous session.
    if let Some(old) = &rq.cookie {
        inner.sessions.remove(old);
    }
    let id = rq.st.new_session(&mut inner, Some(username.clone()));
    drop(inner);
    rq.record(Some(username));
    let scheme = if rq.https { "https" } else { "http" };
    let trusted = rq.st.trusted_host.lock().unwrap().clone();
    let shown_host = match trusted {
        Some(t) if t != rq.host => "127.0.0.1".to_string(),
        _ => rq.host.clone(),
    };
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&id, rq.https, false));
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("{scheme}://{shown_host}/index.php")).unwrap(),
    );
    r
}

/// The login the headers name, registered first if it is unknown and AutoRegistration allows;
/// else the message of the plugin's error page.
fn known_user(
    rq: &Req,
    inner: &mut Inner,
    username: Option<String>,
    email: Option<String>,
) -> Result<String, String> {
    let Some(username) = username else {
        return Err("Autologin error. No username defined in the request header".into());
    };
    if !inner.users.contains_key(&username) {
        if username.contains(',') {
            return Err(format!("Autologin error. User '{username}' is not valid"));
        }
        if !rq.st.auto_registration.load(Ordering::Relaxed) {
            return Err(format!(
                "AutoRegistration is disabled. User '{username}' does not exist in matomo"
            ));
        }
        let Some(email) = email else {
            return Err("Autologin error. No email address defined in the request header. Required for AutoRegistration".into());
        };
        inner.users.insert(
            username.clone(),
            User {
                login: username.clone(),
                email,
                password: token_hex(),
                superuser: false,
                sites: Default::default(),
            },
        );
    }
    Ok(username)
}
