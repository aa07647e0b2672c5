//! The request side of the pool (src/pool.rs): whatever method, target, headers and body a
//! browser's request carries once hyper has parsed it, what unikgate writes to Matomo is exactly
//! one well-formed HTTP/1.1 request with unikgate's own framing (checked by
//! `unikgate::upstream::pool::fuzzing::request` with httparse and the pool's chunk decoder).
//!
//! Input, split at NUL bytes: method, target, then `name: value` header lines, then the body's
//! pieces (each further NUL starts a new piece); the first byte's low bit chooses chunked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut fields = data.split(|b| *b == 0);
    let (Some(method), Some(target), Some(headers)) = (fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    // What hyper hands on: a target it parsed into a URI.
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    // At most 100 header lines, as hyper's server accepts (its default limit).
    for line in headers.split(|b| *b == b'\n').take(100) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    let (parts, ()) = req.into_parts();
    let chunks: Vec<&[u8]> = fields.collect();
    unikgate::upstream::pool::fuzzing::request(&parts, &chunks, flags & 1 == 1);
});
