//! Readiness: the provider configured, the stores, Matomo.

use super::*;

/// `GET <prefix>/readyz`.
pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    if app.oidc.is_none() {
        problems.push(
            "provider: not configured yet: set provider.client_id / client_secret".to_string(),
        );
    }
    if let Some(p) = app.tls.as_ref().and_then(|t| t.problem()) {
        problems.push(format!("tls: {p}"));
    }
    if let Err(e) = app.stores.ping().await {
        problems.push(format!("store: {e}"));
    }
    let probe = app
        .upstream
        .call(
            Method::GET,
            "/robots.txt",
            HeaderMap::new(),
            None,
            std::net::IpAddr::from([127, 0, 0, 1]),
        )
        .await;
    if let Err(e) = probe {
        problems.push(format!("upstream: {e}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}
