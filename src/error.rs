//! Every failure a user can hit, as a value: its status, and the page that says what happened and
//! what to check. Handlers return `Err(Error)`; [`crate::pages::render_error`] turns the marker
//! this leaves in the response into the page, so no handler formats an error by hand.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("unikgate is not configured yet")]
    NotConfigured,
    #[error("Matomo cannot be reached")]
    UpstreamUnavailable,
    #[error("Matomo did not answer in time")]
    UpstreamTimeout,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("URL too long")]
    UriTooLong,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("page not found")]
    NotFound,
    #[error("the provider cannot be reached")]
    ProviderUnreachable,
    #[error("the provider refused unikgate's client credentials")]
    ProviderClientRejected,
    #[error("the provider answered with an error: {0}")]
    ProviderError(String),
    #[error("the provider's answer could not be used: {0}")]
    ProviderBadAnswer(String),
    /// Carries the `rd` of the abandoned sign-in, for the retry.
    #[error("sign-in declined at the provider")]
    AccessDenied(String),
    #[error("the sign-in could not be completed: {0}")]
    SignInRejected(&'static str),
    #[error("the session store is unavailable")]
    StoreUnavailable,
    /// AutoLogin did not open a session.
    #[error("Matomo refused to open a session: {0}")]
    MintFailed(String),
    /// The UnikGate plugin did not open a session.
    #[error("Matomo refused to open a session: {0}")]
    PluginMintFailed(String),
    /// The link was saved, then the first Matomo session could not be opened (`.1`: why).
    #[error("linked to {0}, but {1}")]
    LinkedButMintFailed(String, Box<Error>),
    #[error("Matomo answered unexpectedly: {0}")]
    MatomoUnexpected(String),
    #[error("the form expired")]
    Csrf,
    #[error("too many attempts")]
    RateLimited,
    #[error("this @unikname is already linked")]
    IdentityAlreadyLinked,
    #[error("this Matomo account is already linked to another @unikname")]
    LoginAlreadyLinked,
    #[error("superusers may not sign in with an @unikname")]
    SuperuserDenied,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The parts of a page, attached to an error response for `pages::render_error` to fill in.
#[derive(Debug, Clone)]
pub struct PageSpec {
    pub title: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// (label, target): a retry link or button.
    pub action: Option<(&'static str, ActionTarget)>,
}

#[derive(Debug, Clone)]
pub enum ActionTarget {
    /// A path under the prefix, e.g. `sign_in`.
    Own(&'static str),
    /// The sign-in page, returning to this path afterwards.
    SignIn(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            NotConfigured | StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnavailable
            | ProviderUnreachable
            | ProviderClientRejected
            | ProviderError(_)
            | ProviderBadAnswer(_)
            | MintFailed(_)
            | PluginMintFailed(_)
            | LinkedButMintFailed(..)
            | MatomoUnexpected(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Forbidden(_) | AccessDenied(_) | Csrf | SuperuserDenied | SignInRejected(_) => {
                StatusCode::FORBIDDEN
            }
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            NotFound => StatusCode::NOT_FOUND,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            IdentityAlreadyLinked | LoginAlreadyLinked => StatusCode::CONFLICT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn spec(&self, provider: &str) -> PageSpec {
        use Error::*;
        let p = |title, message: String, hint: Option<String>| PageSpec {
            title,
            message,
            hint,
            action: None,
        };
        match self {
            NotConfigured => p(
                "Not configured yet",
                "unikgate is running but cannot sign anybody in yet.".into(),
                Some("not configured yet: set provider.client_id / client_secret (or UNIKGATE_PROVIDER__CLIENT_ID and UNIKGATE_PROVIDER__CLIENT_SECRET), then restart unikgate.".into()),
            ),
            UpstreamUnavailable => p(
                "Matomo is unreachable",
                "unikgate could not reach Matomo.".into(),
                Some("that Matomo is running and that upstream.url points at it; unikgate's log names the address it tried.".into()),
            ),
            UpstreamTimeout => p(
                "Matomo is too slow",
                "Matomo did not answer in time.".into(),
                Some("Matomo's load and logs, or raise upstream.timeout.".into()),
            ),
            Forbidden(why) => p("Not allowed", format!("This request is refused: {why}."), None),
            BadRequest(why) => p("Bad request", format!("This request cannot be handled: {why}."), None),
            PayloadTooLarge => p("Too large", "The request is larger than unikgate accepts here.".into(), None),
            UriTooLong => p("Address too long", "The address of this request is too long.".into(), None),
            HeadersTooLarge => p(
                "Request too large",
                "This request carries more headers or cookies than unikgate accepts.".into(),
                Some("clear this site's cookies in your browser, then try again.".into()),
            ),
            NotFound => p("Not found", "There is no such unikgate page.".into(), None),
            ProviderUnreachable => PageSpec {
                title: "Sign-in service unreachable",
                message: format!("unikgate could not reach {provider}."),
                hint: Some("your connection, then try again; administrators: the provider URLs in [provider] and outgoing network access from unikgate.".into()),
                action: Some(("Try again", ActionTarget::Own("sign_in"))),
            },
            ProviderClientRejected => p(
                "Sign-in is misconfigured",
                format!("{provider} did not accept unikgate's client credentials (invalid_client)."),
                Some("provider.client_id and the client secret (provider.client_secret or client_secret_file) match the application registered at the provider, and provider.token_auth_method.".into()),
            ),
            ProviderError(e) => p(
                "Sign-in failed",
                format!("{provider} answered with an error: {e}."),
                Some("try again; if it persists, administrators should check the provider settings and its logs.".into()),
            ),
            ProviderBadAnswer(e) => p(
                "Sign-in failed",
                format!("{provider} answered in a way unikgate cannot use: {e}."),
                Some("administrators: the provider URLs in [provider] (token_url, userinfo_url) and provider.userinfo_id.".into()),
            ),
            AccessDenied(rd) => PageSpec {
                title: "Sign-in declined",
                message: format!("You declined the sign-in at {provider}, so you are not signed in."),
                hint: None,
                action: Some(("Try again", ActionTarget::SignIn(rd.clone()))),
            },
            SignInRejected(why) => PageSpec {
                title: "Sign-in refused",
                message: format!("The answer of the sign-in service was refused: {why}."),
                hint: Some("try again; if it persists, administrators should check the clocks and the provider settings.".into()),
                action: Some(("Try again", ActionTarget::Own("sign_in"))),
            },
            StoreUnavailable => p(
                "Temporarily unavailable",
                "unikgate's session store is unavailable, so nobody can be signed in right now.".into(),
                Some("administrators: store.url, that the store is running and writable, and disk space. unikgate recovers by itself when the store is back.".into()),
            ),
            MintFailed(e) => p(
                "Matomo refused the session",
                format!("Matomo did not open a session for your account: {e}"),
                Some("administrators: that the AutoLogin plugin is installed and active and that Matomo runs under Apache (mod_php); `unikgate doctor --as <login>` checks both.".into()),
            ),
            PluginMintFailed(e) => p(
                "Matomo refused the session",
                format!("Matomo did not open a session for your account: {e}"),
                Some("administrators: that the UnikGate plugin of this unikgate version is in Matomo's plugins/ and activated, that [UnikGate] shared_secret in Matomo equals matomo.shared_secret, that both clocks are right, and Matomo's error log; `unikgate doctor --as <login>` opens a test session and says which check fails.".into()),
            ),
            LinkedButMintFailed(login, cause) => {
                let inner = cause.spec(provider);
                p(
                    "Linked, but Matomo refused the session",
                    format!("Your @unikname is now linked to the Matomo account {login}: that is saved, and you will not be asked again. Matomo did not open a session for it, though. {}", inner.message),
                    Some(format!("{} Once that is fixed, signing in again opens Matomo directly.", inner.hint.unwrap_or_default())),
                )
            }
            MatomoUnexpected(e) => p(
                "Matomo answered unexpectedly",
                format!("Matomo's answer could not be used: {e}"),
                Some("administrators: that upstream.url is Matomo 5 and Matomo's logs.".into()),
            ),
            Csrf => PageSpec {
                title: "Form expired",
                message: "This form expired or was not sent from unikgate's page.".into(),
                hint: None,
                action: Some(("Start again", ActionTarget::Own("sign_in"))),
            },
            RateLimited => p(
                "Too many attempts",
                "Too many link attempts in a short time. Wait ten minutes, then try again.".into(),
                None,
            ),
            IdentityAlreadyLinked => p(
                "Already linked to another account",
                "This @unikname is already linked to a Matomo account.".into(),
                Some("your account page shows the link; unlink it there first to link another Matomo account.".into()),
            ),
            LoginAlreadyLinked => p(
                "Already linked to another account",
                "This Matomo account is already linked to another @unikname.".into(),
                Some("sign in with that @unikname, or ask a Matomo administrator to remove the link (unikgate links remove).".into()),
            ),
            SuperuserDenied => p(
                "Not allowed for superusers",
                "This Matomo account is a superuser, and this Matomo does not allow superusers to sign in with an @unikname.".into(),
                Some("sign in with the Matomo password instead, or ask an administrator about matomo.deny_superusers.".into()),
            ),
            Internal(_) => p("Something went wrong", "unikgate hit an internal error.".into(), Some("unikgate's log, by the request id below.".into())),
        }
    }
}

/// Marker left in an error response for the page renderer.
#[derive(Debug, Clone)]
pub struct ErrorPage(pub Error);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = self.status().into_response();
        res.extensions_mut().insert(ErrorPage(self));
        res
    }
}

impl From<tower_sessions::session::Error> for Error {
    fn from(e: tower_sessions::session::Error) -> Self {
        tracing::error!(error = %e, "session store error");
        Error::StoreUnavailable
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "store error");
        Error::StoreUnavailable
    }
}
