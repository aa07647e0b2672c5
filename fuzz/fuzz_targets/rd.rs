//! The `rd` validator: whatever comes in, what comes out is a path on the same origin (and, with
//! Matomo under a path, a path below it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    // Under a path too: what comes out stays below it.
    let under = unikgate::request::redirect::safe_rd(&s, "/analytics", "/analytics/_unikgate");
    assert!(
        under == "/analytics"
            || under.starts_with("/analytics/")
            || under.starts_with("/analytics?")
            || under.starts_with("/analytics#"),
        "{s:?} → {under:?}"
    );
    let out = unikgate::request::redirect::safe_rd(&s, "", "/_unikgate");
    assert!(out.starts_with('/'), "{s:?} → {out:?}");
    assert!(
        !out.starts_with("//") && !out.starts_with("/\\"),
        "{s:?} → {out:?}"
    );
    assert!(out.is_ascii() && !out.contains('\\'), "{s:?} → {out:?}");
    assert!(
        !out.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{s:?} → {out:?}"
    );
    let base = url::Url::parse("https://analytics.example.com/").unwrap();
    let joined = base.join(&out).expect("a local path parses");
    assert_eq!(joined.origin(), base.origin(), "{s:?} → {out:?}");
});
