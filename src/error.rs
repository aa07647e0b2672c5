//! Every failure a user can hit, as a value: its status, and the page that says what happened and
//! what to check (`pages::errors`). Handlers return `Err(Error)`; [`crate::pages::render_error`] turns the marker
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
            UpstreamUnavailable => "upstream_unavailable",
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
            ProviderUnreachable => "provider_unreachable",
            ProviderClientRejected => "provider_client_rejected",
            ProviderError(_) => "provider_error",
            ProviderBadAnswer(_) => "provider_bad_answer",
            AccessDenied(_) => "access_denied",
            SignInRejected(_) => "sign_in_rejected",
            StoreUnavailable => "store_unavailable",
            MintFailed(_) => "mint_failed",
            PluginMintFailed(_) => "plugin_mint_failed",
            LinkedButMintFailed(..) => "linked_but_mint_failed",
            MatomoUnexpected(_) => "matomo_unexpected",
            Csrf => "csrf",
            RateLimited => "rate_limited",
            IdentityAlreadyLinked => "identity_already_linked",
            LoginAlreadyLinked => "login_already_linked",
            SuperuserDenied => "superuser_denied",
            Internal(_) => "internal",
        }
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
