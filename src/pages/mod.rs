//! Every HTML page unikgate shows, from the templates in `templates/` (one base, one stylesheet),
//! sent with a strict Content-Security-Policy and no framing.
//!
//! Invariant: the only place that turns data into HTML; askama escapes every value.

pub mod errors;
pub mod i18n;

use askama::Template;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::error::{Error, ErrorPage};
use crate::pages::i18n::Texts;
pub use errors::{ActionTarget, PageSpec};

pub const STYLESHEET: &str = include_str!("../../templates/unikgate.css");

/// What every page needs to know about the deployment.
#[derive(Debug, Clone)]
pub struct PageEnv {
    pub prefix: String,
    /// How pages name the provider (its host).
    pub provider_name: String,
    pub csp: HeaderValue,
}

impl PageEnv {
    /// `form_action_origin`: the provider's configured authorization origin. Pages whose forms
    /// redirect to the provider get the resolved origins through [`PageEnv::csp_for`].
    pub fn new(prefix: &str, provider_name: &str, form_action_origin: Option<&str>) -> Self {
        PageEnv {
            prefix: prefix.to_string(),
            provider_name: provider_name.to_string(),
            csp: Self::csp_for(form_action_origin.into_iter().map(str::to_string)),
        }
    }

    /// The policy, with `form-action` also allowing `origins` (browsers apply `form-action` to
    /// the redirects that follow a form post: start → authorize, sign-out → end-session).
    pub fn csp_for(origins: impl IntoIterator<Item = String>) -> HeaderValue {
        let mut extra = String::new();
        for o in origins {
            let clean = o
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
            if clean && !extra.split(' ').any(|e| e == o) {
                extra.push(' ');
                extra.push_str(&o);
            }
        }
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'"
        );
        HeaderValue::from_str(&csp).unwrap_or_else(|_| {
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
            )
        })
    }

    /// An HTML response with unikgate's security headers.
    pub fn html(&self, status: StatusCode, body: String) -> Response {
        let mut res = (status, body).into_response();
        self.secure_headers(res.headers_mut());
        res
    }

    pub fn secure_headers(&self, h: &mut http::HeaderMap) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }

    pub fn render<T: Template>(&self, status: StatusCode, page: &T) -> Response {
        match page.render() {
            Ok(body) => self.html(status, body),
            Err(e) => {
                tracing::error!(error = %e, "template failed");
                self.html(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        }
    }

    pub fn error_page(&self, err: &Error, request_id: &str, t: &Texts) -> Response {
        let spec = err.spec(&self.provider_name, t);
        let action = spec.action.map(|(label, target)| Action {
            label,
            href: match target {
                ActionTarget::Own(p) => format!("{}/{p}", self.prefix),
                ActionTarget::SignIn(rd) => format!(
                    "{}/sign_in?rd={}",
                    self.prefix,
                    percent_encoding::utf8_percent_encode(&rd, crate::util::QUERY_VALUE)
                ),
            },
        });
        let page = MessagePage {
            t,
            title: &spec.title,
            prefix: &self.prefix,
            heading: &spec.title,
            message: spec.message,
            hint: spec.hint,
            action,
            status: err.status().as_u16(),
            request_id,
        };
        self.render(err.status(), &page)
    }
}

pub struct Action {
    pub label: String,
    pub href: String,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
    pub heading: &'a str,
    pub message: String,
    pub hint: Option<String>,
    pub action: Option<Action>,
    pub status: u16,
    pub request_id: &'a str,
}

/// Where sign-out ends (the provider's post-logout redirect URI): no session, no form.
#[derive(Template)]
#[template(path = "signed_out.html")]
pub struct SignedOutPage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
}

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
    pub button: &'a str,
    pub csrf: &'a str,
    pub rd: &'a str,
    pub password_url: Option<&'a str>,
    pub notice: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "link.html")]
pub struct LinkPage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
    pub identity: &'a str,
    pub csrf: &'a str,
    pub rd: &'a str,
    pub login: &'a str,
    pub error: Option<String>,
    pub session_login: Option<&'a str>,
    /// `[provision] mode = "offer"`: the login of the account "Create my Matomo account" makes.
    pub offer: Option<&'a str>,
    /// Matomo asked for the two-factor code: the field is required and focused.
    pub code_needed: bool,
}

impl LinkPage<'_> {
    /// "Create my Matomo account (<login>)", when `[provision]` offers one.
    pub fn offer_button(&self) -> Option<String> {
        self.offer
            .map(|l| self.t.fmt("link.create_account", &[("login", l)]))
    }

    /// "Link this account (<login>)", when the browser holds a Matomo session.
    pub fn session_button(&self) -> Option<String> {
        self.session_login
            .map(|l| self.t.fmt("link.this_session", &[("login", l)]))
    }
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
    /// Where Matomo is: `/`, or `/analytics/`.
    pub home: &'a str,
    pub identity: &'a str,
    pub matomo_login: Option<&'a str>,
    pub linked_at: Option<String>,
    pub csrf: &'a str,
    /// `links.allow_unlink`: the Unlink button, or a note that only an administrator unlinks.
    pub can_unlink: bool,
}

/// Turns the [`ErrorPage`] marker of an error response into its HTML page; other responses pass.
/// `accept_language`: the request's, for the page's language.
pub fn render_error(
    env: &PageEnv,
    mut res: Response,
    request_id: &str,
    accept_language: Option<&HeaderValue>,
) -> Response {
    if let Some(ErrorPage(err)) = res.extensions_mut().remove::<ErrorPage>() {
        let t = crate::pages::i18n::negotiate(accept_language.and_then(|v| v.to_str().ok()));
        let mut page = env.error_page(&err, request_id, t);
        // Keep what the handler set besides the body (e.g. Set-Cookie clearing a session).
        for (name, value) in res.headers() {
            if name == header::SET_COOKIE
                || name == header::RETRY_AFTER
                || name == header::ALLOW
                || name == header::CONNECTION
            {
                page.headers_mut().append(name.clone(), value.clone());
            }
        }
        return page;
    }
    res
}

/// `GET <prefix>/static/unikgate.css`.
pub fn stylesheet() -> Response {
    static_file(STYLESHEET, "text/css; charset=utf-8")
}

/// The sign-in page's one script: keeps a link's `#fragment` through sign-in.
pub fn fragment_script() -> Response {
    static_file(FRAGMENT_SCRIPT, "text/javascript; charset=utf-8")
}

const FRAGMENT_SCRIPT: &str = include_str!("../../templates/fragment.js");

/// The superusers' page script (in Matomo's admin through the UnikGate plugin, or in
/// [`AdminPage`]).
pub fn admin_script() -> Response {
    static_file(ADMIN_SCRIPT, "text/javascript; charset=utf-8")
}

const ADMIN_SCRIPT: &str = include_str!("../../templates/admin.js");

/// unikgate's own superusers' page: the container `admin.js` fills.
#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage<'a> {
    pub t: &'a Texts,
    pub title: &'a str,
    pub prefix: &'a str,
    pub login: &'a str,
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}
