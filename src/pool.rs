//! Keep-alive HTTP/1.1 connections to Matomo, checked out and returned by the request's own task.
//!
//! A connection goes back to the pool the moment its response body ends (the body wrapper sees
//! the end), so no task is spawned per request; a request that could not be written on a reused
//! connection (Matomo closed it while it was idle) is sent again on another one. A body dropped
//! before its end closes its connection. Why not hyper-util's pooled client: it spawns a task per
//! request to return the connection and hashes the authority on every checkout;
//! docs/PERFORMANCE.md has the measurement.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request did not reach Matomo.
#[derive(Debug)]
pub enum PoolError {
    /// The TCP connection failed (refused, unreachable, name not resolved).
    Connect(std::io::Error),
    /// The TCP connection did not open within `upstream.connect_timeout`.
    ConnectTimeout,
    /// The HTTP exchange failed (connection reset, malformed answer).
    Http(hyper::Error),
    /// A new connection closed before the request could be written.
    Closed,
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "cannot connect: {e}"),
            PoolError::ConnectTimeout => f.write_str("connect timed out"),
            PoolError::Http(e) => write!(f, "{e}"),
            PoolError::Closed => f.write_str("connection closed before the request was sent"),
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
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently returned last (reused first: its socket is the least likely to be closed).
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// One connection's request side; its I/O runs in a task of its own, which notices at once when
/// Matomo closes an idle connection.
struct Conn {
    sender: SendRequest<Body>,
}

enum Failed {
    /// Not written (the connection was closed while idle): the request comes back for a retry.
    Retry(Box<Request<Body>>),
    Fatal(hyper::Error),
}

impl Conn {
    /// Sends the request; the response head comes back.
    async fn exchange(&mut self, req: Request<Body>) -> Result<Response<Incoming>, Failed> {
        self.sender
            .try_send_request(req)
            .await
            .map_err(|mut e| match e.take_message() {
                Some(back) => Failed::Retry(Box::new(back)),
                None => Failed::Fatal(e.into_error()),
            })
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, Vec<(Conn, Instant)>> {
        // A panic while holding this lock leaves a plain Vec behind: still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle();
        while let Some((c, since)) = idle.pop() {
            if !c.sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }
}

impl Pool {
    /// `host` is a name or an IP address (IPv6 without brackets).
    pub fn new(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                host: host.to_string(),
                port,
                connect_timeout,
                idle_timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one. The response
    /// body streams; its connection returns to the pool when the body has been read to the end.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, PoolError> {
        while let Some(mut conn) = self.inner.checkout() {
            // Usually ready at once; a connection still finishing its previous answer is awaited.
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.exchange(req).await {
                Ok(res) => return Ok(self.wrap(res, conn)),
                Err(Failed::Retry(back)) => req = *back,
                Err(Failed::Fatal(e)) => return Err(PoolError::Http(e)),
            }
        }
        let mut conn = self.connect().await?;
        match conn.exchange(req).await {
            Ok(res) => Ok(self.wrap(res, conn)),
            Err(Failed::Retry(_)) => Err(PoolError::Closed),
            Err(Failed::Fatal(e)) => Err(PoolError::Http(e)),
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
        let (sender, io) = Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = io.await {
                tracing::debug!(error = %e, "connection to Matomo ended");
            }
        });
        Ok(Conn { sender })
    }

    fn wrap(&self, res: Response<Incoming>, conn: Conn) -> Response<Body> {
        let (parts, inner) = res.into_parts();
        let mut body = PooledBody {
            inner,
            conn: Some(conn),
            pool: self.inner.clone(),
        };
        if http_body::Body::is_end_stream(&body.inner) {
            body.release();
        }
        Response::from_parts(parts, Body::new(body))
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.idle().len()
    }
}

/// A response body that hands its connection back to the pool when it ends.
struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Arc<Inner>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            // A broken body: its connection is not reused (dropping it closes it).
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        Pool::new(
            "127.0.0.1",
            port,
            Duration::from_secs(2),
            Duration::from_secs(60),
            8,
        )
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
    async fn a_closed_port_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        match pool(port).send(get()).await {
            Err(PoolError::Connect(_)) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
