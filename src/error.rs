//! Every failure a user can hit, as a value: its status, and the page that says what happened and
//! what to check (`pages::errors`). Handlers return `Err(Error)`; [`crate::pages::render_error`] turns the marker
//! this leaves in the response into the page, so no handler formats an error by hand.
//!
//! Invariant: making an error logs nothing. A failure of something underneath (a store, the
//! network) keeps its [`Cause`], and the error is logged once where it ends: at the edge
//! (`gate::Gate::serve`, with the request's span), or where a caller deliberately swallows it.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// What a failure underneath was (a store's or the network's own error), kept with the error for
/// the one log line written where it ends. Never shown to the browser: [`Error`]'s `Display`
/// leaves it out; [`Error::chain`] has it.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(e))
    }

    /// A cause known only as text (an error already turned into a message).
    pub fn msg(s: impl Into<String>) -> Cause {
        Cause(Arc::new(Message(s.into())))
    }
}

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Which minter failed to open a Matomo session (each has its own page: what to check differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintBy {
    /// The AutoLogin plugin (`matomo.minter = "autologin"`).
    AutoLogin,
    /// The UnikGate plugin (`matomo.minter = "signed"`).
    Plugin,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("unikgate is not configured yet")]
    NotConfigured,
    #[error("Matomo cannot be reached")]
    UpstreamUnavailable(#[source] Cause),
    #[error("Matomo did not answer in time")]
    UpstreamTimeout,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("the request's body did not come in time")]
    RequestTimeout,
    #[error("too many request bodies are being read at once")]
    Busy,
    #[error("this method is not served here")]
    MethodNotAllowed,
    #[error("unsupported Expect")]
    ExpectationFailed,
    #[error("URL too long")]
    UriTooLong,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("page not found")]
    NotFound,
    #[error("the provider cannot be reached")]
    ProviderUnreachable(#[source] Cause),
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
    StoreUnavailable(#[source] Cause),
    /// A minter did not open a session (`.1`: why, as Matomo or the plugin said it).
    #[error("Matomo refused to open a session: {1}")]
    MintFailed(MintBy, String),
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
    /// The UnikGate plugin did not make the account or set its access (`.0`: why).
    #[error("Matomo did not make the account or set its access: {0}")]
    ProvisionFailed(String),
    /// `[access]` does not let this person in (`.0`: how pages name them).
    #[error("{0} may not sign in here")]
    NotAllowed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            NotConfigured | StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnavailable(_)
            | ProviderUnreachable(_)
            | ProviderClientRejected
            | ProviderError(_)
            | ProviderBadAnswer(_)
            | MintFailed(..)
            | ProvisionFailed(_)
            | LinkedButMintFailed(..)
            | MatomoUnexpected(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Forbidden(_) | AccessDenied(_) | Csrf | SuperuserDenied | NotAllowed(_)
            | SignInRejected(_) => StatusCode::FORBIDDEN,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Busy => StatusCode::SERVICE_UNAVAILABLE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            UriTooLong => StatusCode::URI_TOO_LONG,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            NotFound => StatusCode::NOT_FOUND,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            IdentityAlreadyLinked | LoginAlreadyLinked => StatusCode::CONFLICT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The catalogue section of this error's page (`locales/*.toml`, `[error.<key>]`).
    pub fn page_key(&self) -> &'static str {
        use Error::*;
        match self {
            NotConfigured => "not_configured",
            UpstreamUnavailable(_) => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Forbidden(_) => "forbidden",
            BadRequest(_) => "bad_request",
            PayloadTooLarge => "payload_too_large",
            RequestTimeout => "request_timeout",
            Busy => "busy",
            MethodNotAllowed => "method_not_allowed",
            ExpectationFailed => "expectation_failed",
            UriTooLong => "uri_too_long",
            HeadersTooLarge => "headers_too_large",
            NotFound => "not_found",
            ProviderUnreachable(_) => "provider_unreachable",
            ProviderClientRejected => "provider_client_rejected",
            ProviderError(_) => "provider_error",
            ProviderBadAnswer(_) => "provider_bad_answer",
            AccessDenied(_) => "access_denied",
            SignInRejected(_) => "sign_in_rejected",
            StoreUnavailable(_) => "store_unavailable",
            MintFailed(MintBy::AutoLogin, _) => "mint_failed",
            MintFailed(MintBy::Plugin, _) => "plugin_mint_failed",
            LinkedButMintFailed(..) => "linked_but_mint_failed",
            MatomoUnexpected(_) => "matomo_unexpected",
            Csrf => "csrf",
            RateLimited => "rate_limited",
            IdentityAlreadyLinked => "identity_already_linked",
            LoginAlreadyLinked => "login_already_linked",
            SuperuserDenied => "superuser_denied",
            NotAllowed(_) => "not_allowed",
            ProvisionFailed(_) => "provision_failed",
            Internal(_) => "internal",
        }
    }
}

impl Error {
    /// The error with what caused it, for a log line or an operator's terminal (never a page).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            s.push_str(": ");
            s.push_str(&e.to_string());
            next = e.source();
        }
        s
    }

    /// A store's failure, kept as the cause of [`Error::StoreUnavailable`].
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::StoreUnavailable(Cause::new(e))
    }
}

/// Marker left in an error response for the page renderer.
#[derive(Debug, Clone)]
pub struct ErrorPage(pub Error);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = self.status().into_response();
        // A body left unread (too slow, too large, no room to read it): the connection cannot
        // carry another request.
        if matches!(
            self,
            Error::RequestTimeout | Error::PayloadTooLarge | Error::Busy
        ) {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        res.extensions_mut().insert(ErrorPage(self));
        res
    }
}

impl From<tower_sessions::session::Error> for Error {
    fn from(e: tower_sessions::session::Error) -> Self {
        Error::store(e)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::store(e)
    }
}
