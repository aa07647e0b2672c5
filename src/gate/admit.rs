//! Phases 0 and 1: what a request must be before anything looks at it (RFC 9110 / 9112), and the
//! limits of its URL and headers. Pure: no I/O, no state.

use axum::extract::Request;
use http::header::{self, HeaderValue};
use http::Method;

use crate::error::Error;

/// Longest path + query accepted.
pub const MAX_URI: usize = 8 * 1024;
/// Most header bytes (names + values) accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The methods unikgate serves, for the `Allow` of a 405 to CONNECT or TRACE.
pub const ALLOWED_METHODS: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

/// Phase 0, well formed: a method unikgate serves, one `Host` on HTTP/1.1, an expectation it can
/// meet, an origin-form target (an absolute-form one is rewritten).
pub fn well_formed(req: &mut Request) -> Result<(), Error> {
    // CONNECT asks for a tunnel and TRACE echoes the request back (its cookies included):
    // neither is Matomo's, on any path.
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(Error::MethodNotAllowed);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Err(Error::BadRequest(
                "an HTTP/1.1 request must carry a Host header".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(
                "a request must carry one Host header, not several".into(),
            ))
        }
        _ => {}
    }
    // `100-continue` is met by the server itself (it answers 100 when the body is first read)
    // and never forwarded; nothing else can be.
    for v in req.headers().get_all(header::EXPECT) {
        if !v
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            return Err(Error::ExpectationFailed);
        }
    }
    // Absolute-form (`GET http://host?x HTTP/1.1`): the target becomes origin-form, with `/`
    // when it has no path, before it is classified or forwarded.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let origin_form = if pq.starts_with('/') {
            pq.to_string()
        } else {
            format!("/{pq}")
        };
        *req.uri_mut() = origin_form
            .parse()
            .map_err(|_| Error::BadRequest("the request target is not a valid path".into()))?;
    }
    Ok(())
}

/// Phase 1, limits: the URL and the headers (hyper bounds the head as it reads it too).
pub fn within_limits(req: &Request) -> Result<(), Error> {
    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > MAX_URI {
        return Err(Error::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(Error::HeadersTooLarge);
    }
    Ok(())
}
