//! The Matomo stand-in of the tests as its own process (browser journey, benchmarks, soak).
//! Usage: matomo-standin [LISTEN_ADDR]   (default 127.0.0.1:8081; prints "listening" when ready)
//! Env: STANDIN_IDLE_MS (Matomo's session idle timeout, default 3600000).

#[path = "../tests/support/matomo/mod.rs"]
mod matomo;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("matomo-standin: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let state = matomo::new_state();
    if let Some(ms) = std::env::var("STANDIN_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        state
            .idle_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
    println!("matomo-standin listening on {addr}");
    matomo::serve(listener, state).await;
}
