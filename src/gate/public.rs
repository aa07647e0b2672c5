//! Phase 3 for public traffic (tracker, assets, token-authenticated API): forwarded as it is,
//! after the header policy; and the browsers that are not signed in when `password_login` lets
//! Matomo's own login through.
//!
//! Invariant: nothing here gates, re-mints or refuses; a public request only refreshes the
//! activity clock of the Matomo session unikgate minted when it carries that cookie.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::header::HeaderMap;

use crate::app::App;
use crate::context::Ctx;
use crate::error::Error;
use crate::upstream::matomo::{self, MATOMO_COOKIE};
use crate::util::now_ms;

/// Public traffic: forwarded as it is (after the header policy). When it carries the Matomo cookie
/// unikgate minted, it counts as activity of that Matomo session.
pub(super) async fn forward_public(
    app: &Arc<App>,
    ctx: Ctx,
    req: Request,
) -> Result<Response, Error> {
    if let Some(browser) = matomo::request_cookie(req.headers(), MATOMO_COOKIE) {
        if app.sessions.public_activity_due(req.headers()) {
            Box::pin(record_activity(app, req.headers(), &browser)).await;
        }
    }
    forward_plain(app, ctx, req).await
}

/// Forwards without touching sessions (public traffic, and password-login browsers): the header
/// policy now, then the sending future itself (no async layer of its own: one move of the
/// request fewer on the hot path).
pub(super) fn forward_plain(
    app: &Arc<App>,
    ctx: Ctx,
    mut req: Request,
) -> impl std::future::Future<Output = Result<Response, Error>> + Send + '_ {
    app.upstream
        .sanitize_request(req.headers_mut(), ctx.client_ip);
    app.upstream.send(req)
}

/// Public traffic with the Matomo cookie unikgate minted counts as activity of that Matomo
/// session. Activity bookkeeping must never block public traffic: errors are logged only.
async fn record_activity(app: &Arc<App>, headers: &HeaderMap, browser: &str) {
    let mut sess = app.sessions.open(headers);
    if let Ok(data) = app.sessions.load(&mut sess).await {
        let mut changed = false;
        if let Some(m) = data.user.as_mut().and_then(|u| u.matomo.as_mut()) {
            if m.is_cookie(browser)
                && now_ms() - m.seen >= app.sessions.touch_every().as_millis() as i64
            {
                m.seen = now_ms();
                changed = true;
            }
        }
        if changed {
            sess.changed();
            let mut ignored = HeaderMap::new();
            if let Err(e) = app.sessions.finish(sess, &mut ignored).await {
                tracing::warn!(error = %e.chain(), "could not record Matomo activity");
            }
        }
    }
}
