//! The Login module (`module=Login`): `action=logout` ends the session; a POST is the password
//! form (a wrong password counts toward the brute-force block and shows the form again); any
//! other request is the who-am-i page: it names its user, and with no valid session makes a new
//! anonymous one.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};

use super::php::Req;
use super::ui::{html, login_page, page, visitor};
use super::{cookie_header, Guard};

pub(super) fn answer(rq: &Req, inner: Guard<'_>, bearer: Option<&str>) -> Response {
    if rq.var("action") == "logout" {
        return logout(rq, inner);
    }
    if rq.method == Method::POST {
        return password_form(rq, inner);
    }
    who_am_i(rq, inner, bearer)
}

fn logout(rq: &Req, mut inner: Guard<'_>) -> Response {
    if let Some(c) = &rq.cookie {
        inner.sessions.remove(c);
    }
    drop(inner);
    rq.record(None);
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "MATOMO_SESSID=; expires=Tue, 01-Jan-1980 06:00:00 GMT; path=/; SameSite=Lax",
        ),
    );
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("index.php?module=CoreHome&action="),
    );
    r
}

fn password_form(rq: &Req, mut inner: Guard<'_>) -> Response {
    let login = rq.var("form_login");
    let pw = rq.var("form_password");
    let ok = inner.users.get(&login).is_some_and(|u| u.password == pw);
    if !ok {
        rq.st.fail(&mut inner, rq.ip);
        return html(StatusCode::OK, login_page());
    }
    if let Some(old) = &rq.cookie {
        inner.sessions.remove(old);
    }
    let id = rq.st.new_session(&mut inner, Some(login));
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&id, rq.https, false));
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("index.php"));
    r
}

fn who_am_i(rq: &Req, mut inner: Guard<'_>, bearer: Option<&str>) -> Response {
    let login = visitor(rq, &mut inner, bearer);
    let mut r = match &login {
        Some(l) => html(StatusCode::OK, page(l, "<p>Already signed in.</p>")),
        None => html(StatusCode::OK, login_page()),
    };
    let id = match (&login, &rq.cookie) {
        (Some(_), Some(c)) => c.clone(),
        _ => rq.st.new_session(&mut inner, None),
    };
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&id, rq.https, login.is_some()),
    );
    drop(inner);
    rq.record(login);
    r
}
