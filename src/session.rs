//! unikgate's own session: a signed cookie (`cookie` crate) naming a record in a tower-sessions
//! store. Loaded lazily (a request without the cookie never touches the store), saved only when
//! changed, and written at most every few seconds to record activity.
//!
//! Invariants: a session id is only accepted with a valid signature; a new id is issued at sign-in
//! ([`Sess::cycle`]); idle and absolute lifetimes are checked on every load, not trusted to the
//! cookie; a store failure is [`Error::StoreUnavailable`], never a panic or an empty 500.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use serde::{Deserialize, Serialize};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::Error;
use crate::now_ms;
use crate::php::split_ascii;

/// The session store behind a trait object, so one type serves every backend.
#[derive(Debug, Clone)]
pub struct DynStore(pub Arc<dyn SessionStore>);

#[async_trait]
impl SessionStore for DynStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.0.create(record).await
    }
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.0.save(record).await
    }
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.0.load(id).await
    }
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.0.delete(id).await
    }
}

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

const DATA_KEY: &str = "d";

/// The session data is kept in the record as one JSON string, not as a JSON tree: reading a
/// cached record then copies one string instead of cloning a tree node by node (hot path).
fn encode(data: &SessionData) -> Result<serde_json::Value, Error> {
    serde_json::to_string(data)
        .map(serde_json::Value::String)
        .map_err(|e| Error::Internal(format!("session data: {e}")))
}

/// Reads what [`encode`] wrote (or the tree form of earlier versions). Unreadable data is no
/// session at all, not an error page.
fn decode(v: Option<serde_json::Value>) -> Option<SessionData> {
    match v? {
        serde_json::Value::String(s) => serde_json::from_str(&s).ok(),
        other => serde_json::from_value(other).ok(),
    }
}
/// A session store that can lend a record it holds in memory, with no copy and no await (the
/// embedded store's read cache). `peek` calls `f` with the record and returns true only when the
/// record is fresh enough to be served from memory; otherwise the caller loads as usual.
pub trait MemoryPeek: Send + Sync {
    fn peek(&self, id: &Id, f: &mut dyn FnMut(&Record)) -> bool;
}

/// What a peek at the stored data found. Lives on the stack for one read: boxing the large
/// variant would add an allocation to every request.
#[allow(clippy::large_enum_variant)]
enum Peeked {
    Decoded(Option<Arc<SessionData>>),
    /// Not in the memo: decoded after the store's lock is released.
    Json(String),
}

/// Most entries [`DecodeMemo`] keeps (a few MiB at most; cleared when full).
const MEMO_MAX: usize = 1024;

/// The last decoded data of recently used sessions, each with the exact JSON it was decoded
/// from: a read whose stored JSON is the same string copies the decoded data instead of parsing
/// it again (JSON decoding was the largest cost of a signed-in request). Correct with any store
/// and any writer (another replica, the CLI): a different string is decoded afresh.
#[derive(Default)]
struct DecodeMemo {
    entries: std::sync::Mutex<std::collections::HashMap<Id, (String, Arc<SessionData>)>>,
}

impl DecodeMemo {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Id, (String, Arc<SessionData>)>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a stored value (owned: the store's usual load).
    fn decode(&self, id: Id, v: Option<serde_json::Value>) -> Option<Arc<SessionData>> {
        self.finish(id, self.peek(&id, v.as_ref()))
    }

    /// Reads a stored value in place: a memo hit copies nothing (the decoded data is shared).
    fn peek(&self, id: &Id, v: Option<&serde_json::Value>) -> Peeked {
        let Some(serde_json::Value::String(json)) = v else {
            return Peeked::Decoded(decode(v.cloned()).map(Arc::new));
        };
        match self.entries().get(id) {
            Some((seen, data)) if seen == json => Peeked::Decoded(Some(Arc::clone(data))),
            _ => Peeked::Json(json.clone()),
        }
    }

    /// Decodes what a peek could not answer from the memo (outside the store's lock).
    fn finish(&self, id: Id, peeked: Peeked) -> Option<Arc<SessionData>> {
        match peeked {
            Peeked::Decoded(d) => d,
            Peeked::Json(json) => self.decode_new(id, json),
        }
    }

    fn decode_new(&self, id: Id, json: String) -> Option<Arc<SessionData>> {
        let data: Arc<SessionData> = Arc::new(serde_json::from_str(&json).ok()?);
        let mut entries = self.entries();
        if entries.len() >= MEMO_MAX {
            entries.clear();
        }
        entries.insert(id, (json, data.clone()));
        Some(data)
    }

    fn forget(&self, id: &Id) {
        self.entries().remove(id);
    }

    #[cfg(test)]
    fn decode_owned(&self, id: Id, v: Option<serde_json::Value>) -> Option<SessionData> {
        self.decode(id, v).map(|d| (*d).clone())
    }
}

/// Most cookie values [`ActivityChecks`] remembers (cleared when full).
const ACTIVITY_MAX: usize = 4096;

/// When each unikgate cookie value seen on public traffic was last looked at for activity
/// bookkeeping. A tracking hit or an asset from a signed-in browser would otherwise verify and
/// read the session on every request to record activity that is written at most every
/// `touch_every` anyway. Keyed by the raw cookie value (before its signature is checked, so
/// that a skipped request costs no HMAC), as a 64-bit hash under a per-process random key: the
/// map's memory does not depend on what clients send (4,096 × 16 bytes at most), a forged value
/// only earns itself one ordinary check, and a collision only delays one activity write.
#[derive(Default)]
struct ActivityChecks {
    keys: std::collections::hash_map::RandomState,
    last: std::sync::Mutex<std::collections::HashMap<u64, i64>>,
}

/// Longest cookie value unikgate signs (a base64 HMAC and a session id), with room to spare.
const SIGNED_COOKIE_MAX: usize = SIGNATURE_LEN + 64;

impl ActivityChecks {
    /// True when `value` was not looked at in the last `every_ms` (and records that it is now).
    /// Never for a value too long to be a cookie unikgate signed.
    fn due(&self, value: &str, now: i64, every_ms: i64) -> bool {
        use std::hash::BuildHasher;
        if value.len() > SIGNED_COOKIE_MAX {
            return false;
        }
        self.due_hashed(self.keys.hash_one(value), now, every_ms)
    }

    /// The same for a session id (already verified: its length is fixed).
    fn due_id(&self, id: &Id, now: i64, every_ms: i64) -> bool {
        use std::hash::BuildHasher;
        self.due_hashed(self.keys.hash_one(id), now, every_ms)
    }

    fn due_hashed(&self, key: u64, now: i64, every_ms: i64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last.get_mut(&key) {
            if now - *t < every_ms {
                return false;
            }
            *t = now;
            return true;
        }
        if last.len() >= ACTIVITY_MAX {
            last.clear();
        }
        last.insert(key, now);
        true
    }
}

const MAX_PENDING: usize = 5;
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// The values of the cookies called `name` in a request, in order (`name=value` pairs of every
/// `Cookie` header; whitespace around names and values ignored). No allocation (hot path).
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| split_ascii(s, b';'))
        .filter_map(move |pair| {
            let eq = pair.bytes().position(|b| b == b'=')?;
            (pair[..eq].trim() == name).then(|| pair[eq + 1..].trim())
        })
}

/// Length of the base64 HMAC-SHA256 that starts a value signed by the `cookie` crate.
const SIGNATURE_LEN: usize = 44;

/// The session manager: store, key and lifetimes.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<DynStore>,
    key: Key,
    /// HMAC-SHA256 keyed with `key.signing()`, ready to be cloned per verification (the same
    /// MAC the `cookie` crate's signed jar writes: base64 MAC, then the value).
    mac: Hmac<Sha256>,
    pub cookie_name: String,
    secure: bool,
    idle: Duration,
    absolute: Duration,
    /// Activity is written at most this often.
    touch_every: Duration,
    memo: Arc<DecodeMemo>,
    activity: Arc<ActivityChecks>,
    /// Which session's activity write this process claimed last, and when: one request per
    /// session and `touch_every` writes it (see `read`).
    touches: Arc<ActivityChecks>,
    /// The store's in-memory copies, when it keeps some (the embedded SQLite default).
    peek: Option<Arc<dyn MemoryPeek>>,
}

/// One request's session.
#[derive(Clone)]
pub struct Sess {
    inner: Session,
    had_cookie: bool,
    /// Shared with the decode memo until something writes to it (then copied once).
    data: Option<Arc<SessionData>>,
    dirty: bool,
    ended: bool,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        key: Key,
        cookie_name: &str,
        secure: bool,
        idle: Duration,
        absolute: Duration,
        matomo_idle: Duration,
    ) -> Sessions {
        let touch_every = (idle / 20)
            .min(matomo_idle / 20)
            .min(Duration::from_secs(30));
        // HMAC accepts keys of any length: this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.signing())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Sessions {
            store: Arc::new(DynStore(store)),
            key,
            mac,
            cookie_name: cookie_name.to_string(),
            secure,
            idle,
            absolute,
            touch_every,
            memo: Arc::default(),
            activity: Arc::default(),
            touches: Arc::default(),
            peek: None,
        }
    }

    /// Reads sessions the store holds in memory in place (no record copy, no await).
    pub fn with_peek(mut self, peek: Option<Arc<dyn MemoryPeek>>) -> Sessions {
        self.peek = peek;
        self
    }

    pub fn touch_every(&self) -> Duration {
        self.touch_every
    }

    /// The session id in a signed cookie value, if its signature is ours (constant-time check).
    fn verify(&self, signed: &str) -> Option<Id> {
        if !signed.is_char_boundary(SIGNATURE_LEN) {
            return None;
        }
        let (signature, value) = signed.split_at(SIGNATURE_LEN);
        let mut tag = [0u8; 33];
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(signature, &mut tag)
            .ok()?;
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        mac.verify_slice(&tag[..n]).ok()?;
        value.parse::<Id>().ok()
    }

    /// True when a public request's session should be looked at for activity now: it carries
    /// unikgate's cookie, and that cookie was not looked at in the last `touch_every` (by this
    /// process). Activity is written at most that often anyway; skipping the look-ups in between
    /// delays a write by at most one more `touch_every`, within the freshness margin the UI gate
    /// allows (`touch_every` ≤ 30 s, the margin is up to 60 s).
    pub fn public_activity_due(&self, headers: &HeaderMap) -> bool {
        match cookie_values(headers, &self.cookie_name).last() {
            Some(v) => self
                .activity
                .due(v, now_ms(), self.touch_every.as_millis() as i64),
            None => false,
        }
    }

    /// Starts reading the request's session (no store access yet). With several cookies of
    /// unikgate's name, the last one counts.
    pub fn open(&self, headers: &HeaderMap) -> Sess {
        let last = cookie_values(headers, &self.cookie_name).last();
        let id = last.and_then(|v| self.verify(v));
        Sess {
            had_cookie: last.is_some(),
            inner: Session::new(
                id,
                self.store.clone(),
                Some(Expiry::OnInactivity(time::Duration::seconds(
                    self.idle.as_secs() as i64,
                ))),
            ),
            data: None,
            dirty: false,
            ended: false,
        }
    }

    /// Loads the session data for changing it, ending the session when its lifetimes are over.
    /// The data is copied out of the decode memo once, on this first mutable access.
    pub async fn load<'s>(&self, s: &'s mut Sess) -> Result<&'s mut SessionData, Error> {
        self.read(s).await?;
        s.data
            .as_mut()
            .map(Arc::make_mut)
            .ok_or_else(|| Error::Internal("session data missing".into()))
    }

    /// Loads the session data for reading: shared with the decode memo, no copy (the hot path
    /// of a signed-in request reads its session and, most of the time, changes nothing).
    pub async fn load_shared(&self, s: &mut Sess) -> Result<Arc<SessionData>, Error> {
        self.read(s).await?;
        s.data
            .clone()
            .ok_or_else(|| Error::Internal("session data missing".into()))
    }

    async fn read(&self, s: &mut Sess) -> Result<(), Error> {
        if s.data.is_none() {
            let mut d = if let (Some(id), false) = (s.inner.id(), s.ended) {
                // The store's in-memory copy, read in place when it lends one (`f` is only
                // called then); else the usual load.
                let mut peeked = None;
                if let Some(p) = &self.peek {
                    p.peek(&id, &mut |r| {
                        peeked = Some(self.memo.peek(&id, r.data.get(DATA_KEY)));
                    });
                }
                match peeked {
                    Some(p) => self.memo.finish(id, p),
                    None => self.memo.decode(id, s.inner.get_value(DATA_KEY).await?),
                }
            } else {
                None
            };
            let now = now_ms();
            if let Some(data) = &d {
                let too_old = now - data.created > self.absolute.as_millis() as i64;
                let idle = now - data.touched > self.idle.as_millis() as i64;
                if too_old || idle {
                    Box::pin(s.inner.flush()).await?;
                    s.ended = true;
                    d = None;
                }
            }
            let fresh = d.is_none();
            let mut data = d.unwrap_or_else(|| {
                Arc::new(SessionData {
                    csrf: crate::random_token(),
                    created: now,
                    touched: now,
                    pending: Vec::new(),
                    user: None,
                })
            });
            // Activity is written by one request per session and `touch_every` in this process:
            // the others that see the same stale time while that write is under way (a page's
            // dozen parallel requests, or every connection of a busy client) would otherwise all
            // write it too, each write emptying the cache the others read. Should the claiming
            // request fail, the next claim comes one `touch_every` later: the session then ends
            // that much sooner at worst, never later.
            let every = self.touch_every.as_millis() as i64;
            if !fresh
                && now - data.touched >= every
                && s.inner
                    .id()
                    .is_some_and(|id| self.touches.due_id(&id, now, every))
            {
                Arc::make_mut(&mut data).touched = now;
                s.dirty = true;
            }
            s.data = Some(data);
        }
        Ok(())
    }

    /// Saves a changed session and sets or clears the cookie on the response.
    pub async fn finish(&self, s: Sess, headers: &mut HeaderMap) -> Result<(), Error> {
        if !s.dirty {
            if s.ended && s.had_cookie {
                self.clear_cookie(headers);
            }
            return Ok(());
        }
        // Boxed: most requests change nothing, and the save's future is large.
        Box::pin(self.save(s, headers)).await
    }

    async fn save(&self, s: Sess, headers: &mut HeaderMap) -> Result<(), Error> {
        let Some(data) = s.data else { return Ok(()) };
        s.inner.insert_value(DATA_KEY, encode(&data)?).await?;
        s.inner.save().await?;
        let id = s
            .inner
            .id()
            .ok_or_else(|| Error::Internal("session saved without id".into()))?;
        let cookie = Cookie::build((self.cookie_name.clone(), id.to_string()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .path("/")
            .max_age(time::Duration::seconds(self.absolute.as_secs() as i64))
            .build();
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.key).add(cookie);
        for c in jar.delta() {
            if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
                headers.append(SET_COOKIE, v);
            }
        }
        Ok(())
    }

    pub fn clear_cookie(&self, headers: &mut HeaderMap) {
        let c = format!(
            "{}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax{}",
            self.cookie_name,
            if self.secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            headers.append(SET_COOKIE, v);
        }
    }

    /// The stored record of a session id (none for an id that cannot be one).
    async fn record(&self, id: &str) -> Result<Option<Record>, Error> {
        let Ok(parsed) = id.parse::<Id>() else {
            return Ok(None);
        };
        self.store.load(&parsed).await.map_err(|e| {
            tracing::error!(error = %e, "session store error");
            Error::StoreUnavailable
        })
    }

    /// Deletes a session record by id; says whether it was there, and returns the Matomo cookie
    /// it held (to log that Matomo session out too). A record that is gone already is no error.
    pub async fn end_id(&self, id: &str) -> Result<(bool, Option<String>), Error> {
        let record = self.record(id).await?;
        let existed = record.is_some();
        let cookie = record
            .and_then(|r| decode(r.data.get(DATA_KEY).cloned()))
            .and_then(|d| d.user)
            .and_then(|u| u.matomo)
            .and_then(|m| m.cookie);
        self.delete_id(id).await?;
        Ok((existed, cookie))
    }

    /// What `sessions list` shows of a session: its data, if it is still there.
    pub async fn peek(&self, id: &str) -> Result<Option<SessionData>, Error> {
        Ok(self
            .record(id)
            .await?
            .and_then(|r| decode(r.data.get(DATA_KEY).cloned())))
    }

    /// Deletes a session record by id (used when a link is removed elsewhere).
    pub async fn delete_id(&self, id: &str) -> Result<(), Error> {
        if let Ok(id) = id.parse::<Id>() {
            self.memo.forget(&id);
            self.store.delete(&id).await.map_err(|e| {
                tracing::error!(error = %e, "session store error");
                Error::StoreUnavailable
            })?;
        }
        Ok(())
    }
}

impl Sess {
    /// Marks the data changed (saved at the end of the request).
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// A new session id, keeping the data (at sign-in: no fixation).
    pub async fn cycle(&mut self) -> Result<(), Error> {
        if self.inner.id().is_some() {
            self.inner.cycle_id().await?;
        }
        self.ended = false;
        self.dirty = true;
        Ok(())
    }

    /// Ends the session: the record is deleted and the cookie cleared.
    pub async fn end(&mut self) -> Result<(), Error> {
        if self.inner.id().is_some() {
            self.inner.flush().await?;
        }
        self.data = None;
        self.ended = true;
        self.dirty = false;
        Ok(())
    }

    /// The session id once saved (for the subject → sessions index).
    pub async fn save_now(&mut self) -> Result<Option<String>, Error> {
        if let Some(data) = &self.data {
            self.inner.insert_value(DATA_KEY, encode(data)?).await?;
            self.inner.save().await?;
        }
        Ok(self.inner.id().map(|i| i.to_string()))
    }

    /// True when the request carried unikgate's cookie (signed or not): without it there is no
    /// session to load.
    pub fn had_cookie(&self) -> bool {
        self.had_cookie
    }

    /// True when the session will be saved at the end of this request (this request claimed
    /// its activity write, or changed it).
    pub fn will_save(&self) -> bool {
        self.dirty && !self.ended
    }

    /// True once the session was ended in this request (nothing may be put back into it).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The session id, once the session exists in the store.
    pub fn id(&self) -> Option<String> {
        self.inner.id().map(|i| i.to_string())
    }
}

/// SHA-256 hex of a cookie value.
pub fn cookie_hash(value: &str) -> String {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Hex by hand: `hex::encode` collects chars one by one, and this runs on every request.
    let mut out = String::with_capacity(64);
    for b in sha2::Sha256::digest(value.as_bytes()) {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

/// Reads or creates the session key. From config when set; else a 64-byte key generated once
/// into `<data_dir>/session.key` (mode 0600).
pub fn load_key(
    configured: Option<&secrecy::SecretString>,
    data_dir: Option<&std::path::Path>,
) -> Result<Key, String> {
    use secrecy::ExposeSecret;
    if let Some(k) = configured {
        return Key::try_from(k.expose_secret().as_bytes())
            .map_err(|_| "session.key must be at least 64 bytes".to_string());
    }
    let dir = data_dir
        .ok_or("session.key (or key_file) is required when the store is not a SQLite file")?;
    let path = dir.join("session.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let bytes = hex::decode(s.trim()).map_err(|_| {
                format!(
                    "{} is not a hex key; delete it to make a new one",
                    path.display()
                )
            })?;
            Key::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "{} is shorter than 64 bytes; delete it to make a new one",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut bytes = [0u8; 64];
            rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes[..]);
            write_private(&path, hex::encode(bytes).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new session key");
            Key::try_from(&bytes[..]).map_err(|_| "key generation failed".to_string())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decode_memo_answers_only_for_the_same_stored_json() {
        let memo = DecodeMemo::default();
        let id = Id::default();
        let mut data = SessionData {
            csrf: "first".into(),
            created: 1,
            touched: 2,
            ..Default::default()
        };
        let first = encode(&data).unwrap();
        assert_eq!(
            memo.decode_owned(id, Some(first.clone())),
            Some(data.clone())
        );
        assert_eq!(memo.decode_owned(id, Some(first)), Some(data.clone()));
        // Written elsewhere meanwhile (another replica, the CLI): decoded afresh.
        data.csrf = "second".into();
        assert_eq!(
            memo.decode_owned(id, Some(encode(&data).unwrap())),
            Some(data.clone())
        );
        // Another session with the same JSON is its own entry.
        let other = Id::default();
        assert_eq!(
            memo.decode_owned(other, Some(encode(&data).unwrap())),
            Some(data.clone())
        );
        // Unreadable or missing data is no session, whatever the memo holds.
        assert_eq!(
            memo.decode_owned(id, Some(serde_json::Value::String("{".into()))),
            None
        );
        assert_eq!(memo.decode_owned(id, None), None);
        // The tree form of earlier versions still reads.
        assert_eq!(
            memo.decode_owned(id, Some(serde_json::to_value(&data).unwrap())),
            Some(data.clone())
        );
        // Shared, not copied: a change made through the session (copy on write) leaves the
        // memo's data as it was stored.
        let stored = encode(&data).unwrap();
        let mut a = memo.decode(id, Some(stored.clone())).unwrap();
        let b = memo.decode(id, Some(stored.clone())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        Arc::make_mut(&mut a).csrf = "changed in this request".into();
        assert_eq!(memo.decode_owned(id, Some(stored)), Some(data.clone()));
        memo.forget(&id);
        assert!(!memo.entries().contains_key(&id));
        assert!(memo.entries().contains_key(&other));
    }

    #[test]
    fn cookie_hashes_are_sha256_in_lower_case_hex() {
        use sha2::Digest;
        assert_eq!(
            cookie_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            cookie_hash("abc"),
            hex::encode(sha2::Sha256::digest(b"abc"))
        );
    }

    #[test]
    fn a_minted_cookie_is_recognised_by_value_or_by_hash() {
        let mut m = MatomoSession {
            login: "alice".into(),
            cookie_hash: cookie_hash("minted-value"),
            cookie: Some("minted-value".into()),
            seen: 0,
        };
        assert!(m.is_cookie("minted-value"));
        for other in [
            "minted-valuf",
            "minted-value ",
            "minted-valu",
            "",
            "MINTED-VALUE",
        ] {
            assert!(!m.is_cookie(other), "{other:?}");
        }
        // Written before the value was kept: the hash decides.
        m.cookie = None;
        assert!(m.is_cookie("minted-value"));
        assert!(!m.is_cookie("minted-valuf"));
    }

    #[test]
    fn public_activity_is_looked_at_once_per_interval_and_cookie() {
        let checks = ActivityChecks::default();
        assert!(checks.due("cookie-a", 1_000, 100));
        assert!(!checks.due("cookie-a", 1_050, 100), "within the interval");
        assert!(
            checks.due("cookie-b", 1_050, 100),
            "each cookie its own clock"
        );
        assert!(checks.due("cookie-a", 1_100, 100), "the interval is over");
        assert!(
            !checks.due("cookie-a", 1_199, 100),
            "counted from the last look"
        );
        // Bounded: a flood of (forged) values empties the map instead of growing it; a real
        // session then only earns one ordinary look.
        for i in 0..ACTIVITY_MAX + 1 {
            checks.due(&format!("forged-{i}"), 1_200, 100);
        }
        assert!(checks.last.lock().unwrap().len() <= ACTIVITY_MAX);
        assert!(checks.due("cookie-a", 1_200, 100));
        // A value too long to be one unikgate signed is never looked at (nor remembered).
        let long = "x".repeat(SIGNED_COOKIE_MAX + 1);
        assert!(!checks.due(&long, 1_200, 100));
        assert!(!checks.due(&long, 9_999, 100));
    }

    /// Cookie checks never reach the store.
    #[derive(Debug)]
    struct NoStore;

    #[async_trait]
    impl SessionStore for NoStore {
        async fn save(&self, _: &Record) -> session_store::Result<()> {
            Ok(())
        }
        async fn load(&self, _: &Id) -> session_store::Result<Option<Record>> {
            Ok(None)
        }
        async fn delete(&self, _: &Id) -> session_store::Result<()> {
            Ok(())
        }
    }

    fn sessions(key: &Key) -> Sessions {
        sessions_on(Arc::new(NoStore), key, Duration::from_secs(3600))
    }

    /// Sessions on `store` with an idle timeout of `idle` (a day's absolute timeout).
    fn sessions_on(store: Arc<dyn SessionStore>, key: &Key, idle: Duration) -> Sessions {
        Sessions::new(
            store,
            key.clone(),
            "unikgate_session",
            false,
            idle,
            Duration::from_secs(86400),
            Duration::from_secs(3600),
        )
    }

    /// One stored record, counting the saves.
    #[derive(Debug, Default)]
    struct OneRecord {
        record: std::sync::Mutex<Option<Record>>,
        saves: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl SessionStore for OneRecord {
        async fn save(&self, r: &Record) -> session_store::Result<()> {
            self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *self.record.lock().unwrap() = Some(r.clone());
            Ok(())
        }
        async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
            Ok(self.record.lock().unwrap().clone().filter(|r| r.id == *id))
        }
        async fn delete(&self, _: &Id) -> session_store::Result<()> {
            *self.record.lock().unwrap() = None;
            Ok(())
        }
    }

    /// Parallel requests of one session that all find its activity time stale write it once
    /// (a burst of such writes emptied the cache under load: a p99 stall in bench/run); once
    /// `touch_every` has passed, the next request writes it again.
    #[tokio::test]
    async fn a_stale_activity_time_is_written_by_one_request_of_a_burst() {
        let key = Key::generate();
        let store = Arc::new(OneRecord::default());
        // idle 2 s: touch_every is 100 ms.
        let s = sessions_on(store.clone(), &key, Duration::from_secs(2));
        assert_eq!(s.touch_every(), Duration::from_millis(100));
        let id = Id::default();
        let data = SessionData {
            csrf: "t".into(),
            created: now_ms() - 500,
            touched: now_ms() - 500,
            pending: Vec::new(),
            user: None,
        };
        let mut rec = Record {
            id,
            data: Default::default(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        rec.data.insert(DATA_KEY.into(), encode(&data).unwrap());
        *store.record.lock().unwrap() = Some(rec);
        let mut jar = CookieJar::new();
        jar.signed_mut(&key)
            .add(Cookie::new("unikgate_session", id.to_string()));
        let mut headers = HeaderMap::new();
        let cookie = format!(
            "unikgate_session={}",
            jar.get("unikgate_session").unwrap().value()
        );
        headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());

        let mut burst = Vec::new();
        for _ in 0..8 {
            let mut sess = s.open(&headers);
            s.load_shared(&mut sess).await.unwrap();
            burst.push(sess);
        }
        assert_eq!(burst.iter().filter(|x| x.will_save()).count(), 1);
        for sess in burst {
            s.finish(sess, &mut HeaderMap::new()).await.unwrap();
        }
        assert_eq!(store.saves.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Written: the next requests find it fresh. Past `touch_every`, one writes again.
        let mut sess = s.open(&headers);
        s.load_shared(&mut sess).await.unwrap();
        assert!(!sess.will_save());
        tokio::time::sleep(Duration::from_millis(120)).await;
        let mut first = s.open(&headers);
        let mut second = s.open(&headers);
        s.load_shared(&mut first).await.unwrap();
        s.load_shared(&mut second).await.unwrap();
        assert!(first.will_save() && !second.will_save());
    }

    /// What `finish` writes (the `cookie` crate's signed jar) is what `open` accepts, and
    /// nothing else is.
    #[test]
    fn only_cookies_signed_with_our_key_name_a_session() {
        let key = Key::generate();
        let s = sessions(&key);
        let id = Id::default();
        let mut jar = CookieJar::new();
        jar.signed_mut(&key)
            .add(Cookie::new("unikgate_session", id.to_string()));
        let signed = jar.get("unikgate_session").unwrap().value().to_string();
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(s.verify(&signed), Some(id));
        let sess = s.open(&headers(&format!("a=1; unikgate_session={signed}; b=2")));
        assert!(sess.had_cookie());
        assert_eq!(sess.id(), Some(id.to_string()));
        // The last of several counts.
        let sess = s.open(&headers(&format!(
            "unikgate_session=junk; unikgate_session={signed}"
        )));
        assert_eq!(sess.id(), Some(id.to_string()));
        // Tampered value, tampered signature, another key, too short, not base64.
        let other = sessions(&Key::generate());
        let mut bad_value = signed.clone();
        bad_value.pop();
        bad_value.push(if signed.ends_with('A') { 'B' } else { 'A' });
        // (A different first character: `B…` once failed the one run in 64 where the
        // signature already began with `B`.)
        let bad_sig = format!(
            "{}{}",
            if signed.starts_with('B') { 'C' } else { 'B' },
            &signed[1..]
        );
        for v in [
            bad_value.as_str(),
            bad_sig.as_str(),
            "short",
            "é".repeat(40).as_str(),
        ] {
            assert_eq!(s.verify(v), None, "{v}");
        }
        assert_eq!(other.verify(&signed), None);
        let sess = s.open(&headers("unikgate_session=forged"));
        assert!(sess.had_cookie());
        assert_eq!(sess.id(), None);
        assert!(!s.open(&headers("other=1")).had_cookie());
    }
}
