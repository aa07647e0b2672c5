//! The `rd` (return-to) validator. Only same-origin relative paths below the public URL's path
//! survive; anything else becomes that path's home (`/`, or `/analytics/`). Every redirect unikgate answers is then written absolute, on the public origin, so even a
//! path that a browser might read oddly cannot leave the origin.
//!
//! Invariant: pure; the output is always a path starting with exactly one `/`.

/// Longest `rd` kept.
pub const MAX_RD_LEN: usize = 2048;

fn bad_chars(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || !c.is_ascii())
}

fn bad_start(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() != Some(&b'/') || matches!(b.get(1), Some(b'/') | Some(b'\\'))
}

/// Returns `rd` when it is a safe local path below `base` (the public URL's path, `""` at the
/// root), else `base` + `/`. `prefix` is unikgate's endpoint prefix (in full): returning there
/// would loop, so such paths also become the home.
pub fn safe_rd(rd: &str, base: &str, prefix: &str) -> String {
    let home = || format!("{base}/");
    if rd.is_empty() || rd.len() > MAX_RD_LEN || bad_chars(rd) || bad_start(rd) {
        return home();
    }
    // Percent-encoded forms of the same tricks (`/%2F%2Fevil`, `/%5Cevil`, double encoding).
    let mut level = rd.to_string();
    for _ in 0..4 {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&level).collect();
        let Ok(decoded) = String::from_utf8(decoded) else {
            return home();
        };
        if bad_chars(&decoded) || bad_start(&decoded) {
            return home();
        }
        if decoded == level {
            break;
        }
        level = decoded;
    }
    let path = level.split(['?', '#']).next().unwrap_or("");
    if let Some(normalized) = crate::request::classify::normalize_path(path) {
        if normalized == prefix || normalized.starts_with(&format!("{prefix}/")) {
            return home();
        }
        // Below the base both as written and as resolved: `/./analytics/x` and
        // `/analytics/../x` are refused alike.
        let below = |p: &str| p == base || p.starts_with(&format!("{base}/"));
        let written = rd.split(['?', '#']).next().unwrap_or("");
        let inside = base.is_empty() || (below(&normalized) && below(written));
        if !inside {
            return home();
        }
    } else {
        return home();
    }
    rd.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_a_path_only_paths_below_it_survive() {
        let (base, prefix) = ("/analytics", "/analytics/_unikgate");
        for ok in [
            "/analytics/",
            "/analytics",
            "/analytics/index.php?module=CoreHome&action=index",
        ] {
            assert_eq!(safe_rd(ok, base, prefix), ok);
        }
        for bad in [
            "/",
            "/index.php",
            "/analyticsX/index.php",
            "/analytics/../index.php",
            "/./analytics/&//",
            "/analytics/_unikgate/sign_in",
            "//evil.example/analytics/",
            "",
        ] {
            assert_eq!(safe_rd(bad, base, prefix), "/analytics/", "{bad:?}");
        }
    }

    #[test]
    fn keeps_local_paths() {
        for ok in [
            "/",
            "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday",
            "/index.php?a=%2F",
            "/x#frag",
        ] {
            assert_eq!(safe_rd(ok, "", "/_unikgate"), ok);
        }
    }

    #[test]
    fn drops_the_classics() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "https:evil.example",
            "/%2F%2Fevil.example",
            "/%252F%252Fevil.example",
            "/%5Cevil.example",
            "/\tevil",
            "/\nevil",
            " /evil",
            "evil.example",
            "@evil.example",
            "/_unikgate/sign_out",
            "/./_unikgate/start",
            "/\u{ff0f}evil",
        ] {
            assert_eq!(safe_rd(bad, "", "/_unikgate"), "/", "{bad:?}");
        }
    }
}
