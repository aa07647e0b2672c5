//! The request classifier never panics, and the properties that keep Matomo safe hold for any
//! input: an effective `module` of AutoLogin or UnikGate (any case, HTML entities and NUL bytes
//! read as Matomo reads them), directly or as Widgetize's `moduleToWidgetize` or CoreHome's
//! `moduleToLoad`, is never classified as anything but Forbidden (but the UnikGate plugin's
//! superusers' page, `module=UnikGate&action=admin`, which is a Matomo page, never public); a public request never carries a
//! password parameter (password_login off); classification is deterministic.
//! Input: path, query and body separated by NUL bytes; a path starting with `B` is classified as
//! carrying an `Authorization: Bearer` token (the rest of the path is the path).
#![no_main]
use libfuzzer_sys::fuzz_target;
use unikgate::request::classify::{BodyRule, Class, Classifier};
use unikgate::request::php::{Params, Request};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.splitn(3, '\0');
    let path = parts.next().unwrap_or("");
    let (path, bearer) = match path.strip_prefix('B') {
        Some(p) => (p, true),
        None => (path, false),
    };
    let query = parts.next();
    let body = parts.next();
    let c = Classifier::new("", "/_unikgate", &["/custom/".to_string()], false);
    let _ = c.body_rule(
        &http::Method::POST,
        path,
        query,
        Some("application/x-www-form-urlencoded"),
    );
    let body_params = body.map(Params::parse);
    let class = c.classify_with(path, query, body_params.as_ref(), || bearer);
    assert_eq!(
        class,
        c.classify_with(path, query, body_params.as_ref(), || bearer)
    );
    let get = Params::parse(query.unwrap_or(""));
    let req = Request {
        get: &get,
        post: body_params.as_ref(),
    };
    let is_index = unikgate::request::classify::normalize_path(path)
        .as_deref()
        .and_then(unikgate::request::classify::php_script)
        == Some("/index.php");
    let plugin = |name: &str| {
        req.matomo(name).is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("autologin") || m.eq_ignore_ascii_case("unikgate")
        })
    };
    let is = |name: &str, want: &str| {
        req.matomo(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    let autologin = plugin("module")
        || (is("module", "Widgetize") && is("action", "iframe") && plugin("moduleToWidgetize"))
        || (is("module", "CoreHome") && is("action", "showInContext") && plugin("moduleToLoad"));
    if class == Class::Public && is_index {
        assert!(
            !req.names()
                .any(|n| n.to_ascii_lowercase().contains("password")),
            "{path:?} {query:?} {body:?} is public with a password"
        );
    }
    // The UnikGate plugin's superusers' page (module UnikGate, action admin exactly, as PHP calls
    // methods): a Matomo page, never public; everything else of both plugins is forbidden.
    let admin_page = req
        .matomo("module")
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("unikgate"))
        && req
            .matomo("action")
            .is_some_and(|a| a.eq_ignore_ascii_case("admin"));
    if is_index && admin_page {
        assert!(
            matches!(class, Class::Ui | Class::Forbidden(_) | Class::BadRequest(_)),
            "{path:?} {query:?} {body:?} → {class:?}"
        );
    }
    let own_or_public_path = matches!(class, Class::Own(_) | Class::UnsVerification);
    if is_index
        && autologin
        && !admin_page
        && !own_or_public_path
        && !get.too_many
        && !body_params.as_ref().is_some_and(|b| b.too_many)
    {
        assert!(
            matches!(class, Class::Forbidden(_)),
            "{path:?} {query:?} {body:?} → {class:?}"
        );
    }
    let _ = BodyRule::Stream;
});
