//! The listener: hyper HTTP/1.1 connections with bounded header size and read time, the peer
//! address handed to the app, and a graceful shutdown that lets requests in flight finish.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::gate::Gate;

/// Largest request head (request line + headers) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time given to requests in flight at shutdown.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Serves `gate` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let gate = gate.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let gate = gate.clone();
            async move { Ok::<_, std::convert::Infallible>(gate.serve(peer, req.map(Body::new)).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_buf_size(MAX_HEAD)
            .header_read_timeout(HEAD_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
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
