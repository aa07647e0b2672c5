//! The pool's answer parser and body framing (src/pool.rs): any bytes from Matomo, cut into reads
//! at any points. `unikgate::upstream::pool::fuzzing::answer` panics when an invariant breaks: the outcome
//! (data, error, reuse) does not depend on where the reads end; a `Content-Length` body is exactly
//! that many bytes; a connection goes back only after a whole answer with nothing left unread.
//!
//! Input: one byte for the request's method, one for the number of cuts, two per cut (offsets),
//! then the answer's bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => http::Method::GET,
        1 => http::Method::HEAD,
        2 => http::Method::POST,
        _ => http::Method::CONNECT,
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = (n % 16) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (cuts, answer) = rest.split_at(2 * n);
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .collect();
    unikgate::upstream::pool::fuzzing::answer(&method, answer, &cuts);
});
