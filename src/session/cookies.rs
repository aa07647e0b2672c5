//! The cookie: reading its values from a request without allocating, and the hash a Matomo
//! cookie is remembered by.

use http::header::{HeaderMap, COOKIE};

use crate::request::php::split_ascii;

/// The values of the cookies called `name` in a request, in order (`name=value` pairs of every
/// `Cookie` header; whitespace around names and values ignored). No allocation (hot path).
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| split_ascii(s, b';'))
        .filter_map(move |pair| {
            let eq = pair.bytes().position(|b| b == b'=')?;
            (pair[..eq].trim() == name).then(|| pair[eq + 1..].trim())
        })
}

/// Length of the base64 HMAC-SHA256 that starts a value signed by the `cookie` crate.
pub(super) const SIGNATURE_LEN: usize = 44;

/// SHA-256 hex of a cookie value.
pub fn cookie_hash(value: &str) -> String {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Hex by hand: `hex::encode` collects chars one by one, and this runs on every request.
    let mut out = String::with_capacity(64);
    for b in sha2::Sha256::digest(value.as_bytes()) {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}
