//! Phases 4 to 8 for the Matomo UI, over one [`UiVisit`]: authenticate (the session's user) →
//! its link → ensure the Matomo session → forward → fix the response (a 403 sign-in page: mint
//! once, retry once; the minted cookie) → save the session, once.
//!
//! Invariant: a UI request reaches Matomo only with the Matomo cookie unikgate minted for the
//! signed-in user (or, with `password_login`, untouched for browsers that are not signed in).

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::app::App;
use crate::context::{
    append_matomo_cookie, mint, own_url, redirect_local, set_matomo_cookie_header, Ctx,
};
use crate::error::Error;
use crate::session::{LinkRef, MatomoSession, Sess, UserSession};
use crate::upstream::matomo::{self, MATOMO_COOKIE};
use crate::util::now_ms;

/// Largest 403 body read to recognise Matomo's sign-in page.
const MAX_403_BODY: usize = 4 * 1024 * 1024;

/// One UI request as its phases see it: the app, the client, the session handle (opened from
/// the request's cookie, read once, saved once at the end).
struct UiVisit<'a> {
    app: &'a Arc<App>,
    ctx: Ctx,
    sess: Sess,
}

/// The Matomo UI: every phase, then the session saved (only when something changed).
pub(super) async fn serve(app: &Arc<App>, ctx: Ctx, req: Request) -> Response {
    let mut v = UiVisit {
        app,
        ctx,
        sess: app.sessions.open(req.headers()),
    };
    let res = v.run(req).await.unwrap_or_else(IntoResponse::into_response);
    crate::context::finish(app, v.sess, res).await
}

/// What the Matomo session of this request is, once ensured.
struct Ensured {
    /// The cookie the request goes to Matomo with.
    cookie: String,
    /// A new Matomo session was opened for this request (its `Set-Cookie` goes to the browser).
    minted: Option<String>,
    /// The session records the Matomo session's activity with this request.
    record_seen: bool,
}

impl UiVisit<'_> {
    async fn run(&mut self, req: Request) -> Result<Response, Error> {
        // Phase 4, authenticate: the session read shared (no copy); the user is copied only when
        // this request changes it, and then goes back into the session.
        let data = if self.sess.had_cookie() {
            Some(self.app.sessions.load_shared(&mut self.sess).await?)
        } else {
            None
        };
        let Some(signed_in) = data.as_ref().and_then(|d| d.user.as_ref()) else {
            return self.not_signed_in(req).await;
        };
        let mut user = Cow::Borrowed(signed_in);
        // Let in under other `[access]` rules (one compare on the hot path): checked again.
        if signed_in.policy != self.app.access.stamp() {
            use crate::context::Readmitted;
            match Box::pin(crate::context::readmit(
                self.app,
                &self.ctx,
                &mut self.sess,
                signed_in,
            ))
            .await?
            {
                Readmitted::Allowed => {
                    user.to_mut().policy = self.app.access.stamp();
                    self.sess.changed();
                }
                Readmitted::Refused(e) => return Err(e),
                Readmitted::SignInAgain => {
                    let to = own_url(self.app, "sign_in", &self.rd(&req));
                    return Ok(redirect_local(self.app, &to));
                }
            }
        }
        // The link as the session read it (borrowed: no copy of its strings per request).
        let res = self
            .signed_in(req, &mut user, signed_in.link.as_ref())
            .await;
        // A changed user goes back into the session unless the session ended; the session is
        // saved (by `serve`) only if something marked it changed.
        if let (Cow::Owned(user), false) = (user, self.sess.is_ended()) {
            if let Ok(data) = self.app.sessions.load(&mut self.sess).await {
                data.user = Some(user);
            }
        }
        res
    }

    /// Not signed in: Matomo's own login passes with `password_login`, else to the sign-in page.
    async fn not_signed_in(&self, req: Request) -> Result<Response, Error> {
        if self.app.cfg.matomo.password_login {
            // Matomo's own login and the sessions it makes pass through untouched.
            return super::public::forward_plain(self.app, self.ctx, req).await;
        }
        if self.app.oidc.is_none() {
            return Err(Error::NotConfigured);
        }
        Ok(redirect_local(
            self.app,
            &own_url(self.app, "sign_in", &self.rd(&req)),
        ))
    }

    /// Where to come back to after the sign-in or the link page.
    fn rd(&self, req: &Request) -> String {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        crate::request::redirect::safe_rd(
            pq,
            &self.app.cfg.server.base,
            &self.app.cfg.server.prefix,
        )
    }

    /// The signed-in phases: the link, the Matomo session, the forward, the response.
    async fn signed_in(
        &mut self,
        req: Request,
        user: &mut Cow<'_, UserSession>,
        stored_link: Option<&LinkRef>,
    ) -> Result<Response, Error> {
        let link = match stored_link {
            Some(l) => Cow::Borrowed(l),
            // Not linked when this session began: linked since (another browser, the CLI)?
            None => match Box::pin(self.linked_since(user.to_mut())).await? {
                None => {
                    let to = own_url(self.app, "link", &self.rd(&req));
                    return Ok(redirect_local(self.app, &to));
                }
                Some(r) => Cow::Owned(r),
            },
        };
        if link.superuser && self.app.cfg.matomo.deny_superusers {
            Box::pin(self.sess.end()).await?;
            return Err(Error::SuperuserDenied);
        }
        let ensured = self.ensure_matomo(req.headers(), user, &link).await?;
        if ensured.record_seen {
            user.to_mut().matomo = Some(MatomoSession::minted(
                &link.matomo_login,
                &ensured.cookie,
                now_ms(),
            ));
        }
        let res = self.forward(req, user, &link, &ensured).await?;
        if ensured.record_seen || ensured.minted.is_some() {
            // `run` puts `user` back into the session; `serve` saves it.
            self.sess.changed();
        }
        Ok(res)
    }

    /// Not linked when this session began: linked since (another browser, the CLI)? Then the
    /// session is indexed under its identity and carries the link from now on.
    async fn linked_since(&self, user: &mut UserSession) -> Result<Option<LinkRef>, Error> {
        let Some(l) = self.app.links.get(&user.issuer, &user.subject).await? else {
            return Ok(None);
        };
        if let Some(id) = self.sess.id() {
            crate::context::index_session(self.app, &id, user).await?;
        }
        let r = crate::context::link_ref(&l);
        user.link = Some(r.clone());
        Ok(Some(r))
    }

    /// Phase 5, ensure the Matomo session: the browser's `MATOMO_SESSID` is the one minted for
    /// this user and still fresh, else a new one is minted.
    async fn ensure_matomo(
        &self,
        headers: &HeaderMap,
        user: &UserSession,
        link: &LinkRef,
    ) -> Result<Ensured, Error> {
        let now = now_ms();
        let browser = matomo::request_cookie(headers, MATOMO_COOKIE);
        let idle = self.app.cfg.matomo.idle_timeout.as_millis() as i64;
        let margin = (idle / 10).min(60_000);
        let fresh = user.matomo.as_ref().is_some_and(|m| {
            m.login == link.matomo_login
                && browser.as_deref().is_some_and(|b| m.is_cookie(b))
                && now - m.seen < idle - margin
        });
        let (cookie, minted) = if fresh {
            (browser.unwrap_or_default(), None)
        } else {
            // Boxed (as every cold path here): minting's future is large, the hot path's is not.
            let v = Box::pin(mint(
                self.app,
                &self.ctx,
                &link.matomo_login,
                &user.subject,
                "ui",
            ))
            .await?;
            (v.clone(), Some(v))
        };
        // The Matomo session's activity rides on the session's own activity write: one request
        // per session and `touch_every` (the one that claimed it while reading the session)
        // records both, so a burst of parallel requests writes once. `seen` then lags real use by
        // at most two `touch_every` (60 s), which only makes the gate re-mint earlier, never
        // later.
        let touch_every = self.app.sessions.touch_every().as_millis() as i64;
        let record_seen = minted.is_some()
            || (self.sess.will_save()
                && user
                    .matomo
                    .as_ref()
                    .is_some_and(|m| now - m.seen >= touch_every));
        Ok(Ensured {
            cookie,
            minted,
            record_seen,
        })
    }

    /// Phases 6 and 7, forward and fix the response: the request goes with the ensured cookie;
    /// Matomo's sign-in page on a 403 means its session is gone (mint once, retry once); a newly
    /// minted cookie goes to the browser.
    async fn forward(
        &self,
        req: Request,
        user: &mut Cow<'_, UserSession>,
        link: &LinkRef,
        ensured: &Ensured,
    ) -> Result<Response, Error> {
        let method = req.method().clone();
        let (mut parts, body) = req.into_parts();
        self.app.upstream.sanitize_request_as(
            &mut parts.headers,
            self.ctx.client_ip,
            Some(&ensured.cookie),
        );
        // Kept for the one retry below (GET/HEAD whose Matomo cookie was not just minted).
        // (A tuple, not a `Resend`: kept across the await below, a struct holding the method too
        // made every request's future dearer, ~700 instructions on every path in
        // bench/instructions.)
        let retry = (ensured.minted.is_none() && (method == Method::GET || method == Method::HEAD))
            .then(|| (parts.uri.clone(), parts.headers.clone()));
        let mut res = self
            .app
            .upstream
            .send(Request::from_parts(parts, body))
            .await?;
        let mut minted = ensured.minted.clone();
        // Matomo answered as to an anonymous visitor: mint once more and retry once.
        if let (StatusCode::FORBIDDEN, Some((uri, headers))) = (res.status(), retry) {
            let resend = Resend {
                method,
                uri,
                headers,
            };
            let retried = Box::pin(self.retry_as_anonymous(user, link, res, resend)).await?;
            res = retried.0;
            if retried.1.is_some() {
                minted = retried.1;
            }
        }
        if let Some(v) = &minted {
            let already = matomo::set_cookie_value(res.headers(), MATOMO_COOKIE).as_deref()
                == Some(v.as_str());
            if !already {
                append_matomo_cookie(self.app, res.headers_mut(), v);
            }
        }
        Ok(res)
    }

    /// Matomo answered 403 to a request sent with the Matomo cookie: if the answer is its
    /// sign-in page (the Matomo session is gone), mints a new session and sends the request once
    /// more. Returns the answer to give and the value minted, if any.
    async fn retry_as_anonymous(
        &self,
        user: &mut Cow<'_, UserSession>,
        link: &LinkRef,
        res: Response,
        resend: Resend,
    ) -> Result<(Response, Option<String>), Error> {
        let Resend {
            method,
            uri: orig_uri,
            mut headers,
        } = resend;
        let (rparts, rbody) = res.into_parts();
        let bytes = match read_prefix(rbody, MAX_403_BODY).await {
            Ok(Prefix::Whole(b)) => b,
            // Larger than any sign-in page: Matomo's own page, passed on whole.
            Ok(Prefix::Longer(body)) => return Ok((Response::from_parts(rparts, body), None)),
            Err(e) => {
                tracing::warn!(error = %e, "Matomo's 403 answer broke off while unikgate read it");
                return Err(Error::MatomoUnexpected(
                    "Matomo's answer (a 403) broke off before its end; reload the page".into(),
                ));
            }
        };
        if !matomo::is_anonymous_page(rparts.status, &bytes) {
            return Ok((Response::from_parts(rparts, Body::from(bytes)), None));
        }
        tracing::info!(subject = %user.subject, "Matomo answered as anonymous; minting again");
        let v = mint(
            self.app,
            &self.ctx,
            &link.matomo_login,
            &user.subject,
            "retry",
        )
        .await?;
        set_matomo_cookie_header(&mut headers, &v);
        user.to_mut().matomo = Some(MatomoSession::minted(&link.matomo_login, &v, now_ms()));
        let mut retry = Request::new(Body::empty());
        *retry.method_mut() = method;
        *retry.uri_mut() = orig_uri;
        *retry.headers_mut() = headers;
        let res = self.app.upstream.send(retry).await?;
        Ok((res, Some(v)))
    }
}

/// A bodiless request (GET or HEAD) as it went to Matomo, to send once more.
struct Resend {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

/// The start of an answer's body, read to recognise it.
enum Prefix {
    /// The whole body, no longer than the limit.
    Whole(Bytes),
    /// Longer: the body as it came (what was read, then the rest).
    Longer(Body),
}

async fn read_prefix(mut body: Body, max: usize) -> Result<Prefix, axum::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > max {
            use futures_util::StreamExt;
            let read = buf.freeze();
            let whole = futures_util::stream::once(async move { Ok::<_, axum::Error>(read) })
                .chain(body.into_data_stream());
            return Ok(Prefix::Longer(Body::from_stream(whole)));
        }
    }
    Ok(Prefix::Whole(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_403_page_is_passed_on_whole_and_a_cut_one_is_an_error() {
        // Longer than any sign-in page: passed on as it came, every byte.
        let big = vec![b'p'; MAX_403_BODY + 10];
        let pieces: Vec<Result<Bytes, std::io::Error>> = big
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(pieces));
        let Ok(Prefix::Longer(whole)) = read_prefix(body, MAX_403_BODY).await else {
            panic!("not passed on");
        };
        let got = whole.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), big.len());
        assert!(got.iter().all(|b| *b == b'p'));
        // A short one is read whole, to be recognised.
        let body = Body::from("<html>login</html>");
        assert!(matches!(
            read_prefix(body, MAX_403_BODY).await,
            Ok(Prefix::Whole(b)) if b == "<html>login</html>"
        ));
        // One that breaks off is an error (a page of its own), not an empty 403.
        let cut: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"<html>")),
            Err(std::io::Error::other("reset")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(cut));
        assert!(read_prefix(body, MAX_403_BODY).await.is_err());
    }
}
