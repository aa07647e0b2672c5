//! What unikgate's own handlers take as arguments (axum extractors): the visit (app, client,
//! headers, language), the query and a posted form read the way unikgate reads every body, the
//! session handle, and a form whose CSRF token matched that session.
//!
//! Invariant: a handler that changes state takes [`CsrfForm`], so it cannot run before the form's
//! `csrf` has been compared with the session's token.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::HeaderMap;

use crate::app::App;
use crate::context::Ctx;
use crate::error::Error;
use crate::pages::i18n::Texts;
use crate::session::Sess;

/// Largest form accepted by unikgate's own endpoints.
pub const MAX_FORM: usize = 64 * 1024;

/// Decoded form or query pairs (the last of a duplicated name wins, as in PHP).
pub type Pairs = HashMap<String, String>;

pub(super) fn parse_pairs(s: &str) -> Pairs {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// A body read the one way unikgate reads bodies (`limits::read_body`: size, time, budget).
pub(super) async fn read_form(app: &App, body: axum::body::Body) -> Result<Pairs, Error> {
    let bytes = crate::limits::read_body(body, MAX_FORM, app.cfg.server.body_timeout).await?;
    Ok(parse_pairs(&String::from_utf8_lossy(&bytes)))
}

/// What every handler of one request reads: the app, the client, the request's headers and its
/// language.
pub struct Visit {
    pub app: Arc<App>,
    pub ctx: Ctx,
    pub headers: HeaderMap,
    pub t: &'static Texts,
}

impl FromRequestParts<Arc<App>> for Visit {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Error> {
        let ctx = *parts.extensions.get::<Ctx>().ok_or_else(|| {
            Error::Internal("the request reached an endpoint without its context".into())
        })?;
        Ok(Visit {
            app: app.clone(),
            ctx,
            headers: parts.headers.clone(),
            t: crate::pages::i18n::for_request(&parts.headers),
        })
    }
}

/// The query string's pairs (never a rejection: undecodable bytes are read lossily).
pub struct Query(pub Pairs);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Query(parse_pairs(parts.uri.query().unwrap_or(""))))
    }
}

/// A posted form, read with unikgate's limits (too large 413, too slow 408, too busy 503).
pub struct Form(pub Pairs);

impl FromRequest<Arc<App>> for Form {
    type Rejection = Error;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Error> {
        read_form(app, req.into_body()).await.map(Form)
    }
}

/// The request's session, opened by the layer around the session routes
/// ([`super::around_session`]), which saves it once the handler has answered.
#[derive(Clone)]
pub(super) struct SessionSlot(pub Arc<tokio::sync::Mutex<Sess>>);

/// The session handle of this request (locked for the handler; the layer takes it back).
pub struct Session(tokio::sync::OwnedMutexGuard<Sess>);

impl Deref for Session {
    type Target = Sess;
    fn deref(&self) -> &Sess {
        &self.0
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Sess {
        &mut self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let slot = parts
            .extensions
            .get::<SessionSlot>()
            .ok_or_else(|| Error::Internal("a session route without the session layer".into()))?;
        Ok(Session(slot.0.clone().lock_owned().await))
    }
}

/// A posted form whose `csrf` matches the session's token, and that session.
pub struct CsrfForm {
    pub sess: Session,
    pub form: Pairs,
}

impl FromRequest<Arc<App>> for CsrfForm {
    type Rejection = Error;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Error> {
        let (mut parts, body) = req.into_parts();
        let mut sess = Session::from_request_parts(&mut parts, app).await?;
        let form = read_form(app, body).await?;
        let data = app.sessions.load(&mut sess).await?;
        if !data.csrf_ok(form.get("csrf").map(String::as_str).unwrap_or("")) {
            crate::audit!(
                app,
                warn,
                event = "refused",
                reason = "CSRF token missing or wrong"
            );
            return Err(Error::Csrf);
        }
        Ok(CsrfForm { sess, form })
    }
}
