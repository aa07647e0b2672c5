//! Keep-alive HTTP/1.1 connections to Matomo: a small client of unikgate's own.
//!
//! The request's own task writes the request and reads the answer straight from the socket: no
//! task per connection, no channel between the two, and the response body is read by the body
//! itself, so the pieces of a page that are already there go out in one write to the browser
//! (docs/PERFORMANCE.md has the measurements that led here, and what hyper's client cost).
//!
//! It is strict where a proxy must be (RFC 9112): the request's framing is written from its body
//! (never copied from the browser's headers); the answer's head is parsed by `httparse` with
//! bounded size and header count; its body framing is decided once (no body for `HEAD`, 1xx, 204
//! and 304; `Transfer-Encoding` over `Content-Length`, and then the connection is not reused;
//! differing lengths are an error; otherwise to the end of the connection); chunk sizes,
//! extensions and trailers are bounded. A connection goes back to the pool only after a whole,
//! well-framed answer with nothing after it; a body dropped before its end closes it.
//!
//! An idle connection Matomo has closed is seen when it is checked out (the socket reads as
//! closed); one that closes under a request is replaced and the request sent again only when
//! that cannot repeat it (it was not written, or an idempotent request got no byte of answer).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted from Matomo.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Room made in the read buffer when less than `MIN_ROOM` is left: a whole page of usual size
/// in one read.
const READ_SIZE: usize = 32 * 1024;
const MIN_ROOM: usize = 4096;
/// Request bodies up to this size are read whole and written with the head (and can be sent
/// again on another connection); larger ones and those of unknown size are streamed.
const BUFFERED_BODY: u64 = 64 * 1024;
/// Longest chunk-size line (size and extensions) and all trailers of one answer together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a request did not reach Matomo, or its answer could not be read.
#[derive(Debug)]
pub enum PoolError {
    /// The TCP connection failed (refused, unreachable, name not resolved).
    Connect(io::Error),
    /// The TCP connection did not open within `upstream.connect_timeout`.
    ConnectTimeout,
    /// Reading or writing the connection failed (reset, closed mid-answer).
    Io(io::Error),
    /// Matomo's answer broke HTTP/1.1 (what is wrong with it).
    Protocol(&'static str),
    /// The browser's request body failed while it was being sent on.
    RequestBody(String),
    /// The connection closed before any answer came.
    Closed,
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "cannot connect: {e}"),
            PoolError::ConnectTimeout => f.write_str("connect timed out"),
            PoolError::Io(e) => write!(f, "connection failed: {e}"),
            PoolError::Protocol(what) => write!(f, "malformed answer: {what}"),
            PoolError::RequestBody(e) => write!(f, "request body failed: {e}"),
            PoolError::Closed => f.write_str("connection closed before any answer"),
        }
    }
}

/// Connections to one upstream; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// `Host` for a request that has none (HTTP/1.1 requires one).
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// The longest pause allowed between two reads of an answer's body.
    body_pause: Duration,
    max_idle: usize,
    /// Most recently returned last (reused first: its socket is the least likely to be closed).
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

/// One connection and the bytes read from it but not yet used.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Still open with nothing unread: an idle connection Matomo closed reads as closed. Costs no
    /// system call unless the socket became readable since its last answer.
    fn is_reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: closed, reset, stray bytes, or a stale readiness (then it would block).
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the answer into the buffer; `Ok(0)` is the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // A new answer starts with the whole room: once the last answer's frames are written
        // and dropped, `reserve` takes the buffer back from its start instead of allocating.
        let room = if self.buf.is_empty() {
            READ_SIZE
        } else {
            MIN_ROOM
        };
        if self.buf.capacity() - self.buf.len() < room {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, VecDeque<(Conn, Instant)>> {
        // A panic while holding this lock leaves a plain queue behind: still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, mut conn: Conn) {
        // The read buffer stays with its connection: once the frames handed out are written and
        // dropped, the next answer is read into the same memory (no allocation per request). One
        // grown beyond the usual size is let go.
        if conn.buf.capacity() > 2 * READ_SIZE {
            conn.buf = BytesMut::new();
        }
        let mut idle = self.idle();
        // The oldest idle connections, reused last, are where Matomo's closes gather: each
        // return looks at two of them, so a closed socket is not held until it would be reused.
        for _ in 0..2 {
            match idle.front() {
                Some((c, since)) if since.elapsed() >= self.idle_timeout || !c.is_reusable() => {
                    idle.pop_front();
                }
                _ => break,
            }
        }
        if idle.len() < self.max_idle {
            idle.push_back((conn, Instant::now()));
        }
    }

    fn checkout(&self) -> Option<Conn> {
        loop {
            let (c, since) = self.idle().pop_back()?;
            if since.elapsed() < self.idle_timeout && c.is_reusable() {
                return Some(c);
            }
        }
    }
}

/// The request as it goes on the wire.
enum Outgoing {
    /// Head and whole body: can be written again on another connection.
    Buffered(Vec<u8>),
    /// Head, then the body streamed (with its length, or chunked).
    Streamed {
        head: Vec<u8>,
        body: Body,
        length: Option<u64>,
    },
}

/// A parsed answer head: the response without its body, where reading its body starts (how it
/// is delimited), and whether the connection can carry another request after it.
struct Head {
    res: Response<()>,
    body: State,
    keep_alive: bool,
}

/// How an exchange on a connection failed.
enum Failed {
    /// Nothing of the request can have been acted on: another connection may take it.
    Retry,
    Fatal(PoolError),
}

impl Pool {
    /// `host` is a name or an IP address (IPv6 without brackets).
    pub fn new(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
        body_pause: Duration,
        max_idle: usize,
    ) -> Pool {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Pool {
            inner: Arc::new(Inner {
                host: host.to_string(),
                port,
                host_header: HeaderValue::from_str(&authority)
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                connect_timeout,
                idle_timeout,
                body_pause,
                max_idle,
                idle: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one. The response
    /// body streams; its connection returns to the pool when the body has been read to the end.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let (parts, body) = req.into_parts();
        let method = parts.method.clone();
        let mut out = self.encode(&parts, body).await?;
        // Repeating it cannot do twice what Matomo did once.
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        while let Some(mut conn) = self.inner.checkout() {
            match exchange(&mut conn, &method, &mut out, true, idempotent).await {
                Ok(head) => return self.respond(conn, head).await,
                Err(Failed::Retry) => continue,
                Err(Failed::Fatal(e)) => return Err(e),
            }
        }
        let mut conn = self.connect().await?;
        match exchange(&mut conn, &method, &mut out, false, idempotent).await {
            Ok(head) => self.respond(conn, head).await,
            Err(Failed::Retry) => Err(PoolError::Closed),
            Err(Failed::Fatal(e)) => Err(e),
        }
    }

    /// The request head with framing written from the body (the browser's `Content-Length` and
    /// `Transfer-Encoding` never pass); a small body is read whole and joins the head.
    async fn encode(
        &self,
        parts: &http::request::Parts,
        mut body: Body,
    ) -> Result<Outgoing, PoolError> {
        let length = if http_body::Body::is_end_stream(&body) {
            Some(0)
        } else {
            http_body::Body::size_hint(&body).exact()
        };
        let mut head = request_head(parts, &self.inner.host_header, length);
        match length {
            Some(0) => Ok(Outgoing::Buffered(head)),
            Some(n) if n <= BUFFERED_BODY => {
                let start = head.len() as u64;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| PoolError::RequestBody(e.to_string()))?;
                    if let Ok(data) = frame.into_data() {
                        if head.len() as u64 - start + data.len() as u64 > n {
                            return Err(PoolError::RequestBody(
                                "longer than its Content-Length".into(),
                            ));
                        }
                        head.extend_from_slice(&data);
                    }
                }
                if head.len() as u64 - start != n {
                    return Err(PoolError::RequestBody(
                        "shorter than its Content-Length".into(),
                    ));
                }
                Ok(Outgoing::Buffered(head))
            }
            Some(n) => Ok(Outgoing::Streamed {
                head,
                body,
                length: Some(n),
            }),
            None => Ok(Outgoing::Streamed {
                head,
                body,
                length: None,
            }),
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let addr = (self.inner.host.as_str(), self.inner.port);
        let stream = match tokio::time::timeout(
            self.inner.connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Err(_) => return Err(PoolError::ConnectTimeout),
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }

    /// The response whose body reads the rest of the answer from `conn`. A chunked answer's
    /// first chunk-size line is awaited first, so that a malformed one is a 502 while no byte of
    /// the answer has gone to the browser.
    async fn respond(&self, mut conn: Conn, head: Head) -> Result<Response<Body>, PoolError> {
        if head.body == State::ChunkSize {
            while !conn
                .buf
                .iter()
                .take(MAX_CHUNK_LINE + 2)
                .any(|b| *b == b'\n')
                && conn.buf.len() < MAX_CHUNK_LINE + 2
            {
                match conn.fill().await {
                    Ok(0) => return Err(PoolError::Protocol("closed before the first chunk")),
                    Ok(_) => {}
                    Err(e) => return Err(PoolError::Io(e)),
                }
            }
        }
        let (parts, ()) = head.res.into_parts();
        let mut body = PooledBody {
            conn: Some(conn),
            pool: self.inner.clone(),
            keep_alive: head.keep_alive,
            framing: Framing::new(head.body),
            failed: None,
            pause: None,
        };
        if body.framing.state == State::Done {
            body.release();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        // Frames already in the buffer are ready at once; the framing after them is read ahead
        // so that the end is seen as soon as it is there.
        body.read_ahead();
        if let Some(what) = body.failed {
            return Err(PoolError::Protocol(what));
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.idle().len()
    }
}

/// The request head as it goes to Matomo: origin-form target, `Host` (`default_host` when the
/// request has none), the request's headers but its framing ones, then the framing of a body of
/// `length` (`None`: chunked), written by unikgate alone. Pure (fuzzed in `fuzz/`).
fn request_head(
    parts: &http::request::Parts,
    default_host: &HeaderValue,
    length: Option<u64>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // Origin-form always: a target without its path (`?x`, from an absolute-form request)
    // gets `/` before it.
    if !target.starts_with('/') && target != "*" {
        head.push(b'/');
    }
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        put_header(&mut head, "host", default_host);
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        put_header(&mut head, name.as_str(), value);
    }
    match length {
        Some(0) => {
            if !matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE
            ) {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
            head.extend_from_slice(b"\r\n");
        }
        Some(n) => put_length(&mut head, n),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    head
}

/// One chunk of a chunked request body, framed.
fn chunk_of(data: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(data.len() + 20);
    chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// The `Content-Length` line and the end of the head.
fn put_length(head: &mut Vec<u8>, n: u64) {
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(n.to_string().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
}

fn put_header(head: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// Writes the request on `conn` and reads the answer's head (interim 1xx answers skipped).
async fn exchange(
    conn: &mut Conn,
    method: &Method,
    out: &mut Outgoing,
    reused: bool,
    idempotent: bool,
) -> Result<Head, Failed> {
    let fatal = |e: io::Error| Failed::Fatal(PoolError::Io(e));
    match out {
        Outgoing::Buffered(bytes) => {
            if let Err(e) = conn.stream.write_all(bytes).await {
                // Not a byte of an answer, and nothing Matomo could act on: a connection closed
                // while idle. Another one takes it.
                return Err(if reused { Failed::Retry } else { fatal(e) });
            }
        }
        Outgoing::Streamed { head, body, length } => {
            if let Err(e) = conn.stream.write_all(head).await {
                return Err(if reused { Failed::Retry } else { fatal(e) });
            }
            stream_body(conn, body, *length)
                .await
                .map_err(Failed::Fatal)?;
        }
    }
    let retry_ok = reused && idempotent && matches!(out, Outgoing::Buffered(_));
    let mut interim = false;
    loop {
        match final_head(&mut conn.buf, method, &mut interim) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => return Err(Failed::Fatal(e)),
        }
        // An interim answer came: the request was seen, it cannot be sent again.
        let received = interim || !conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) if !received && retry_ok => return Err(Failed::Retry),
            Ok(0) if !received => return Err(Failed::Fatal(PoolError::Closed)),
            Ok(0) => return Err(Failed::Fatal(PoolError::Protocol("closed within the head"))),
            Ok(_) => {}
            Err(_) if !received && retry_ok => return Err(Failed::Retry),
            Err(e) => return Err(fatal(e)),
        }
    }
}

/// The final answer's head at the start of `buf`, the interim (1xx) heads before it consumed;
/// `None`: not all there yet. `interim` is set once one was skipped: an upstream that sent one
/// is one whose answers are counted loosely, and its connection carries nothing more.
fn final_head(
    buf: &mut BytesMut,
    method: &Method,
    interim: &mut bool,
) -> Result<Option<Head>, PoolError> {
    loop {
        let Some(mut head) = parse_head(buf, method)? else {
            return Ok(None);
        };
        let status = head.res.status();
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(PoolError::Protocol(
                    "101 Switching Protocols to a request that asked for none",
                ));
            }
            *interim = true;
            continue;
        }
        head.keep_alive &= !*interim;
        return Ok(Some(head));
    }
}

/// Writes a streamed request body with its framing.
async fn stream_body(
    conn: &mut Conn,
    body: &mut Body,
    length: Option<u64>,
) -> Result<(), PoolError> {
    let io = PoolError::Io;
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PoolError::RequestBody(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match length {
            Some(n) if sent > n => {
                return Err(PoolError::RequestBody(
                    "longer than its Content-Length".into(),
                ))
            }
            Some(_) => conn.stream.write_all(&data).await.map_err(io)?,
            None => conn.stream.write_all(&chunk_of(&data)).await.map_err(io)?,
        }
    }
    match length {
        Some(n) if sent != n => Err(PoolError::RequestBody(
            "shorter than its Content-Length".into(),
        )),
        Some(_) => Ok(()),
        None => conn.stream.write_all(b"0\r\n\r\n").await.map_err(io),
    }
}

/// Parses an answer head at the start of `buf` (consumed when complete); `None`: not all there.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, PoolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: httparse writes the ones it fills (zeroing 128 headers cost more than
    // the parse).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(PoolError::Protocol("head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(PoolError::Protocol("too many headers"))
        }
        Err(_) => return Err(PoolError::Protocol("unparsable head")),
    };
    if len > MAX_HEAD {
        return Err(PoolError::Protocol("head too large"));
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(PoolError::Protocol("bad status code"))?;
    // Header values share the head's bytes (no copy); names are checked and lower-cased.
    let base = buf.as_ptr() as usize;
    let spans: Vec<(usize, usize, usize, usize)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.as_ptr() as usize - base,
                h.name.len(),
                h.value.as_ptr() as usize - base,
                h.value.len(),
            )
        })
        .collect();
    let head = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(spans.len());
    for &(name_at, name_len, value_at, value_len) in &spans {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| PoolError::Protocol("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| PoolError::Protocol("bad header value"))?;
        map.append(name, value);
    }
    let (body, mut keep_alive) = framing_of(&mut map, status, method, version)?;
    keep_alive &= match version {
        Version::HTTP_11 => !has_token(&map, header::CONNECTION, "close"),
        _ => has_token(&map, header::CONNECTION, "keep-alive"),
    };
    let mut res = Response::new(());
    *res.status_mut() = status;
    // The browser is answered in unikgate's own version (an HTTP/1.0 Matomo's is not passed on).
    *res.version_mut() = Version::HTTP_11;
    *res.headers_mut() = map;
    Ok(Some(Head {
        res,
        body,
        keep_alive,
    }))
}

/// RFC 9112 §6.3: how the body of this answer is delimited, and whether the connection stays
/// usable after it. With `Transfer-Encoding`, any `Content-Length` is removed (it must not
/// reach the browser beside a body framed otherwise).
fn framing_of(
    headers: &mut HeaderMap,
    status: StatusCode,
    method: &Method,
    version: Version,
) -> Result<(State, bool), PoolError> {
    // A 2xx to CONNECT is a tunnel (RFC 9110 §9.3.6): nothing after it is HTTP. unikgate never
    // forwards CONNECT; if it ever did, that connection could not go back.
    if method == Method::CONNECT && status.is_success() {
        return Err(PoolError::Protocol("a tunnel (2xx to CONNECT)"));
    }
    // An answer to HEAD has no body, but a broken upstream may send one anyway, late: its
    // connection is not reused (HEAD is rare; the next user must not read that body).
    if method == Method::HEAD {
        return Ok((State::Done, false));
    }
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // No body, whatever the headers say; one that announces a body anyway may send it, so
        // its connection is not reused.
        let announces = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() != b"0");
        return Ok((State::Done, !announces));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty());
        let only_chunked = codings
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        // Any other coding (`gzip, chunked`) would reach the browser decoded of its chunks and
        // still gzip, unlabelled; an HTTP/1.0 answer cannot carry Transfer-Encoding at all
        // (RFC 9112 §6.1: faulty framing). Both are refused.
        if !only_chunked {
            return Err(PoolError::Protocol("Transfer-Encoding other than chunked"));
        }
        if version != Version::HTTP_11 {
            return Err(PoolError::Protocol(
                "Transfer-Encoding in an HTTP/1.0 answer",
            ));
        }
        return Ok((State::ChunkSize, !had_length));
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(PoolError::Protocol("bad Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(PoolError::Protocol("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(PoolError::Protocol("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (State::Done, true),
        Some(n) => (State::Length(n), true),
        None => (State::Close, false),
    })
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data is next.
    ChunkEnd,
    /// Trailer lines, up to the empty line.
    Trailers,
    /// To the end of the connection.
    Close,
    Done,
}

/// A response body read from its connection by whoever polls it; hands the connection back to
/// the pool when the answer is whole.
struct PooledBody {
    conn: Option<Conn>,
    pool: Arc<Inner>,
    keep_alive: bool,
    framing: Framing,
    /// An error met while reading ahead, given on the next poll.
    failed: Option<&'static str>,
    /// Armed when a read finds nothing to take, pushed back whenever bytes come: Matomo pausing
    /// within a body for longer than `body_pause` ends it (a stalled backend must not hold the
    /// browser's connection for ever). Made on the first wait only, so a body that arrives with
    /// its head costs no timer.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn protocol(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            // `is_reusable`: nothing unread, in the buffer or already in the socket (an answer
            // that ended exactly where a read ended may have more behind it). Costs no system
            // call unless the socket is readable.
            if self.keep_alive && conn.is_reusable() {
                self.pool.put(conn);
            }
        }
    }

    /// The data at the front of the buffer, if any (as much as the framing allows).
    fn take_data(&mut self) -> Option<Bytes> {
        self.framing.take_data(&mut self.conn.as_mut()?.buf)
    }

    /// Consumes the framing (chunk lines, their CRLF, trailers) that is already in the buffer,
    /// up to the next data or the end; an error is kept for the next poll.
    fn read_ahead(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Err(what) = self.advance() {
            self.failed = Some(what);
            self.conn = None;
        }
        if self.framing.state == State::Done {
            self.release();
        }
    }

    fn advance(&mut self) -> Result<(), &'static str> {
        match self.conn.as_mut() {
            Some(conn) => self.framing.advance(&mut conn.buf),
            None => Ok(()),
        }
    }
}

/// An answer body's framing as it is read: where in it the next bytes are (RFC 9112 §6, §7).
/// Pure: it only looks at the buffer it is handed (fuzzed in `fuzz/`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing {
    pub(crate) state: State,
    trailers: usize,
}

impl Framing {
    pub(crate) fn new(state: State) -> Framing {
        Framing { state, trailers: 0 }
    }

    /// The data at the front of the buffer, if any (as much as the framing allows).
    pub(crate) fn take_data(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        if buf.is_empty() {
            return None;
        }
        let (n, next) = match self.state {
            State::Length(rem) => {
                let n = rem.min(buf.len() as u64);
                (
                    n,
                    if n == rem {
                        State::Done
                    } else {
                        State::Length(rem - n)
                    },
                )
            }
            State::ChunkData(rem) => {
                let n = rem.min(buf.len() as u64);
                (
                    n,
                    if n == rem {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(rem - n)
                    },
                )
            }
            State::Close => (buf.len() as u64, State::Close),
            _ => return None,
        };
        self.state = next;
        Some(buf.split_to(n as usize).freeze())
    }

    /// Consumes the framing (chunk lines, their CRLF, trailers) at the front of `buf`, up to
    /// the next data or the end.
    pub(crate) fn advance(&mut self, buf: &mut BytesMut) -> Result<(), &'static str> {
        loop {
            match self.state {
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(());
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let room = MAX_TRAILERS
                        .saturating_sub(self.trailers)
                        .min(MAX_CHUNK_LINE);
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(());
                    };
                    self.trailers += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if line.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
                        return Err("bad trailer");
                    }
                }
                State::Length(0) => self.state = State::Done,
                _ => return Ok(()),
            }
        }
    }
}

/// Takes one CRLF-terminated line (without its CRLF) off the front of `buf`; `None` if it is not
/// all there yet. Longer than `max`, or a bare LF: an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().take(max + 2).position(|b| *b == b'\n') {
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err("line not ended by CRLF");
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() >= max + 2 => Err("chunk line or trailers too long"),
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then optionally whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err("bad chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';')
        || rest.iter().any(|b| b.is_ascii_control() && *b != b'\t')
    {
        return Err("bad chunk size");
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "bad chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "bad chunk size")
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(what) = this.failed.take() {
                tracing::warn!(
                    error = what,
                    "Matomo's answer broke HTTP/1.1 within its body: the answer was cut"
                );
                this.framing.state = State::Done;
                return Poll::Ready(Some(Err(protocol(what))));
            }
            if this.framing.state == State::Done {
                this.release();
                return Poll::Ready(None);
            }
            if let Some(data) = this.take_data() {
                this.read_ahead();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            // Framing read ahead may lead to data (or the end) already in the buffer.
            let before = this.framing.state;
            this.read_ahead();
            if this.failed.is_some() || this.framing.state != before {
                continue;
            }
            let Some(conn) = this.conn.as_mut() else {
                this.framing.state = State::Done;
                return Poll::Ready(Some(Err(protocol("connection gone"))));
            };
            // No data in the buffer, and the framing there is consumed: read more.
            match conn.poll_fill(cx) {
                Poll::Pending => {
                    let limit = this.pool.body_pause;
                    let pause = this
                        .pause
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if pause.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    tracing::warn!(
                        limit = ?limit,
                        "Matomo paused within an answer's body for longer than upstream.timeout: the answer was cut"
                    );
                    this.conn = None;
                    this.framing.state = State::Done;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "Matomo paused within the body for too long",
                    ))));
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if this.framing.state == State::Close {
                        this.framing.state = State::Done;
                        return Poll::Ready(None);
                    }
                    this.framing.state = State::Done;
                    tracing::warn!(
                        "Matomo closed the connection within an answer's body: the answer was cut"
                    );
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Matomo closed the connection within the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(pause) = this.pause.as_mut() {
                        pause
                            .as_mut()
                            .reset(tokio::time::Instant::now() + this.pool.body_pause);
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    this.framing.state = State::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.state == State::Done && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/answer.rs`, `request.rs`): the pool's
/// parsers driven without sockets, each checking its invariants and panicking when one breaks.
/// Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// How an answer read in pieces ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// The head is not complete.
        Incomplete,
        /// The head or the body broke HTTP/1.1 (the connection is closed).
        Refused,
        /// The body is not over when the bytes are (more would be read).
        Open { data: Vec<u8> },
        /// The answer is whole; `reused`: its connection would go back to the pool.
        Whole { data: Vec<u8>, reused: bool },
    }

    /// Reads `answer` (to a request of `method`) as the pool does, the bytes arriving in pieces
    /// cut at `cuts` (offsets, in any order). Checks, whatever the bytes and the cuts:
    /// - the outcome is the same as when all the bytes come at once (no state is lost at a read
    ///   boundary);
    /// - the body's data is taken from the bytes after the head, in order, never past the
    ///   `Content-Length` the answer declared;
    /// - a connection that would be reused has no byte of the input left unread.
    pub fn answer(method: &Method, answer: &[u8], cuts: &[usize]) -> Outcome {
        let whole = read(method, answer, &[]);
        let pieces = read(method, answer, cuts);
        assert_eq!(whole, pieces, "cutting the bytes changed the outcome");
        pieces
    }

    fn read(method: &Method, answer: &[u8], cuts: &[usize]) -> Outcome {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (answer.len() + 1)).collect();
        ends.push(answer.len());
        ends.sort_unstable();
        ends.dedup();
        let mut fed = 0;
        let mut next = ends.into_iter();
        let mut buf = BytesMut::new();
        let mut feed = |buf: &mut BytesMut, fed: &mut usize| -> bool {
            match next.next() {
                Some(end) => {
                    buf.extend_from_slice(&answer[*fed..end]);
                    *fed = end;
                    true
                }
                None => false,
            }
        };
        feed(&mut buf, &mut fed);
        let mut interim = false;
        let head = loop {
            match final_head(&mut buf, method, &mut interim) {
                Ok(Some(h)) => break h,
                Ok(None) => {
                    if !feed(&mut buf, &mut fed) {
                        return Outcome::Incomplete;
                    }
                }
                Err(_) => return Outcome::Refused,
            }
        };
        let head_len = fed - buf.len();
        let declared = match head.body {
            State::Length(n) => Some(n),
            _ => None,
        };
        let mut framing = Framing::new(head.body);
        let mut data = Vec::new();
        loop {
            if framing.advance(&mut buf).is_err() {
                return Outcome::Refused;
            }
            while let Some(d) = framing.take_data(&mut buf) {
                data.extend_from_slice(&d);
                if framing.advance(&mut buf).is_err() {
                    return Outcome::Refused;
                }
            }
            if framing.state == State::Done {
                break;
            }
            if !feed(&mut buf, &mut fed) {
                if framing.state == State::Close {
                    // The end of the connection ends this body.
                    break;
                }
                return Outcome::Open { data };
            }
        }
        if let Some(n) = declared {
            assert_eq!(data.len() as u64, n, "a whole body is its Content-Length");
        }
        if framing.state == State::Close {
            assert_eq!(
                data,
                &answer[head_len..],
                "a body to the close is the bytes after the head"
            );
        }
        if let State::Length(_) | State::Done = head.body {
            if !data.is_empty() {
                assert_eq!(
                    data,
                    &answer[head_len..head_len + data.len()],
                    "a Content-Length body is the bytes after the head"
                );
            }
        }
        // The pool's rule: back only after a whole answer, kept alive, with nothing unread in
        // the buffer nor in the socket (the probe at release sees the bytes not yet read: here,
        // the pieces not yet fed).
        let reused = head.keep_alive
            && framing.state == State::Done
            && buf.is_empty()
            && fed == answer.len();
        Outcome::Whole { data, reused }
    }

    /// Writes a request as the pool does (`chunks` of the body streamed chunked, or with its
    /// length) and checks that it is exactly one well-formed HTTP/1.1 request, as `httparse`
    /// reads it: the same method and target (origin-form), one `Host`, the framing of the body
    /// unikgate wrote and no other, and the body's bytes, with nothing after them.
    pub fn request(parts: &http::request::Parts, chunks: &[&[u8]], chunked: bool) {
        let body: Vec<u8> = chunks.concat();
        let length = (!chunked).then_some(body.len() as u64);
        let host = HeaderValue::from_static("matomo:80");
        let mut wire = request_head(parts, &host, length);
        if chunked {
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                wire.extend_from_slice(&chunk_of(c));
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            wire.extend_from_slice(&body);
        }
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&wire) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not one whole request head: {other:?}"),
        };
        assert_eq!(req.method, Some(parts.method.as_str()));
        let path = req.path.unwrap_or("");
        assert!(
            path.starts_with('/') || path == "*",
            "origin-form: {path:?}"
        );
        let count = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        assert_eq!(
            count("host"),
            parts.headers.get_all(header::HOST).iter().count().max(1)
        );
        let lengths: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        let te = count("transfer-encoding");
        let mut rest = BytesMut::from(&wire[head_len..]);
        if chunked {
            assert!(lengths.is_empty() && te == 1, "chunked alone");
            let mut framing = Framing::new(State::ChunkSize);
            let mut got = Vec::new();
            loop {
                framing.advance(&mut rest).expect("well-formed chunks");
                match framing.take_data(&mut rest) {
                    Some(d) => got.extend_from_slice(&d),
                    None => break,
                }
            }
            assert_eq!(framing.state, State::Done);
            assert_eq!(got, body);
        } else {
            assert_eq!(te, 0, "no Transfer-Encoding beside a length");
            match lengths.as_slice() {
                [] => assert!(body.is_empty()),
                [one] => assert_eq!(*one, body.len().to_string().as_bytes()),
                more => panic!("{} Content-Length headers", more.len()),
            }
            assert_eq!(&rest[..], &body[..]);
            rest.clear();
        }
        assert!(rest.is_empty(), "bytes after the request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server: answers `hello` to each request; with `close_after`, closes each
    /// connection after that many answers. Counts the connections it accepted.
    async fn server(close_after: Option<usize>) -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                                .await;
                            answered += 1;
                            if Some(answered) == close_after {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn pool(port: u16) -> Pool {
        pool_pausing(port, Duration::from_secs(60))
    }

    fn get() -> Request<Body> {
        Request::builder()
            .uri("/index.php")
            .header(http::header::HOST, "matomo")
            .body(Body::empty())
            .unwrap()
    }

    async fn text(res: Response<Body>) -> String {
        let b = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (port, accepted) = server(None).await;
        let p = pool(port);
        for _ in 0..5 {
            let res = p.send(get()).await.unwrap();
            assert_eq!(text(res).await, "hello");
            assert_eq!(p.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_go_back() {
        let (port, accepted) = server(None).await;
        let p = pool(port);
        let res = p.send(get()).await.unwrap();
        drop(res);
        assert_eq!(p.idle_count(), 0);
        assert_eq!(text(p.send(get()).await.unwrap()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let (port, accepted) = server(Some(1)).await;
        let p = pool(port);
        for _ in 0..3 {
            assert_eq!(text(p.send(get()).await.unwrap()).await, "hello");
            // Let the connection's task see Matomo's close (the race without this wait is the
            // request that comes back unwritten, sent again on another connection).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_let_go_when_another_returns() {
        // The first connection is closed by Matomo a moment after its answer (after it went back
        // to the pool); the second stays open.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for close_later in [true, false] {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                        .await;
                    if close_later {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        let p = pool(port);
        let a = p.send(get()).await.unwrap();
        let b = p.send(get()).await.unwrap();
        assert_eq!(text(a).await, "hello");
        assert_eq!(p.idle_count(), 1);
        // Let the pool's socket see the close, then return the other connection: the closed one
        // that waited is let go then, not when it would be reused.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(text(b).await, "hello");
        assert_eq!(p.idle_count(), 1);
        let held = p.inner.idle().pop_back().map(|(c, _)| c.is_reusable());
        assert_eq!(held, Some(true), "the one kept is the open one");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        match pool(port).send(get()).await {
            Err(PoolError::Connect(_)) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    /// A server that answers each request, on whatever connection, with the next answer of the
    /// script: its pieces written a moment apart; an answer of no pieces closes the connection
    /// instead (after its answers, a connection stays open without a byte more). Keeps each
    /// request as received; counts the connections it accepted.
    struct Scripted {
        port: u16,
        received: Arc<Mutex<Vec<String>>>,
        accepted: Arc<AtomicUsize>,
    }

    /// The end of one request at the start of `buf`, framed by Content-Length or chunked.
    fn request_end(buf: &[u8]) -> Option<usize> {
        let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        if let Some(l) = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let n: usize = l.trim().parse().ok()?;
            return (buf.len() >= head + n).then_some(head + n);
        }
        if text.contains("transfer-encoding: chunked") {
            let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
            return Some(head + end + 5);
        }
        Some(head)
    }

    async fn scripted(answers: Vec<Vec<&'static [u8]>>) -> Scripted {
        scripted_with_gap(answers, Duration::from_millis(5)).await
    }

    /// [`scripted`], the pieces of each answer `gap` apart.
    async fn scripted_with_gap(answers: Vec<Vec<&'static [u8]>>, gap: Duration) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
        let (rec, count) = (received.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (rec, script) = (rec.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = request_end(&buf) {
                            let req: Vec<u8> = buf.drain(..end).collect();
                            rec.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&req).into_owned());
                            let answer = script.lock().unwrap().pop_front().unwrap_or_default();
                            if answer.is_empty() {
                                return;
                            }
                            for piece in answer {
                                let _ = s.write_all(piece).await;
                                tokio::time::sleep(gap).await;
                            }
                        }
                    }
                });
            }
        });
        Scripted {
            port,
            received,
            accepted,
        }
    }

    /// `f`'s output, or a panic if it waits 5 s for a wake-up that never comes (a body that
    /// forgets data it already holds). The deadline is checked first: a late wake-up from the
    /// deadline itself must not complete `f`.
    async fn unstalled<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("stalled with the answer read"),
            out = f => out,
        }
    }

    /// A whole answer that leaves its connection reusable.
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// The next request gets `OK`, and `connections` have been opened in all by then (one more
    /// than before when the last connection was not kept).
    async fn next_is_ok_after(p: &Pool, s: &Scripted, connections: usize, what: &str) {
        assert_eq!(
            body_of(p.send(get()).await.unwrap()).await.unwrap(),
            "ok",
            "{what}"
        );
        assert_eq!(s.accepted.load(Ordering::SeqCst), connections, "{what}");
    }

    async fn body_of(res: Response<Body>) -> Result<String, String> {
        res.into_body()
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_chunked_answer_in_pieces_is_decoded_and_its_connection_reused() {
        let s = scripted(vec![
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=v\r\nhel",
                b"lo\r\n6\r\n world\r",
                b"\n0\r\nx-trailer: 1\r\n",
                b"\r\n",
            ],
            // Pieces that end where a chunk ends, and where a chunk-size line ends.
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                b"6\r\n world\r\n",
                b"1\r\n",
                b"!\r\n0\r\n\r\n",
            ],
            vec![OK],
        ])
        .await;
        let p = pool(s.port);
        let res = p.send(get()).await.unwrap();
        assert_eq!(unstalled(body_of(res)).await.unwrap(), "hello world");
        assert_eq!(p.idle_count(), 1);
        let res = p.send(get()).await.unwrap();
        assert_eq!(unstalled(body_of(res)).await.unwrap(), "hello world!");
        next_is_ok_after(&p, &s, 1, "kept").await;
    }

    #[tokio::test]
    async fn pieces_already_read_are_ready_at_once_and_the_end_is_seen_with_the_last() {
        let s = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n",
        ]])
        .await;
        let p = pool(s.port);
        let res = p.send(get()).await.unwrap();
        let mut body = res.into_body();
        // The whole answer came in one write: every frame is there without waiting.
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = Vec::new();
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
                Poll::Ready(Some(Ok(f))) => {
                    frames.push(f.into_data().unwrap());
                    if frames.len() == 3 {
                        assert!(http_body::Body::is_end_stream(&body));
                    }
                }
                Poll::Ready(None) => break,
                other => panic!("not ready at once: {:?}", other.map(|_| ())),
            }
        }
        assert_eq!(frames, ["one", "two", "three"]);
        assert_eq!(p.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_malformed_answer_is_an_error_and_its_connection_is_not_reused() {
        let long = Box::leak(
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)).into_boxed_str(),
        );
        let bad: Vec<(&str, &'static [u8])> = vec![
            ("chunk size not hex", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            ("chunk size overflowing", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"),
            ("no CRLF after chunk data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"),
            ("bare LF line", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n"),
            ("differing lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc"),
            ("length not a number", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab"),
            ("folded header", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nab"),
            ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n"),
            ("head too large", long.as_bytes()),
        ];
        for (what, answer) in bad {
            let s = scripted(vec![vec![answer], vec![OK]]).await;
            let p = pool(s.port);
            let failed = match p.send(get()).await {
                Err(_) => true,
                Ok(res) => body_of(res).await.is_err(),
            };
            assert!(failed, "{what}: taken as a good answer");
            assert_eq!(p.idle_count(), 0, "{what}: connection kept");
            next_is_ok_after(&p, &s, 2, what).await;
        }
    }

    #[tokio::test]
    async fn an_answer_closed_within_its_body_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await;
        });
        let p = pool(port);
        let res = p.send(get()).await.unwrap();
        assert!(body_of(res).await.is_err());
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn length_and_chunked_together_is_read_chunked_without_its_length_and_not_reused() {
        let s = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
            vec![OK],
        ])
        .await;
        let p = pool(s.port);
        let res = p.send(get()).await.unwrap();
        assert!(res.headers().get(http::header::CONTENT_LENGTH).is_none());
        assert_eq!(body_of(res).await.unwrap(), "hello");
        assert_eq!(p.idle_count(), 0);
        next_is_ok_after(&p, &s, 2, "not kept").await;
    }

    #[tokio::test]
    async fn bytes_after_the_body_end_it_and_the_connection() {
        let s = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforge"],
            vec![OK],
        ])
        .await;
        let p = pool(s.port);
        assert_eq!(body_of(p.send(get()).await.unwrap()).await.unwrap(), "ok");
        assert_eq!(p.idle_count(), 0);
        // The smuggled answer is never taken for the next request's.
        next_is_ok_after(&p, &s, 2, "not kept").await;
    }

    #[tokio::test]
    async fn answers_without_a_body_and_interim_answers() {
        let s = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
            vec![b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"],
            vec![b"HTTP/1.1 100 Continue\r\n\r\n", OK],
            vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the close"],
            vec![],
            vec![OK],
        ])
        .await;
        let p = pool(s.port);
        let mut head = get();
        *head.method_mut() = Method::HEAD;
        let res = p.send(head).await.unwrap();
        assert_eq!(res.headers()[http::header::CONTENT_LENGTH], "5");
        assert_eq!(body_of(res).await.unwrap(), "");
        for status in [204, 304] {
            let res = p.send(get()).await.unwrap();
            assert_eq!(res.status(), status);
            assert_eq!(body_of(res).await.unwrap(), "");
        }
        let res = p.send(get()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body_of(res).await.unwrap(), "ok");
        // Not reused after the answer to HEAD, nor after the 304 that announced a body, nor
        // after an interim answer (a broken upstream's stray body must not become the next
        // answer); the 204 without one was reused: HEAD | 204, 304 | 100 + 200.
        assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
        // No framing: the body runs to the close, and the connection is not reused. (The server
        // closes it when the next request comes.)
        let res = p.send(get()).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "until the close");
        assert!(!http_body::Body::is_end_stream(&body));
        drop(body);
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn transfer_codings_other_than_chunked_are_refused_and_versions_are_unikgates() {
        let s = scripted(vec![
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            ],
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhi"],
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n"],
            vec![b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"],
            vec![b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi"],
        ])
        .await;
        let p = pool(s.port);
        for what in [
            "gzip, chunked",
            "gzip",
            "chunked twice",
            "HTTP/1.0 with chunked",
        ] {
            match p.send(get()).await {
                Err(PoolError::Protocol(_)) => {}
                Err(e) => panic!("{what}: {e}"),
                Ok(r) => panic!("{what}: passed on as {}", r.status()),
            }
        }
        let res = p.send(get()).await.unwrap();
        assert_eq!(
            res.version(),
            Version::HTTP_11,
            "the browser gets unikgate's version"
        );
        assert_eq!(body_of(res).await.unwrap(), "hi");
        assert_eq!(
            p.idle_count(),
            0,
            "an HTTP/1.0 answer without keep-alive is not reused"
        );
    }

    #[tokio::test]
    async fn a_malformed_first_chunk_is_an_error_before_any_byte_is_passed_on() {
        // The head comes first, the broken chunk-size line a moment later.
        let s = scripted(vec![
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"zz\r\nhello\r\n0\r\n\r\n",
            ],
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ],
        ])
        .await;
        let p = pool(s.port);
        assert!(matches!(p.send(get()).await, Err(PoolError::Protocol(_))));
        assert_eq!(
            body_of(p.send(get()).await.unwrap()).await.unwrap(),
            "hello"
        );
    }

    #[tokio::test]
    async fn a_stray_body_sent_late_after_an_answer_without_one_is_never_the_next_answer() {
        // A broken upstream: a body after its answer to HEAD, and after a 204 that announced one,
        // each sent 20 ms late, when the connection would already be back in the pool.
        const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray";
        let s = scripted_with_gap(
            vec![
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", STRAY],
                vec![OK],
                vec![
                    b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                    STRAY,
                ],
                vec![OK],
            ],
            Duration::from_millis(20),
        )
        .await;
        let p = pool(s.port);
        let mut head = get();
        *head.method_mut() = Method::HEAD;
        assert_eq!(body_of(p.send(head).await.unwrap()).await.unwrap(), "");
        next_is_ok_after(&p, &s, 2, "after HEAD").await;
        let res = p.send(get()).await.unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(body_of(res).await.unwrap(), "");
        // The 204 came on the connection of the request after HEAD (the scripted server
        // answers in order, whatever the connection): that one was reused, this one is not.
        next_is_ok_after(&p, &s, 3, "after a 204 announcing a body").await;
    }

    #[tokio::test]
    async fn a_target_without_a_path_is_written_in_origin_form() {
        let s = scripted(vec![vec![OK]]).await;
        let p = pool(s.port);
        let req = Request::builder()
            .uri("http://matomo?module=API")
            .header(http::header::HOST, "matomo")
            .body(Body::empty())
            .unwrap();
        assert_eq!(body_of(p.send(req).await.unwrap()).await.unwrap(), "ok");
        let got = s.received.lock().unwrap()[0].clone();
        assert!(got.starts_with("GET /?module=API HTTP/1.1\r\n"), "{got}");
    }

    #[tokio::test]
    async fn a_tunnel_answer_is_an_error_and_never_goes_back() {
        let s = scripted(vec![vec![
            b"HTTP/1.1 200 Connection established\r\ncontent-length: 0\r\n\r\n",
        ]])
        .await;
        let p = pool(s.port);
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("/matomo.php")
            .header(http::header::HOST, "matomo")
            .body(Body::empty())
            .unwrap();
        assert!(matches!(p.send(req).await, Err(PoolError::Protocol(_))));
        assert_eq!(p.idle_count(), 0);
    }

    #[test]
    fn every_answer_reads_the_same_whatever_the_read_boundaries() {
        use super::fuzzing::{answer, Outcome};
        let cases: &[(&[u8], Outcome)] = &[
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\none\r\n3\r\ntwo\r\n0\r\nt: 1\r\n\r\n",
                Outcome::Whole { data: b"onetwo".to_vec(), reused: true },
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                Outcome::Whole { data: b"hello".to_vec(), reused: true },
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
                Outcome::Whole { data: b"ok".to_vec(), reused: false },
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                Outcome::Whole { data: vec![], reused: false },
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n", Outcome::Refused),
        ];
        for (bytes, want) in cases {
            // Every single cut, and every pair of cuts.
            for i in 0..=bytes.len() {
                assert_eq!(&answer(&Method::GET, bytes, &[i]), want, "cut at {i}");
                for j in i..=bytes.len() {
                    answer(&Method::GET, bytes, &[i, j]);
                }
            }
        }
    }

    #[tokio::test]
    async fn the_request_framing_comes_from_its_body_never_from_its_headers() {
        let s = scripted(vec![vec![OK], vec![OK], vec![OK]]).await;
        let p = pool(s.port);
        let forged = |body: Body| {
            Request::builder()
                .method(Method::POST)
                .uri("/index.php")
                .header(http::header::HOST, "matomo")
                .header(http::header::CONTENT_LENGTH, "999")
                .header(http::header::TRANSFER_ENCODING, "chunked")
                .body(body)
                .unwrap()
        };
        assert_eq!(
            body_of(p.send(forged(Body::from("a=1"))).await.unwrap())
                .await
                .unwrap(),
            "ok"
        );
        let stream = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"part one,")),
            Ok(Bytes::from_static(b"part two")),
        ]);
        assert_eq!(
            body_of(p.send(forged(Body::from_stream(stream))).await.unwrap())
                .await
                .unwrap(),
            "ok"
        );
        let mut empty = forged(Body::empty());
        empty.headers_mut().remove(http::header::CONTENT_LENGTH);
        assert_eq!(body_of(p.send(empty).await.unwrap()).await.unwrap(), "ok");
        let got = s.received.lock().unwrap().clone();
        assert_eq!(
            got[0],
            "POST /index.php HTTP/1.1\r\nhost: matomo\r\ncontent-length: 3\r\n\r\na=1"
        );
        assert_eq!(
            got[1],
            "POST /index.php HTTP/1.1\r\nhost: matomo\r\ntransfer-encoding: chunked\r\n\r\n9\r\npart one,\r\n8\r\npart two\r\n0\r\n\r\n"
        );
        assert_eq!(
            got[2],
            "POST /index.php HTTP/1.1\r\nhost: matomo\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_reused_connection_closing_under_a_request_repeats_only_what_is_safe() {
        // Each second request on a connection is read, then the connection closes unanswered.
        let s = scripted(vec![vec![OK], vec![], vec![OK], vec![OK], vec![]]).await;
        let p = pool(s.port);
        assert_eq!(body_of(p.send(get()).await.unwrap()).await.unwrap(), "ok");
        // A GET is sent again on a new connection.
        next_is_ok_after(&p, &s, 2, "not kept").await;
        assert_eq!(body_of(p.send(get()).await.unwrap()).await.unwrap(), "ok");
        // A POST that Matomo may have acted on is not.
        let mut post = get();
        *post.method_mut() = Method::POST;
        match p.send(post).await {
            Err(PoolError::Closed) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    fn pool_pausing(port: u16, body_pause: Duration) -> Pool {
        Pool::new(
            "127.0.0.1",
            port,
            Duration::from_secs(2),
            Duration::from_secs(60),
            body_pause,
            8,
        )
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_cut_after_the_pause_limit() {
        let s = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ]])
        .await;
        let res = pool_pausing(s.port, Duration::from_millis(200))
            .send(get())
            .await
            .unwrap();
        // The server holds the connection open: only the pause limit ends the body.
        let body = tokio::time::timeout(Duration::from_secs(20), body_of(res))
            .await
            .expect("the stalled body was not cut");
        let err = body.expect_err("a body cut short is an error, not a short answer");
        assert!(err.contains("paused"), "{err}");
    }

    #[tokio::test]
    async fn pauses_shorter_than_the_limit_do_not_add_up() {
        // Six pauses of 100 ms (600 ms in all) under a 500 ms limit: the limit is per pause.
        let s = scripted_with_gap(
            vec![vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
                b"a",
                b"b",
                b"c",
                b"d",
                b"e",
                b"f",
            ]],
            Duration::from_millis(100),
        )
        .await;
        let res = pool_pausing(s.port, Duration::from_millis(500))
            .send(get())
            .await
            .unwrap();
        assert_eq!(body_of(res).await.as_deref(), Ok("abcdef"));
    }
}
