//! What one client can hold: connections (in total and per address) and the bodies unikgate reads
//! itself (size, time, and the memory all of them may take together).
//!
//! Invariant: every body unikgate buffers goes through [`read_body`], so none is read for longer
//! than `server.body_timeout` or beyond its size, and all of them together stay within
//! [`BODY_BUDGET`]; every accepted connection holds a [`ConnPermit`] for its life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::error::Error;

/// Bytes that all the bodies being read at one time may hold together (1 MiB classified forms
/// and 64 KiB own forms); a body that would go beyond it is answered 503.
pub const BODY_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes held by bodies being read, against a most.
struct Budget {
    used: AtomicUsize,
    max: usize,
}

static BODIES: Budget = Budget {
    used: AtomicUsize::new(0),
    max: BODY_BUDGET,
};

/// The share of a [`Budget`] one body holds; given back when it is dropped.
struct BudgetShare<'a> {
    budget: &'a Budget,
    held: usize,
}

impl BudgetShare<'_> {
    fn grow(&mut self, n: usize) -> bool {
        let before = self.budget.used.fetch_add(n, Ordering::Relaxed);
        self.held += n;
        before + n <= self.budget.max
    }
}

impl Drop for BudgetShare<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Reads a request body whole: at most `max` bytes, all of it within `timeout` of the call (the
/// call comes as the head has been read). Each piece is copied into one buffer, so the buffers
/// the connection read into are not kept alive by a slow body.
///
/// Errors: [`Error::PayloadTooLarge`] (413), [`Error::RequestTimeout`] (408, and the connection
/// is closed), [`Error::Busy`] (503: the bodies being read together hold [`BODY_BUDGET`]), and
/// [`Error::BadRequest`] when the body broke off.
pub async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, Error> {
    read_body_within(&BODIES, body, max, timeout).await
}

async fn read_body_within(
    budget: &Budget,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Error> {
    // A declared length beyond the limit is refused before a byte is read.
    if http_body::Body::size_hint(&body).lower() > max as u64 {
        return Err(Error::PayloadTooLarge);
    }
    match tokio::time::timeout(timeout, collect(budget, body, max)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(limit = ?timeout, "a request body was not complete within server.body_timeout (408)");
            metrics::counter!("unikgate_timeouts_total", "what" => "body").increment(1);
            Err(Error::RequestTimeout)
        }
    }
}

/// Bodies up to this size are read into an ordinary buffer; larger ones (or of unknown size)
/// into an anonymous mapping of their own, which the system fills with pages only as bytes come
/// and takes back whole when the body is dropped: a burst of large slow bodies leaves nothing
/// behind in the allocator.
const SMALL_BODY: usize = 32 * 1024;

/// Where a body is read to.
enum Sink {
    Small(BytesMut),
    Mapped { map: memmap2::MmapMut, len: usize },
}

/// A mapping's first `len` bytes, as the bytes of a [`Bytes`].
struct Mapped {
    map: memmap2::MmapMut,
    len: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl Sink {
    fn for_body(declared: Option<usize>, max: usize) -> Result<Sink, Error> {
        match declared {
            Some(n) if n <= SMALL_BODY => Ok(Sink::Small(BytesMut::with_capacity(n))),
            _ => {
                let size = declared.unwrap_or(max).max(1);
                let map = memmap2::MmapMut::map_anon(size).map_err(|e| {
                    tracing::error!(error = %e, size, "cannot map memory for a request body");
                    Error::Busy
                })?;
                Ok(Sink::Mapped { map, len: 0 })
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Sink::Small(b) => b.len(),
            Sink::Mapped { len, .. } => *len,
        }
    }

    /// Appends `data`; false when it does not fit (longer than declared).
    fn put(&mut self, data: &[u8]) -> bool {
        match self {
            Sink::Small(b) => {
                b.extend_from_slice(data);
                true
            }
            Sink::Mapped { map, len } => match map.get_mut(*len..*len + data.len()) {
                Some(room) => {
                    room.copy_from_slice(data);
                    *len += data.len();
                    true
                }
                None => false,
            },
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Sink::Small(b) => b.freeze(),
            Sink::Mapped { map, len } => Bytes::from_owner(Mapped { map, len }),
        }
    }
}

async fn collect(budget: &Budget, mut body: Body, max: usize) -> Result<Bytes, Error> {
    let busy = || {
        tracing::warn!(
            budget = budget.max,
            "the request bodies being read hold the whole body budget: one refused with 503"
        );
        metrics::counter!("unikgate_refused_total", "reason" => "body_budget").increment(1);
        Error::Busy
    };
    // The budget is charged with the bytes that came (a mapping's untouched pages cost nothing):
    // a body that declares a large length and trickles holds only what it sent, and cannot
    // reserve the budget away from others.
    let declared = http_body::Body::size_hint(&body)
        .exact()
        .map(|n| n as usize);
    let mut share = BudgetShare { budget, held: 0 };
    let mut sink = Sink::for_body(declared, max)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            Error::BadRequest("the request's body broke off before it was complete".into())
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if sink.len() + data.len() > max {
            return Err(Error::PayloadTooLarge);
        }
        if !share.grow(data.len()) {
            return Err(busy());
        }
        if !sink.put(&data) {
            return Err(Error::BadRequest(
                "the request's body is longer than its Content-Length".into(),
            ));
        }
    }
    Ok(sink.into_bytes())
}

/// Counts client connections, in total and per address.
pub struct Connections {
    max: usize,
    per_ip: usize,
    /// Peers that carry other people's connections (`server.trusted_proxies`): no per-address cap.
    exempt: Vec<ipnet::IpNet>,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerAddress => "max_connections_per_ip",
        }
    }
}

impl Connections {
    pub fn new(max: usize, per_ip: usize, exempt: Vec<ipnet::IpNet>) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            per_ip,
            exempt,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let counted = !self.exempt.iter().any(|n| n.contains(&ip));
        if counted {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= self.per_ip {
                drop(by_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerAddress);
            }
            *n += 1;
        }
        Ok(ConnPermit {
            conns: self.clone(),
            ip: counted.then_some(ip),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Held by a connection for its life.
pub struct ConnPermit {
    conns: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut by_ip = self.conns.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_total_and_per_address_and_given_back() {
        let c = Connections::new(3, 2, vec!["10.0.0.0/8".parse().unwrap()]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let a1 = c.admit(a).unwrap();
        let a2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).err(), Some(Refused::PerAddress));
        let b1 = c.admit(b).unwrap();
        assert_eq!(c.admit(b).err(), Some(Refused::Total));
        assert_eq!(c.open(), 3);
        drop(a1);
        // The trusted proxy has no per-address cap, only the total one.
        let p1 = c.admit(proxy).unwrap();
        assert_eq!(c.admit(proxy).err(), Some(Refused::Total));
        drop((a2, b1, p1));
        assert_eq!(c.open(), 0);
        assert!(c.by_ip.lock().unwrap().is_empty(), "no address left behind");
        let p: Vec<_> = (0..3).map(|_| c.admit(proxy).unwrap()).collect();
        assert_eq!(p.len(), 3);
    }

    fn body_of(pieces: Vec<&'static [u8]>) -> Body {
        let stream = futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
        );
        Body::from_stream(stream)
    }

    fn budget(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    #[tokio::test]
    async fn a_body_is_read_whole_within_its_size_and_the_budget() {
        let b = budget(10);
        let t = Duration::from_secs(5);
        let ok = read_body_within(&b, body_of(vec![b"a=1", b"&b=2"]), 7, t).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"a=1&b=2"));
        let big = read_body_within(&b, body_of(vec![b"a=1", b"&b=22"]), 7, t).await;
        assert!(matches!(big, Err(Error::PayloadTooLarge)), "{big:?}");
        assert_eq!(b.used.load(Ordering::Relaxed), 0, "budget given back");
        // Another body holds 6 of the 10 bytes: this one's 7 do not fit.
        let mut other = BudgetShare {
            budget: &b,
            held: 0,
        };
        assert!(other.grow(6));
        let busy = read_body_within(&b, body_of(vec![b"a=1", b"&b=2"]), 7, t).await;
        assert!(matches!(busy, Err(Error::Busy)), "{busy:?}");
        drop(other);
        assert_eq!(b.used.load(Ordering::Relaxed), 0, "budget given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_past_the_limit_is_a_timeout() {
        // One byte a second, for ever: each piece on time, the whole never.
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
        });
        let b = budget(1024);
        let res =
            read_body_within(&b, Body::from_stream(trickle), 1024, Duration::from_secs(3)).await;
        assert!(matches!(res, Err(Error::RequestTimeout)), "{res:?}");
        assert_eq!(b.used.load(Ordering::Relaxed), 0, "budget given back");
    }
}
