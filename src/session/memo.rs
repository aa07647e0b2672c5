//! The hot path's memories: the record's data decoded once per stored version (a memo keyed by id
//! holding the exact string it decoded), and when each cookie seen on public traffic was last
//! looked at for activity.

use super::cookies::SIGNATURE_LEN;
use super::*;

pub(super) const DATA_KEY: &str = "d";

/// The session data is kept in the record as one JSON string, not as a JSON tree: reading a
/// cached record then copies one string instead of cloning a tree node by node (hot path).
pub(super) fn encode(data: &SessionData) -> Result<serde_json::Value, Error> {
    serde_json::to_string(data)
        .map(serde_json::Value::String)
        .map_err(|e| Error::Internal(format!("session data: {e}")))
}

/// Reads what [`encode`] wrote (or the tree form of earlier versions). Unreadable data is no
/// session at all, not an error page.
pub(super) fn decode(v: Option<serde_json::Value>) -> Option<SessionData> {
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
pub(super) enum Peeked {
    Decoded(Option<Arc<SessionData>>),
    /// Not in the memo: decoded after the store's lock is released.
    Json(String),
}

/// Most entries [`DecodeMemo`] keeps (a few MiB at most; cleared when full).
pub(super) const MEMO_MAX: usize = 1024;

/// The last decoded data of recently used sessions, each with the exact JSON it was decoded
/// from: a read whose stored JSON is the same string copies the decoded data instead of parsing
/// it again (JSON decoding was the largest cost of a signed-in request). Correct with any store
/// and any writer (another replica, the CLI): a different string is decoded afresh.
#[derive(Default)]
pub(super) struct DecodeMemo {
    entries: std::sync::Mutex<std::collections::HashMap<Id, (String, Arc<SessionData>)>>,
}

impl DecodeMemo {
    pub(super) fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Id, (String, Arc<SessionData>)>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a stored value (owned: the store's usual load).
    pub(super) fn decode(&self, id: Id, v: Option<serde_json::Value>) -> Option<Arc<SessionData>> {
        self.finish(id, self.peek(&id, v.as_ref()))
    }

    /// Reads a stored value in place: a memo hit copies nothing (the decoded data is shared).
    pub(super) fn peek(&self, id: &Id, v: Option<&serde_json::Value>) -> Peeked {
        let Some(serde_json::Value::String(json)) = v else {
            return Peeked::Decoded(decode(v.cloned()).map(Arc::new));
        };
        match self.entries().get(id) {
            Some((seen, data)) if seen == json => Peeked::Decoded(Some(Arc::clone(data))),
            _ => Peeked::Json(json.clone()),
        }
    }

    /// Decodes what a peek could not answer from the memo (outside the store's lock).
    pub(super) fn finish(&self, id: Id, peeked: Peeked) -> Option<Arc<SessionData>> {
        match peeked {
            Peeked::Decoded(d) => d,
            Peeked::Json(json) => self.decode_new(id, json),
        }
    }

    pub(super) fn decode_new(&self, id: Id, json: String) -> Option<Arc<SessionData>> {
        let data: Arc<SessionData> = Arc::new(serde_json::from_str(&json).ok()?);
        let mut entries = self.entries();
        if entries.len() >= MEMO_MAX {
            entries.clear();
        }
        entries.insert(id, (json, data.clone()));
        Some(data)
    }

    pub(super) fn forget(&self, id: &Id) {
        self.entries().remove(id);
    }

    #[cfg(test)]
    pub(super) fn decode_owned(&self, id: Id, v: Option<serde_json::Value>) -> Option<SessionData> {
        self.decode(id, v).map(|d| (*d).clone())
    }
}

/// Most cookie values [`ActivityChecks`] remembers (cleared when full).
pub(super) const ACTIVITY_MAX: usize = 4096;

/// When each unikgate cookie value seen on public traffic was last looked at for activity
/// bookkeeping. A tracking hit or an asset from a signed-in browser would otherwise verify and
/// read the session on every request to record activity that is written at most every
/// `touch_every` anyway. Keyed by the raw cookie value (before its signature is checked, so
/// that a skipped request costs no HMAC), as a 64-bit hash under a per-process random key: the
/// map's memory does not depend on what clients send (4,096 × 16 bytes at most), a forged value
/// only earns itself one ordinary check, and a collision only delays one activity write.
#[derive(Default)]
pub(super) struct ActivityChecks {
    keys: std::collections::hash_map::RandomState,
    pub(super) last: std::sync::Mutex<std::collections::HashMap<u64, i64>>,
}

/// Longest cookie value unikgate signs (a base64 HMAC and a session id), with room to spare.
pub(super) const SIGNED_COOKIE_MAX: usize = SIGNATURE_LEN + 64;

impl ActivityChecks {
    /// True when `value` was not looked at in the last `every_ms` (and records that it is now).
    /// Never for a value too long to be a cookie unikgate signed.
    pub(super) fn due(&self, value: &str, now: i64, every_ms: i64) -> bool {
        use std::hash::BuildHasher;
        if value.len() > SIGNED_COOKIE_MAX {
            return false;
        }
        self.due_hashed(self.keys.hash_one(value), now, every_ms)
    }

    /// The same for a session id (already verified: its length is fixed).
    pub(super) fn due_id(&self, id: &Id, now: i64, every_ms: i64) -> bool {
        use std::hash::BuildHasher;
        self.due_hashed(self.keys.hash_one(id), now, every_ms)
    }

    pub(super) fn due_hashed(&self, key: u64, now: i64, every_ms: i64) -> bool {
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
