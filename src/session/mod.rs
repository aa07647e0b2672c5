//! unikgate's own session: a signed cookie (`cookie` crate) naming a record in a tower-sessions
//! store. Loaded lazily (a request without the cookie never touches the store), saved only when
//! changed, and written at most every few seconds to record activity.
//!
//! Invariants: a session id is only accepted with a valid signature; a new id is issued at sign-in
//! ([`Sess::cycle`]); idle and absolute lifetimes are checked on every load, not trusted to the
//! cookie; a store failure is [`Error::StoreUnavailable`] (with its cause), never a panic or an empty 500.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

mod cookies;
mod key;
mod memo;
mod model;

use cookies::SIGNATURE_LEN;
pub use cookies::{cookie_hash, cookie_values};
pub use key::load_key;
pub use memo::MemoryPeek;
use memo::*;
pub use model::*;

use crate::error::Error;
use crate::util::now_ms;

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
    /// The cookie's `Path`: `/`, or the public URL's path (`/analytics`) when Matomo is under one.
    cookie_path: String,
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
            cookie_path: "/".into(),
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
    /// The cookie scoped to `base` (the public URL's path; `""`: the whole origin).
    pub fn scoped_to(mut self, base: &str) -> Sessions {
        self.cookie_path = if base.is_empty() {
            "/".into()
        } else {
            base.to_string()
        };
        self
    }

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
                    csrf: crate::util::random_token(),
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
            .path(self.cookie_path.clone())
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
            "{}=; Path={}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax{}",
            self.cookie_name,
            self.cookie_path,
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
        self.store.load(&parsed).await.map_err(Error::store)
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
            self.store.delete(&id).await.map_err(Error::store)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

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
