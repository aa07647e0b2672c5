//! Every module without a file of its own: the UI (CoreHome and the rest), whose page names its
//! user and where it is (module, action, idSite, period, date); for an anonymous visitor the
//! login page as a 403, with a new anonymous session; the opt-out pages (`CoreAdminHome`
//! `optOut` / `optOutJS`, and `Proxy`), which answer anyone. Also the page builders the Login
//! module shares, and [`visitor`]: who a UI request is served as.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use super::php::Req;
use super::{cookie_header, Guard, Inner};

pub(super) fn answer(rq: &Req, mut inner: Guard<'_>, bearer: Option<&str>) -> Response {
    let login = visitor(rq, &mut inner, bearer);
    let module = rq.var("module");
    let action = rq.var("action");
    if (module == "CoreAdminHome" && (action == "optOut" || action == "optOutJS"))
        || module == "Proxy"
    {
        drop(inner);
        rq.record(login);
        return ([(header::CONTENT_TYPE, "text/html")], "<p>opt-out</p>").into_response();
    }
    let Some(l) = login else {
        return anonymous(rq, inner);
    };
    drop(inner);
    rq.record(Some(l.clone()));
    let body = format!(
        "<h1>Matomo</h1><p id=\"who\">Signed in to Matomo as <strong>{l}</strong></p><p id=\"where\">module={} action={} idSite={} period={} date={}</p><p><a id=\"logout\" href=\"index.php?module=Login&amp;action=logout\">Sign out</a></p>",
        html_escape(&module),
        html_escape(&action),
        html_escape(&rq.var("idSite")),
        html_escape(&rq.var("period")),
        html_escape(&rq.var("date"))
    );
    let mut r = html(StatusCode::OK, page(&l, &body));
    if let Some(c) = &rq.cookie {
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(c, rq.https, true));
    }
    r
}

/// No valid session: the login page, as a 403, with a new anonymous session.
fn anonymous(rq: &Req, mut inner: Guard<'_>) -> Response {
    let id = rq.st.new_session(&mut inner, None);
    drop(inner);
    rq.record(None);
    let mut r = html(StatusCode::FORBIDDEN, login_page());
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&id, rq.https, false));
    r
}

/// Who a request outside the API is served as. 5.4: a Bearer token authenticates every module
/// and switches the session off (makeSessionAuthenticator() is null); outside the API a
/// superuser's token is refused (checkTokenAuthIsNotLimited). Else the session's login.
pub(super) fn visitor(rq: &Req, inner: &mut Inner, bearer: Option<&str>) -> Option<String> {
    match bearer {
        Some(t) => inner
            .users
            .values()
            .find(|u| format!("tok-{}", u.login) == t)
            .or_else(|| inner.tokens.get(t).and_then(|(l, _)| inner.users.get(l)))
            .filter(|u| !u.superuser)
            .map(|u| u.login.clone()),
        None => rq.st.session_login(inner, rq.cookie.as_deref()),
    }
}

/// An HTML answer.
pub(super) fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Matomo's JavaScript string escaping as measured: letters, digits, `.` and `_` stay, the rest
/// become \uXXXX (`jane.doe-x@example.com` → `jane.doe\u002Dx\u0040example.com`).
fn js_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04X}", c as u32));
        }
    }
    out.push('"');
    out
}

/// A Matomo page of `login` (its `piwik.userLogin`), padded to a real page's size.
pub(super) fn page(login: &str, body: &str) -> String {
    // Matomo's real pages are ~150 KB; pad so that "read the whole page" code is exercised.
    let pad = "<!-- padding -->\n".repeat(2000);
    format!(
        "<!DOCTYPE html><html><head><title>Matomo stand-in</title><script>var piwik = {{}};\npiwik.userLogin = {};\npiwik.token_auth = \"standin\";</script></head><body>{body}\n{pad}</body></html>",
        js_string(login)
    )
}

/// The login form, as an anonymous page.
pub(super) fn login_page() -> String {
    page(
        "anonymous",
        "<h1>Sign in</h1><form method=\"post\" action=\"index.php?module=Login&amp;action=login\"><input name=\"form_login\"><input name=\"form_password\" type=\"password\"><button>Sign in</button></form>",
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
