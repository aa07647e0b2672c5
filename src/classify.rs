//! Phase 1 of every request: decide what it is, the way Apache + PHP + Matomo would dispatch it.
//!
//! Invariant: a pure function over method, path, query and (for form posts to `index.php`) the
//! parsed body. No I/O, no session, no config beyond the prefix and `public_paths`.
//! The path is normalised like Apache does it (percent-decoding, dot segments, merged slashes) and
//! parameters are read like PHP ([`crate::php`]), never with a pattern over the raw URL.

use crate::php::{Params, Request};

/// What a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// One of unikgate's endpoints: the part after the prefix, without the leading slash.
    Own(String),
    /// `/.well-known/uns-verification.txt` (Unikname's domain check).
    UnsVerification,
    /// Tracker, opt-out, static assets, token-authenticated API: forwarded without a session.
    Public,
    /// Never forwarded (e.g. the effective `module` is `AutoLogin`).
    Forbidden(&'static str),
    /// Matomo's logout URL, which is unikgate's sign-out.
    Logout,
    /// The Matomo UI. `login_module` is true for Matomo's own `module=Login` pages.
    Ui { login_module: bool },
    /// Something PHP would not read the way it looks (too many variables, a NUL byte).
    BadRequest(&'static str),
}

/// The static configuration the classifier needs.
#[derive(Debug, Clone)]
pub struct Classifier {
    prefix: String,
    public_paths: Vec<String>,
}

const ASSET_DIRS: &[&str] = &["/plugins/", "/libs/", "/node_modules/", "/misc/"];
const ASSET_EXTS: &[&str] = &[
    "css", "js", "map", "png", "gif", "jpg", "jpeg", "svg", "ico", "webp", "woff", "woff2", "ttf",
    "eot", "otf", "json", "txt", "mp3", "mp4", "webm",
];
const PUBLIC_FILES: &[&str] = &[
    "/matomo.php",
    "/piwik.php",
    "/matomo.js",
    "/piwik.js",
    "/robots.txt",
    "/plugins/PrivacyManager/javascripts/optOut.js",
];
pub const UNS_VERIFICATION_PATH: &str = "/.well-known/uns-verification.txt";

/// Normalises a raw request path like Apache: decodes `%xx` (but keeps `%2F` as a literal that
/// cannot split segments), resolves `.` and `..`, merges repeated slashes.
/// Returns None for paths Apache would refuse (a NUL byte, not starting with `/`).
pub fn normalize_path(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        // Decode everything but an encoded slash (Apache answers 404 for those by default).
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(
            &seg.replace("%2F", "\u{1}").replace("%2f", "\u{1}"),
        )
        .collect();
        if decoded.contains(&0) {
            return None;
        }
        let s = String::from_utf8_lossy(&decoded).replace('\u{1}', "%2F");
        match s.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (raw.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    Some(out)
}

/// The PHP script a normalised path runs, if any: `/index.php/extra` runs `/index.php`,
/// `/` runs `/index.php` (DirectoryIndex).
pub fn php_script(path: &str) -> Option<&str> {
    if path == "/" {
        return Some("/index.php");
    }
    let mut end = 0;
    for seg in path[1..].split('/') {
        end += 1 + seg.len();
        if seg.ends_with(".php") {
            return Some(&path[..end]);
        }
    }
    None
}

/// What the proxy must do with a request body before classifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// Classify from the URL alone; stream the body.
    Stream,
    /// Read the form body (bounded), classify with it, then forward it.
    ReadForm,
    /// Refuse (400): a multipart post to index.php must carry `module` in the query.
    RefuseMultipart,
}

fn is_multipart(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
    })
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    })
}

impl Classifier {
    pub fn new(prefix: &str, public_paths: &[String]) -> Self {
        Classifier {
            prefix: prefix.to_string(),
            public_paths: public_paths.to_vec(),
        }
    }

    /// What must happen with the body before this request can be classified: PHP reads a
    /// form body's parameters where the query lacks them, so those must be read (bounded) first.
    /// A multipart body to `index.php` without `module` in the query is refused: PHP would read
    /// `module` from it, and unikgate does not parse multipart bodies.
    pub fn body_rule(
        &self,
        method: &http::Method,
        raw_path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
    ) -> BodyRule {
        if method != http::Method::POST {
            return BodyRule::Stream;
        }
        let Some(path) = normalize_path(raw_path) else {
            return BodyRule::Stream;
        };
        if php_script(&path) != Some("/index.php") {
            return BodyRule::Stream;
        }
        let q = Params::parse(query.unwrap_or(""));
        if is_form(content_type) {
            if ["module", "action", "token_auth"]
                .iter()
                .any(|k| q.get(k).is_none())
            {
                return BodyRule::ReadForm;
            }
        } else if is_multipart(content_type) && q.get("module").is_none() {
            return BodyRule::RefuseMultipart;
        }
        BodyRule::Stream
    }

    /// Classifies a request. `body` is the parsed form body when [`Self::needs_body`] said so.
    pub fn classify(&self, raw_path: &str, query: Option<&str>, body: Option<&Params>) -> Class {
        let Some(path) = normalize_path(raw_path) else {
            return Class::BadRequest("the path is not valid");
        };
        if let Some(rest) = path.strip_prefix(&self.prefix) {
            if rest.is_empty() || rest == "/" {
                return Class::Own(String::new());
            }
            if let Some(rest) = rest.strip_prefix('/') {
                return Class::Own(rest.to_string());
            }
        }
        if path == UNS_VERIFICATION_PATH {
            return Class::UnsVerification;
        }
        let script = php_script(&path);
        if script.is_none() && self.is_public_file(&path) {
            return Class::Public;
        }
        if script.is_some_and(|s| s == "/matomo.php" || s == "/piwik.php" || s.starts_with("/js/"))
        {
            return Class::Public;
        }
        if self.is_configured_public(&path) {
            return Class::Public;
        }
        if script != Some("/index.php") {
            return Class::Ui {
                login_module: false,
            };
        }
        let get = Params::parse(query.unwrap_or(""));
        if get.too_many || body.is_some_and(|b| b.too_many) {
            return Class::BadRequest("the request has more parameters than PHP reads");
        }
        let req = Request {
            get: &get,
            post: body,
        };
        let module = req.string("module").unwrap_or("");
        let action = req.string("action").unwrap_or("");
        if module.eq_ignore_ascii_case("autologin") {
            return Class::Forbidden("the AutoLogin module is only for unikgate itself");
        }
        if module.eq_ignore_ascii_case("unikgate") {
            return Class::Forbidden("the UnikGate module is only for unikgate itself");
        }
        match module {
            "CoreAdminHome" if action == "optOut" || action == "optOutJS" => Class::Public,
            "API" | "Widgetize" if req.string("token_auth").is_some_and(|t| !t.is_empty()) => {
                Class::Public
            }
            "Login" if action == "logout" => Class::Logout,
            "Login" => Class::Ui { login_module: true },
            _ => Class::Ui {
                login_module: false,
            },
        }
    }

    fn is_public_file(&self, path: &str) -> bool {
        if PUBLIC_FILES.contains(&path) || path.starts_with("/js/") {
            return true;
        }
        if ASSET_DIRS.iter().any(|d| path.starts_with(d)) {
            let name = path.rsplit('/').next().unwrap_or("");
            if let Some((_, ext)) = name.rsplit_once('.') {
                return ASSET_EXTS.contains(&ext.to_ascii_lowercase().as_str());
            }
        }
        false
    }

    fn is_configured_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Classifier {
        Classifier::new("/_unikgate", &["/custom/".to_string()])
    }

    fn ui() -> Class {
        Class::Ui {
            login_module: false,
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_path("//index.php").as_deref(), Some("/index.php"));
        assert_eq!(
            normalize_path("/a/../index.php").as_deref(),
            Some("/index.php")
        );
        assert_eq!(
            normalize_path("/%2e%2e/index.php").as_deref(),
            Some("/index.php")
        );
        assert_eq!(normalize_path("/js/./x/").as_deref(), Some("/js/x/"));
        assert_eq!(normalize_path("/a%00b"), None);
        assert_eq!(
            normalize_path("/a%2F..%2Fb").as_deref(),
            Some("/a%2F..%2Fb")
        );
    }

    #[test]
    fn autologin_refused_in_every_spelling() {
        let f = |q: &str| c().classify("/index.php", Some(q), None);
        for q in [
            "module=AutoLogin&action=index",
            "module=autologin",
            "module=AUTOLOGIN",
            "module=Login&module=AutoLogin",
            "module=Auto%4Cogin",
            "mod%75le=AutoLogin",
            "module=AutoLogin&module[=x",
        ] {
            assert!(matches!(f(q), Class::Forbidden(_)), "{q}");
        }
        assert_eq!(f("module[]=AutoLogin"), ui());
        assert_eq!(
            f("module=AutoLogin&module=Login"),
            Class::Ui { login_module: true }
        );
        let body = Params::parse("module=AutoLogin");
        assert!(matches!(
            c().classify("/", None, Some(&body)),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            c().classify("/index.php/x", Some("module=AutoLogin"), None),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            c().classify("//index.php", Some("module=AutoLogin"), None),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            c().classify("/%69ndex.php", Some("module=AutoLogin"), None),
            Class::Forbidden(_)
        ));
    }

    #[test]
    fn public_traffic() {
        for p in [
            "/matomo.php",
            "/piwik.php",
            "/matomo.js",
            "/piwik.js",
            "/js/",
            "/js/tracker.php",
            "/js/container_abc.js",
            "/robots.txt",
            "/plugins/CoreHome/images/favicon.png",
            "/plugins/PrivacyManager/javascripts/optOut.js",
            "/libs/jquery/jquery.js",
            "/custom/thing",
        ] {
            assert_eq!(c().classify(p, None, None), Class::Public, "{p}");
        }
        assert_eq!(
            c().classify(
                "/index.php",
                Some("module=CoreAdminHome&action=optOut"),
                None
            ),
            Class::Public
        );
        assert_eq!(
            c().classify(
                "/index.php",
                Some("module=API&method=X&token_auth=abc"),
                None
            ),
            Class::Public
        );
        let body = Params::parse("token_auth=abc&force_api_session=1");
        assert_eq!(
            c().classify("/index.php", Some("module=API&method=X"), Some(&body)),
            Class::Public
        );
        // GET wins: an empty token in the query hides the body's.
        assert_eq!(
            c().classify("/index.php", Some("module=API&token_auth="), Some(&body)),
            ui()
        );
    }

    #[test]
    fn not_public() {
        assert_eq!(c().classify("/plugins/X/Controller.php", None, None), ui());
        assert_eq!(c().classify("/plugins/X/a.php/b.css", None, None), ui());
        assert_eq!(
            c().classify("/index.php", Some("module=API&method=X"), None),
            ui()
        );
        assert_eq!(
            c().classify("/index.php", Some("module=API&token_auth[]=x"), None),
            ui()
        );
        assert_eq!(c().classify("/config/config.ini.php", None, None), ui());
        assert_eq!(
            c().classify("/", Some("module=CoreHome&action=index&idSite=1"), None),
            ui()
        );
        assert_eq!(
            c().classify("/index.php", Some("module=Login&action=logout"), None),
            Class::Logout
        );
    }

    #[test]
    fn own_endpoints() {
        assert_eq!(
            c().classify("/_unikgate/sign_in", Some("rd=/"), None),
            Class::Own("sign_in".into())
        );
        assert_eq!(
            c().classify("//_unikgate/./callback", None, None),
            Class::Own("callback".into())
        );
        assert_eq!(c().classify("/_unikgatex", None, None), ui());
        assert_eq!(
            c().classify(UNS_VERIFICATION_PATH, None, None),
            Class::UnsVerification
        );
    }

    #[test]
    fn body_rule_only_for_index_forms() {
        let m = http::Method::POST;
        let form = Some("application/x-www-form-urlencoded; charset=UTF-8");
        let r = |path: &str, q: Option<&str>, ct: Option<&str>| c().body_rule(&m, path, q, ct);
        assert_eq!(
            r("/index.php", Some("module=API"), form),
            BodyRule::ReadForm
        );
        assert_eq!(
            r("/index.php", Some("module=API&action=a&token_auth=x"), form),
            BodyRule::Stream
        );
        assert_eq!(r("/matomo.php", None, form), BodyRule::Stream);
        assert_eq!(
            c().body_rule(&http::Method::GET, "/index.php", None, form),
            BodyRule::Stream
        );
        assert_eq!(
            r("/index.php", None, Some("application/json")),
            BodyRule::Stream
        );
        assert_eq!(
            r("/", None, Some("multipart/form-data; boundary=x")),
            BodyRule::RefuseMultipart
        );
        assert_eq!(
            r(
                "/",
                Some("module=X"),
                Some("multipart/form-data; boundary=x")
            ),
            BodyRule::Stream
        );
    }
}
