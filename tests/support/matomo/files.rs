//! What Apache serves itself, outside `index.php`: the stand-in's fault streams under
//! `/plugins/StandIn/` (`big.js`: as many bytes as asked, never buffered; `reset.js`: the head
//! and part of the body, then a dropped connection), `robots.txt`, the files of `/plugins/`,
//! `/libs/`, `/misc/` and `/node_modules/` (a `.php` among them is refused with a 403), and
//! `/upload`, a sink that answers how many bytes it received.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};

use super::php::{params, Req};
use super::{json, record, Shared};

/// The large streaming endpoints, answered before the body is read.
pub(super) fn streamed(st: &Shared, parts: &Parts, path: &str) -> Option<Response> {
    match path {
        "/plugins/StandIn/big.js" => {
            let n: u64 = params(parts.uri.query().unwrap_or(""))
                .get("bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(1024);
            let res = big(n);
            record(
                st,
                &parts.method,
                &parts.uri.to_string(),
                &parts.headers,
                0,
                None,
            );
            Some(res)
        }
        "/plugins/StandIn/reset.js" => Some(reset()),
        _ => None,
    }
}

/// `n` bytes of JavaScript, streamed in 64 KiB chunks.
fn big(n: u64) -> Response {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(chunk.len() as u64);
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take as usize)),
                left - take,
            ))
        }
    });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript"),
    );
    res
}

/// Sends the head and part of the body, then drops the connection.
fn reset() -> Response {
    let stream = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 1024])), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((Err(std::io::Error::other("reset")), 2))
            }
            _ => None,
        }
    });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("100000"));
    res
}

/// `robots.txt`, the static files and `/upload`; None for anything else.
pub(super) fn answer(rq: &Req) -> Option<Response> {
    let path = rq.path.as_str();
    if path == "/robots.txt" {
        return Some(
            (
                [(header::CONTENT_TYPE, "text/plain")],
                "User-agent: *\nDisallow: /\n",
            )
                .into_response(),
        );
    }
    if path.starts_with("/plugins/")
        || path.starts_with("/libs/")
        || path.starts_with("/misc/")
        || path.starts_with("/node_modules/")
    {
        rq.record(None);
        if path.ends_with(".php") {
            return Some((StatusCode::FORBIDDEN, "no direct access").into_response());
        }
        return Some(
            (
                [(header::CONTENT_TYPE, "text/plain")],
                format!("asset {path}"),
            )
                .into_response(),
        );
    }
    if path == "/upload" {
        rq.record(None);
        return Some(json(serde_json::json!({"bytes": rq.body_len})));
    }
    None
}
