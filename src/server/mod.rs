//! The listener: hyper HTTP/1.1 connections (with `[tls]`: TLS, then HTTP/2 or HTTP/1.1 as ALPN
//! chose) with bounded header size and read time, a cap on connections (in total and per
//! address), the peer address handed to the app, and a graceful shutdown that lets requests in
//! flight finish. `redirect.rs`: `server.http_listen`, plain HTTP sent to HTTPS.
//!
//! Invariant: every connection holds a [`ConnPermit`] for its life; one refused at the cap gets
//! a 503 and is closed without a byte of it being read; a client that begins a request head and
//! does not finish it within `server.head_timeout` gets a 408 (an idle keep-alive connection is
//! closed quietly).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::gate::Gate;
use crate::limits::{ConnPermit, Connections, Refused};

pub mod redirect;

/// Largest request head (request line + headers) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Time given to requests in flight at shutdown.
pub const DRAIN: Duration = Duration::from_secs(30);

const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 50\r\nconnection: close\r\n\r\nThe request head did not come in time: send again\n";
pub(super) const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 46\r\nretry-after: 5\r\nconnection: close\r\n\r\nToo many connections are open: try again soon\n";

/// Serves `gate` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = gate.app().cfg.clone();
    let head_timeout = cfg.server.head_timeout;
    let conns = Connections::new(
        cfg.server.max_connections,
        cfg.server.max_connections_per_ip,
        cfg.server.trusted_proxies.clone(),
    );
    let refusals = RefusalLog::default();
    let graceful = GracefulShutdown::new();
    let tls = match &gate.app().tls {
        Some(served) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(served).map_err(io::Error::other)?,
        )),
        None => None,
    };
    // With ACME, ordering begins now that the CA's TLS-ALPN-01 check finds this listener.
    if let Some(acme) = gate.app().tls.as_ref().and_then(|t| t.acme()) {
        acme.begin();
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match conns.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                refusals.note(why, peer.ip(), &conns);
                // Never read, answered at once, closed: a refused client holds nothing.
                let _ = stream.try_write(AT_CAPACITY);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = ClientIo::new(stream, permit);
        if let Some(acceptor) = &tls {
            let watcher = graceful.watcher();
            let acceptor = acceptor.clone();
            tokio::spawn(serve_tls(
                acceptor,
                io,
                gate.clone(),
                peer,
                head_timeout,
                watcher,
            ));
            continue;
        }
        // The plain-HTTP service has a closure of its own (not shared with `serve_tls`): hyper
        // moves the service's future into its slot at every request, and with one closure for
        // both connection kinds that move stopped being elided (+700 instructions per request
        // in bench/instructions, all memcpy from hyper's recv_msg).
        let gate = gate.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let gate = gate.clone();
            async move { Ok::<_, std::convert::Infallible>(gate.serve(peer, req.map(Body::new)).await) }
        });
        let head_timed_out = io.head_timed_out.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_buf_size(MAX_HEAD)
            .header_read_timeout(head_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::pin!(fut);
            if let Err(e) = (&mut fut).await {
                if e.is_timeout() {
                    // The connection (and its socket) is dropped below: it answers 408 then if
                    // a head had begun.
                    head_timed_out.store(true, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: draining requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("drain time over; closing the remaining connections"),
    }
    Ok(())
}

/// One HTTPS connection: the TLS handshake (within `head_timeout`), then HTTP/2 or HTTP/1.1 as
/// ALPN chose, with the same head limits as plain HTTP. (A head that times out closes the
/// connection without the plain-text 408, which cannot be written inside TLS.)
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    io: ClientIo,
    gate: Gate,
    peer: std::net::SocketAddr,
    head_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let stream = match tokio::time::timeout(head_timeout, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            metrics::counter!("unikgate_tls_handshake_failures_total").increment(1);
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake did not finish within server.head_timeout");
            return;
        }
    };
    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::acme::ACME_TLS_ALPN) {
        // The ACME CA's TLS-ALPN-01 check: the handshake was the answer; no HTTP follows.
        return;
    }
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEAD)
        .header_read_timeout(head_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(MAX_STREAMS)
        // An idle HTTP/2 connection is pinged, and closed when the ping is not answered.
        .keep_alive_interval(head_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let gate = gate.clone();
        async move { Ok::<_, std::convert::Infallible>(gate.serve(peer, req.map(Body::new)).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "HTTPS connection ended with an error");
    }
}

/// Requests one HTTP/2 connection may have in flight at once (each is a request of its own for
/// the body limits and the budget).
pub const MAX_STREAMS: u32 = 128;

/// Refused connections: counted, and logged at most once a second (a flood must not flood the
/// log too).
#[derive(Default)]
pub(super) struct RefusalLog {
    last_logged: AtomicU64,
    since: AtomicU64,
}

impl RefusalLog {
    pub(super) fn note(&self, why: Refused, ip: std::net::IpAddr, conns: &Connections) {
        metrics::counter!("unikgate_connections_refused_total", "reason" => why.as_str())
            .increment(1);
        let now = crate::util::now_ms() as u64;
        let since = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since.store(0, Ordering::Relaxed);
            tracing::warn!(
                limit = why.as_str(),
                client_ip = %ip,
                open = conns.open(),
                refused_since_last_line = since,
                "connection refused with 503: server.{} reached",
                why.as_str()
            );
        }
    }
}

/// A client's socket as hyper sees it, with the connection's permit, and what it needs to answer
/// a head that timed out: whether bytes of a head have come since the last answer.
struct ClientIo {
    stream: TcpStream,
    _permit: ConnPermit,
    /// Bytes were read since the last write: a request head has begun (or a body is coming).
    reading: bool,
    /// Set by the connection's task when hyper gave up waiting for the head.
    head_timed_out: Arc<AtomicBool>,
}

impl ClientIo {
    fn new(stream: TcpStream, permit: ConnPermit) -> ClientIo {
        ClientIo {
            stream,
            _permit: permit,
            reading: false,
            head_timed_out: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        if self.reading && self.head_timed_out.load(Ordering::Relaxed) {
            tracing::info!(
                "a client did not finish its request head within server.head_timeout (408)"
            );
            metrics::counter!("unikgate_timeouts_total", "what" => "head").increment(1);
            // Nothing else is being written on this socket: the small answer fits its buffer.
            let _ = self.stream.try_write(TIMED_OUT);
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reading = true;
        }
        r
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.reading = false;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.reading = false;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Asks the proxy listening on `cfg`'s `server.listen` for `<prefix>/healthz` (an unspecified
/// address is asked on loopback): `Ok` when it answers 200 within 5 s.
pub async fn probe_health(cfg: &crate::config::Config) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = cfg.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let mut s: Box<dyn Stream> = match &cfg.tls {
            None => Box::new(tcp),
            Some(_) => {
                let connector =
                    tokio_rustls::TlsConnector::from(crate::tls::probe_client_config()?);
                let name = rustls::pki_types::ServerName::try_from(
                    cfg.server
                        .public_url
                        .host_str()
                        .unwrap_or("localhost")
                        .to_string(),
                )
                .map_err(|e| format!("server.public_url's host: {e}"))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("no TLS handshake with {addr}: {e}"))?,
                )
            }
        };
        let req = format!(
            "GET {}/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            cfg.server.prefix
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("cannot ask {addr}: {e}"))?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .await
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        match &head {
            b"HTTP/1.1 200" => Ok(()),
            other => Err(format!(
                "{addr} answered {:?}",
                String::from_utf8_lossy(other)
            )),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| format!("{addr} did not answer within 5 s"))?
}

/// A connection the health probe talks over: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_written_by_hand_are_well_framed() {
        for answer in [TIMED_OUT, AT_CAPACITY] {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut res = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = res.parse(answer) else {
                panic!("not a whole head");
            };
            let length: usize = res
                .headers
                .iter()
                .find(|h| h.name == "content-length")
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap();
            assert_eq!(answer.len() - head, length);
        }
    }
}
