//! What a session holds: the browser's pending sign-ins, the signed-in user with its link and
//! the Matomo session minted for it. Plain data, serialised into the record.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cookies::cookie_hash;
use crate::util::now_ms;

/// What unikgate keeps about a browser.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionData {
    /// CSRF token of this session's forms.
    pub csrf: String,
    /// When this session began (ms); the absolute lifetime counts from here.
    pub created: i64,
    /// Last time activity was recorded (ms).
    pub touched: i64,
    /// Sign-ins under way in this browser (newest last, a few at most).
    #[serde(default)]
    pub pending: Vec<PendingAuth>,
    /// The signed-in @unikname, if any.
    pub user: Option<UserSession>,
}

/// Pre-authentication state of one sign-in: single-use, short-lived, bound to this browser.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingAuth {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub rd: String,
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserSession {
    pub issuer: String,
    pub subject: String,
    /// How pages name the person: the email claim when the provider gives one, else the subject.
    #[serde(default)]
    pub display: Option<String>,
    pub signed_in: i64,
    /// For `id_token_hint` at RP-initiated logout.
    pub id_token: Option<String>,
    /// The provider's session id (`sid` of the ID token), for back-channel logout.
    #[serde(default)]
    pub sid: Option<String>,
    /// The ID token's `sub`, for back-channel logout by subject.
    #[serde(default)]
    pub id_sub: Option<String>,
    /// The link this session signed in with. Removing a link ends its sessions (they are deleted
    /// through the identity → sessions index), so a live session implies a live link.
    #[serde(default)]
    pub link: Option<LinkRef>,
    /// The Matomo session unikgate minted for this browser.
    pub matomo: Option<MatomoSession>,
    /// The stamp of the `[access]` rules this session was let in under (0: no rules). Another
    /// stamp on a request means the rules changed: the session is checked again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub policy: u64,
    /// The claims those rules read, as the provider gave them at sign-in (checked again from
    /// here when the rules change).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
    /// With `[provision]`, for a person without a link: the account that would be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
    /// The address this session signed in from (for the superusers' page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// With `provision.access_claim`: its entries as the provider gave them at sign-in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_claim: Vec<String>,
}

/// The Matomo account `[provision]` would make for this person, from the provider's claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Proposal {
    pub login: String,
    /// The verified e-mail address.
    pub email: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What a session needs of its link on every request (no link-store read on the hot path).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkRef {
    pub id: String,
    pub matomo_login: String,
    pub superuser: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MatomoSession {
    pub login: String,
    /// SHA-256 (hex) of the `MATOMO_SESSID` value unikgate minted (compared on every request).
    pub cookie_hash: String,
    /// The value itself, so that ending this session elsewhere (back-channel logout, unlink in
    /// another browser, the CLI) can log that Matomo session out too. The store already holds
    /// what signs a browser in (this record), so this adds no new secret to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Last activity forwarded with that cookie (ms), recorded coarsely (never later than real).
    pub seen: i64,
}

impl MatomoSession {
    /// The Matomo session unikgate just minted (or saw in use) for `login`, with value `cookie`.
    pub fn minted(login: &str, cookie: &str, seen: i64) -> MatomoSession {
        MatomoSession {
            login: login.to_string(),
            cookie_hash: cookie_hash(cookie),
            cookie: Some(cookie.to_string()),
            seen,
        }
    }

    /// True when `browser` is the `MATOMO_SESSID` value this session minted: compared with the
    /// stored value in constant time (no hash per request), or by hash for sessions written
    /// before the value was kept.
    pub fn is_cookie(&self, browser: &str) -> bool {
        use subtle::ConstantTimeEq;
        match &self.cookie {
            Some(v) => v.as_bytes().ct_eq(browser.as_bytes()).into(),
            None => cookie_hash(browser) == self.cookie_hash,
        }
    }
}

const MAX_PENDING: usize = 5;
pub const PENDING_TTL: Duration = Duration::from_secs(600);

impl SessionData {
    /// Adds a pending sign-in, dropping expired and surplus ones.
    pub fn push_pending(&mut self, p: PendingAuth) {
        let now = now_ms();
        self.pending
            .retain(|x| now - x.created < PENDING_TTL.as_millis() as i64);
        self.pending.push(p);
        while self.pending.len() > MAX_PENDING {
            self.pending.remove(0);
        }
    }

    /// Takes the pending sign-in with this state, once; expired ones are not returned.
    pub fn take_pending(&mut self, state: &str) -> Option<PendingAuth> {
        use subtle::ConstantTimeEq;
        let i = self
            .pending
            .iter()
            .position(|p| bool::from(p.state.as_bytes().ct_eq(state.as_bytes())))?;
        let p = self.pending.remove(i);
        (now_ms() - p.created < PENDING_TTL.as_millis() as i64).then_some(p)
    }

    /// Constant-time CSRF check.
    pub fn csrf_ok(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        !self.csrf.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}
