//! An error's page: its title, message, what to check and the retry it offers, in the
//! language of the request, from the catalogue (`locales/`). The error itself (`crate::error`)
//! knows its status and its page's key, nothing of texts.

use crate::error::Error;
use crate::pages::i18n::Texts;

/// The parts of a page, attached to an error response for `pages::render_error` to fill in.
#[derive(Debug, Clone)]
pub struct PageSpec {
    pub title: String,
    pub message: String,
    pub hint: Option<String>,
    /// (label, target): a retry link or button.
    pub action: Option<(String, ActionTarget)>,
}

#[derive(Debug, Clone)]
pub enum ActionTarget {
    /// A path under the prefix, e.g. `sign_in`.
    Own(&'static str),
    /// The sign-in page, returning to this path afterwards.
    SignIn(String),
}

impl Error {
    /// The page of this error in the language of `t`. Details that come from elsewhere (the
    /// provider's error code, Matomo's refusal) are shown as they came.
    pub fn spec(&self, provider: &str, t: &Texts) -> PageSpec {
        use Error::*;
        let key = self.page_key();
        let detail: String = match self {
            Forbidden(why) | SignInRejected(why) => (*why).to_string(),
            BadRequest(d)
            | ProviderError(d)
            | ProviderBadAnswer(d)
            | MintFailed(_, d)
            | MatomoUnexpected(d)
            | NotAllowed(d)
            | ProvisionFailed(d) => d.clone(),
            _ => String::new(),
        };
        let text = |part: &str, detail: &str, login: &str| -> Option<String> {
            let k = format!("error.{key}.{part}");
            let s = t.fmt(
                &k,
                &[("provider", provider), ("detail", detail), ("login", login)],
            );
            (s != k).then_some(s)
        };
        if let LinkedButMintFailed(login, cause) = self {
            let inner = cause.spec(provider, t);
            return PageSpec {
                title: text("title", "", login).unwrap_or_default(),
                message: text("message", &inner.message, login).unwrap_or_default(),
                hint: text("hint", &inner.hint.unwrap_or_default(), login),
                action: None,
            };
        }
        let action = match self {
            ProviderUnreachable(_) | SignInRejected(_) => Some((
                t.get("action.try_again").to_string(),
                ActionTarget::Own("sign_in"),
            )),
            AccessDenied(rd) => Some((
                t.get("action.try_again").to_string(),
                ActionTarget::SignIn(rd.clone()),
            )),
            Csrf => Some((
                t.get("action.start_again").to_string(),
                ActionTarget::Own("sign_in"),
            )),
            NotAllowed(_) => Some((
                t.get("action.other_unikname").to_string(),
                ActionTarget::Own("sign_in"),
            )),
            _ => None,
        };
        PageSpec {
            title: text("title", &detail, "").unwrap_or_default(),
            message: text("message", &detail, "").unwrap_or_default(),
            hint: text("hint", &detail, ""),
            action,
        }
    }
}
