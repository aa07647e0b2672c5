//! The first decision on every request: what it is, the way Apache + PHP + Matomo would dispatch it.
//!
//! Invariant: a pure function over method, path, query and (for form posts to `index.php`) the
//! parsed body. No I/O, no session, no config beyond the prefix and `public_paths`.
//! The path is normalised like Apache does it (percent-decoding, dot segments, merged slashes) and
//! parameters are read like PHP ([`crate::request::php`]), never with a pattern over the raw URL.

use std::borrow::Cow;

use crate::request::php::{matomo_decode, Params, Request};

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
    /// The Matomo UI (Matomo's own `module=Login` pages included: never public).
    Ui,
    /// Something PHP would not read the way it looks (too many variables, a NUL byte).
    BadRequest(&'static str),
    /// A path outside `server.public_url`'s path, where Matomo is not (404).
    OutsideBase,
}

/// The static configuration the classifier needs.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The public URL's path (`""`, or `"/analytics"`): Matomo's paths are below it.
    base: String,
    /// unikgate's endpoints, in full (under `base`).
    prefix: String,
    public_paths: Vec<String>,
    /// `matomo.password_login`: when off, a request that is not signed in never carries a Matomo
    /// password to Matomo.
    password_login: bool,
}

/// Modules whose actions run another controller or API method named by a parameter, or read
/// their target from the body: a form body is read before classifying a post to them.
const DISPATCHERS: &[&str] = &["API", "Widgetize", "CoreHome", "PagePerformance"];
/// `Proxy` actions that serve Matomo's compiled assets (plugins/Proxy/Controller.php, 5.1.2:
/// getCss, getCoreJs, getNonCoreJs, getUmdJs, getPluginUmdJs), compared exactly: another case
/// (which PHP would also run) is only stricter, as the UI.
const PROXY_ASSETS: &[&str] = &[
    "getCss",
    "getCoreJs",
    "getNonCoreJs",
    "getUmdJs",
    "getPluginUmdJs",
];

/// True when `Authorization` carries a token as Matomo 5.4 and later read it
/// (core/Request/AuthenticationToken.php): `$_SERVER['HTTP_AUTHORIZATION']`, that is the first
/// header's value (Apache joins several with ", "), starting with exactly `Bearer ` and more.
pub fn is_bearer(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().len() > 7 && v.as_bytes().starts_with(b"Bearer "))
}

/// How many controllers one request may chain (Widgetize → showInContext → …) before unikgate
/// stops following and refuses.
const MAX_CHAIN: usize = 4;

fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|m| name.trim().eq_ignore_ascii_case(m))
}

/// A parameter that carries a Matomo password (`password`, `passwordConfirmation`,
/// `form_password`, `passwordBis`, `confirmPassword`, `mtmpasswordconfirm`, …).
fn is_password_param(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// The module part of an API method name (`UsersManager.getUsers` → `UsersManager`).
fn api_module(method: &str) -> &str {
    method.trim().split('.').next().unwrap_or("")
}

/// What a request makes Matomo run, followed through Matomo's dispatchers.
struct Dispatch<'a> {
    /// The controllers, outermost first: (module, action), as Matomo reads them.
    controllers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The API methods named anywhere (`method`, `urls[]` of `API.getBulkRequest`, `apiMethod`).
    methods: Vec<String>,
    /// Parameter names of the nested API requests (`urls[]` entries).
    nested_names: Vec<String>,
    /// The chain was longer than [`MAX_CHAIN`].
    too_deep: bool,
}

/// Follows `Widgetize.iframe` (`moduleToWidgetize` / `actionToWidgetize`) and
/// `CoreHome.showInContext` (`moduleToLoad` / `actionToLoad`), and collects the API methods a
/// request names (Matomo 5.1.2: plugins/Widgetize/Controller.php, plugins/CoreHome/Controller.php,
/// plugins/API/API.php getBulkRequest, plugins/PagePerformance/Controller.php; docs/SECURITY.md).
/// Actions are compared without case (a superset of what Matomo dispatches).
fn dispatch<'a>(req: &'a Request<'a>) -> Dispatch<'a> {
    let module = req.matomo("module").unwrap_or(Cow::Borrowed("CoreHome"));
    let action = req.matomo("action").unwrap_or(Cow::Borrowed(""));
    let mut d = Dispatch {
        controllers: vec![(module, action)],
        methods: Vec::new(),
        nested_names: Vec::new(),
        too_deep: false,
    };
    loop {
        let (m, a) = d.controllers[d.controllers.len() - 1].clone();
        let next = if m.eq_ignore_ascii_case("Widgetize") && a.eq_ignore_ascii_case("iframe") {
            req.matomo("moduleToWidgetize")
                .map(|m| (m, req.matomo("actionToWidgetize").unwrap_or_default()))
        } else if m.eq_ignore_ascii_case("CoreHome") && a.eq_ignore_ascii_case("showInContext") {
            req.matomo("moduleToLoad").map(|m| {
                (
                    m,
                    req.matomo("actionToLoad").unwrap_or(Cow::Borrowed("index")),
                )
            })
        } else {
            None
        };
        let Some(next) = next else { break };
        if d.controllers.len() >= MAX_CHAIN {
            d.too_deep = true;
            break;
        }
        d.controllers.push(next);
    }
    let names_api = d
        .controllers
        .iter()
        .any(|(m, _)| m.eq_ignore_ascii_case("API"));
    if names_api {
        if let Some(method) = req.matomo("method") {
            d.methods.push(method.into_owned());
        }
        // API.getBulkRequest runs every entry of urls[] as an API request of its own.
        let bulk: Vec<&str> = req
            .get
            .all("urls")
            .into_iter()
            .chain(req.post.into_iter().flat_map(|p| {
                if req.get.get("urls").is_some() {
                    Vec::new()
                } else {
                    p.all("urls")
                }
            }))
            .collect();
        for entry in bulk {
            // Matomo parses the entry as it came (`@unsanitized`); reading it with its HTML
            // entities decoded too only adds names to check.
            let decoded = matomo_decode(entry);
            for nested in [
                Params::from_query_string(entry),
                Params::parse(&decoded),
                Params::from_query_string(&decoded),
            ] {
                if let Some(m) = nested.get("method").and_then(|v| v.as_str()) {
                    d.methods.push(matomo_decode(m).into_owned());
                }
                d.nested_names.extend(nested.names().map(str::to_string));
            }
        }
    }
    if d.controllers
        .iter()
        .any(|(m, _)| m.eq_ignore_ascii_case("PagePerformance"))
    {
        if let Some(m) = req.matomo("apiMethod") {
            d.methods.push(m.into_owned());
        }
    }
    d
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
    if already_normal(raw) {
        return Some(raw.to_string());
    }
    normalize_slow(raw)
}

/// True when [`normalize_path`] would give `raw` back (the usual case, answered without
/// decoding or allocating per segment): nothing percent-encoded, no NUL, no empty, `.` or `..`
/// segment (a trailing `/` is kept).
fn already_normal(raw: &str) -> bool {
    if raw.contains('%') || raw.contains('\0') {
        return false;
    }
    if raw == "/" {
        return true;
    }
    let body = &raw[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    !body.is_empty()
        && body
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn normalize_slow(raw: &str) -> Option<String> {
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
    /// `prefix` in full (under `base`); `public_paths` as Matomo sees them, below `base`.
    pub fn new(base: &str, prefix: &str, public_paths: &[String], password_login: bool) -> Self {
        Classifier {
            base: base.to_string(),
            prefix: prefix.to_string(),
            public_paths: public_paths.to_vec(),
            password_login,
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
        let Some(path) = self.below_base(&path) else {
            return BodyRule::Stream;
        };
        if php_script(path) != Some("/index.php") {
            return BodyRule::Stream;
        }
        let q = Params::parse(query.unwrap_or(""));
        let req = Request {
            get: &q,
            post: None,
        };
        // The body can only change what Matomo runs when the query names no module, or names a
        // module that reads its target, its method or its token from the request (or Login, whose
        // logout action is unikgate's sign-out).
        let decided_by_query = req.matomo("module").is_some_and(|m| {
            !is_one_of(&m, DISPATCHERS) && !m.trim().eq_ignore_ascii_case("Login")
        });
        if is_form(content_type) {
            if !decided_by_query {
                return BodyRule::ReadForm;
            }
        } else if is_multipart(content_type) && !decided_by_query {
            return BodyRule::RefuseMultipart;
        }
        BodyRule::Stream
    }

    /// The path as Matomo's own below the base (`/analytics/index.php` → `/index.php`,
    /// `/analytics` → `/`), or `None` outside it. At the root, the path itself.
    fn below_base<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.base.is_empty() {
            return Some(path);
        }
        match path.strip_prefix(self.base.as_str()) {
            Some("") => Some("/"),
            Some(rest) if rest.starts_with('/') => Some(rest),
            _ => None,
        }
    }

    /// Classifies a request without an `Authorization: Bearer` header: see
    /// [`Classifier::classify_with`].
    pub fn classify(&self, raw_path: &str, query: Option<&str>, body: Option<&Params>) -> Class {
        self.classify_with(raw_path, query, body, || false)
    }

    /// Classifies a request. `body` is the parsed form body when [`Self::body_rule`] said so.
    /// `bearer`: whether the request carries a token as `Authorization: Bearer <token>` the way
    /// Matomo (5.4 and later, [`is_bearer`]) reads it; to API and Widgetize it counts as
    /// `token_auth`. Asked only for those (the UI's hot path never looks the header up).
    pub fn classify_with(
        &self,
        raw_path: &str,
        query: Option<&str>,
        body: Option<&Params>,
        bearer: impl Fn() -> bool,
    ) -> Class {
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
        let Some(path) = self.below_base(&path) else {
            return Class::OutsideBase;
        };
        let script = php_script(path);
        if script.is_none() && self.is_public_file(path) {
            return Class::Public;
        }
        if script.is_some_and(|s| s == "/matomo.php" || s == "/piwik.php" || s.starts_with("/js/"))
        {
            return Class::Public;
        }
        if self.is_configured_public(path) {
            return Class::Public;
        }
        if script != Some("/index.php") {
            return Class::Ui;
        }
        let get = Params::parse(query.unwrap_or(""));
        if get.too_many || body.is_some_and(|b| b.too_many) {
            return Class::BadRequest("the request has more parameters than PHP reads");
        }
        let req = Request {
            get: &get,
            post: body,
        };
        let d = dispatch(&req);
        if d.too_deep {
            return Class::Forbidden("the request chains more controllers than unikgate follows");
        }
        // The one page of the UnikGate plugin a person may open: its superusers' page (Matomo
        // checks superuser access; it only shows, its data comes from unikgate's own API). Only
        // as the request's one controller, with no API method, and exactly that action (PHP
        // method names ignore case).
        let admin_page = d.controllers.len() == 1
            && d.methods.is_empty()
            && d.controllers[0].1.eq_ignore_ascii_case("admin");
        let named = d
            .controllers
            .iter()
            .map(|(m, _)| m.as_ref())
            .chain(d.methods.iter().map(|m| api_module(m)));
        for name in named {
            if is_one_of(name, &["AutoLogin"]) {
                return Class::Forbidden("the AutoLogin plugin is only for unikgate itself");
            }
            if is_one_of(name, &["UnikGate"]) && !admin_page {
                return Class::Forbidden("the UnikGate plugin is only for unikgate itself");
            }
        }
        let (module, action) = (&d.controllers[0].0, &d.controllers[0].1);
        let reaches_login = d
            .controllers
            .iter()
            .any(|(m, _)| m.trim().eq_ignore_ascii_case("Login"));
        // With password_login off, nothing public carries a Matomo password (nor asks for a
        // token made from one): not the token-authenticated API and Widgetize, and not the
        // opt-out page either, whose form never has one (a password there could only be aimed at
        // Matomo's login, rendered where an action throws NoAccessException).
        let carries_password = || {
            !self.password_login
                && (req.names().any(is_password_param)
                    || d.nested_names.iter().any(|n| is_password_param(n))
                    || d.methods.iter().any(|m| {
                        m.trim()
                            .rsplit('.')
                            .next()
                            .is_some_and(|f| f.eq_ignore_ascii_case("createAppSpecificTokenAuth"))
                    }))
        };
        const NO_PASSWORD: &str =
            "a Matomo password is accepted only after an @unikname sign-in here";
        match module.as_ref() {
            "CoreAdminHome" if action == "optOut" || action == "optOutJS" => {
                if carries_password() {
                    return Class::Forbidden(NO_PASSWORD);
                }
                Class::Public
            }
            // The compiled script and style bundles (what every page, the login page and a
            // Widgetize iframe load; since 5.10 widgets render from them): the same for
            // everybody, served by Matomo without an access check.
            "Proxy" if d.controllers.len() == 1 && PROXY_ASSETS.contains(&action.as_ref()) => {
                if carries_password() {
                    return Class::Forbidden(NO_PASSWORD);
                }
                Class::Public
            }
            "API" | "Widgetize"
                if req.string("token_auth").is_some_and(|t| !t.is_empty()) || bearer() =>
            {
                if reaches_login {
                    // Matomo's Login module is never public, in any spelling or chain.
                    return Class::Ui;
                }
                if carries_password() {
                    return Class::Forbidden(NO_PASSWORD);
                }
                Class::Public
            }
            "Login" if action == "logout" => Class::Logout,
            _ => Class::Ui,
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

    #[test]
    fn under_a_path_matomo_is_read_below_it_and_nothing_outside_is_served() {
        let c = Classifier::new("/analytics", "/analytics/_unikgate", &[], false);
        assert_eq!(
            c.classify("/analytics/_unikgate/sign_in", None, None),
            Class::Own("sign_in".into())
        );
        assert_eq!(
            c.classify("/analytics/matomo.php", None, None),
            Class::Public
        );
        assert_eq!(
            c.classify("/analytics/matomo.js", None, None),
            Class::Public
        );
        assert_eq!(c.classify("/analytics/", None, None), Class::Ui);
        assert_eq!(c.classify("/analytics", None, None), Class::Ui);
        assert_eq!(
            c.classify(
                "/analytics/index.php",
                Some("module=Login&action=logout"),
                None
            ),
            Class::Logout
        );
        assert_eq!(
            c.classify("/.well-known/uns-verification.txt", None, None),
            Class::UnsVerification
        );
        for outside in [
            "/",
            "/matomo.php",
            "/index.php",
            "/analyticsX/matomo.php",
            "/_unikgate/sign_in",
        ] {
            assert_eq!(
                c.classify(outside, None, None),
                Class::OutsideBase,
                "{outside}"
            );
        }
        // Dot segments cannot climb out and back in.
        assert_eq!(
            c.classify("/analytics/../matomo.php", None, None),
            Class::OutsideBase
        );
    }

    fn c() -> Classifier {
        Classifier::new("", "/_unikgate", &["/custom/".to_string()], false)
    }

    fn ui() -> Class {
        Class::Ui
    }

    #[test]
    fn the_fast_path_only_answers_what_normalising_would_give_back() {
        let paths = [
            "/",
            "//",
            "/index.php",
            "/index.php/",
            "/index.php//",
            "/a/b/c.php",
            "/a//b",
            "/./a",
            "/a/.",
            "/a/..",
            "/../index.php",
            "/..",
            "/.",
            "/a/./b/",
            "/%2e%2e/x",
            "/a%2Fb",
            "/é/ü.php",
            "/a/b/",
            "/a b",
            "/.hidden/x",
            "/a..b/",
            "/...",
            "/a/.../",
        ];
        let mut fast = 0;
        for p in paths {
            let slow = normalize_slow(p);
            if already_normal(p) {
                fast += 1;
                assert_eq!(
                    slow.as_deref(),
                    Some(p),
                    "{p}: the fast path would be wrong"
                );
            }
            assert_eq!(normalize_path(p), slow, "{p}");
        }
        // Most of the list takes the fast path; the rest is decoded.
        assert_eq!(fast, 11);
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
        assert_eq!(f("module=AutoLogin&module=Login"), Class::Ui);
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
    fn bearer_tokens_are_token_auth_to_the_api_and_widgetize_only() {
        let b = |q: &str| c().classify_with("/index.php", Some(q), None, || true);
        assert_eq!(
            b("module=API&method=VisitsSummary.get&idSite=1"),
            Class::Public
        );
        assert_eq!(
            b("module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&actionToWidgetize=getEvolutionGraph"),
            Class::Public
        );
        // The same rules as token_auth: the UI, Login, the plugins and passwords.
        assert_eq!(b("module=CoreHome&action=index"), ui());
        assert_eq!(
            b("module=Widgetize&action=iframe&moduleToWidgetize=Login&actionToWidgetize=login"),
            Class::Ui
        );
        assert!(matches!(
            b("module=API&method=AutoLogin.getUsers"),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            b("module=API&method=API.getBulkRequest&urls[0]=method%3DUnikGate.x"),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            b("module=API&method=UsersManager.createAppSpecificTokenAuth&userLogin=a"),
            Class::Forbidden(_)
        ));
        assert!(matches!(
            b("module=API&method=X.y&passwordConfirmation=p"),
            Class::Forbidden(_)
        ));
        assert_eq!(
            c().classify(
                "/index.php",
                Some("module=API&method=VisitsSummary.get"),
                None
            ),
            ui()
        );
        let h = |v: &[&str]| {
            let mut m = http::HeaderMap::new();
            for v in v {
                m.append(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            is_bearer(&m)
        };
        assert!(h(&["Bearer abc"]));
        assert!(h(&["Bearer abc", "Basic x"]));
        for no in [
            &[][..],
            &["bearer abc"],
            &["Bearer "],
            &["Bearerabc"],
            &["Basic x", "Bearer abc"],
            &[" Bearer abc"],
        ] {
            assert!(!h(no), "{no:?}");
        }
    }

    #[test]
    fn matomos_asset_bundles_are_public() {
        for a in [
            "getCss",
            "getCoreJs",
            "getNonCoreJs",
            "getUmdJs",
            "getPluginUmdJs",
        ] {
            assert_eq!(
                c().classify(
                    "/index.php",
                    Some(&format!("module=Proxy&action={a}&cb=1")),
                    None
                ),
                Class::Public,
                "{a}"
            );
        }
        for q in [
            "module=Proxy&action=redirect&url=x",
            "module=Proxy&action=GETCSS",
            "module=Proxy",
        ] {
            assert_eq!(c().classify("/index.php", Some(q), None), ui(), "{q}");
        }
        assert!(matches!(
            c().classify(
                "/index.php",
                Some("module=Proxy&action=getCss&form_password=x"),
                None
            ),
            Class::Forbidden(_)
        ));
    }

    #[test]
    fn the_controller_matomo_runs_decides() {
        let f = |q: &str| c().classify("/index.php", Some(q), None);
        // The plugin's superusers' page is a Matomo page like any other.
        for q in [
            "module=UnikGate&action=admin",
            "module=unikgate&action=ADMIN&idSite=1",
        ] {
            assert_eq!(f(q), Class::Ui, "{q}");
        }
        let fb = |q: &str, b: &str| c().classify("/index.php", Some(q), Some(&Params::parse(b)));
        let forbidden = |class: Class| matches!(class, Class::Forbidden(_));
        let w = "idSite=1&period=day&date=today&token_auth=anonymous";
        for q in [
            format!("module=Widgetize&action=iframe&moduleToWidgetize=AutoLogin&actionToWidgetize=index&{w}"),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=unikgate&actionToWidgetize=whoami&{w}"),
            format!("module=Widgetize&action=IFRAME&moduleToWidgetize=AutoLogin&{w}"),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=Auto%26%2376%3Bogin&{w}"),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=AutoLogin%00&{w}"),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=Login&moduleToWidgetize=AutoLogin&{w}"),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=CoreHome&actionToWidgetize=showInContext&moduleToLoad=AutoLogin&{w}"),
            "module=CoreHome&action=showInContext&moduleToLoad=UnikGate&actionToLoad=whoami".into(),
            "module=Auto%26%2376%3Bogin".into(),
            "module=Auto%26%23x4C%3Bogin".into(),
            "module=UnikGate%00".into(),
            "module=UnikGate&action=login".into(),
            "module=UnikGate&action=whoami".into(),
            "module=UnikGate&action=admin%20".into(),
            "module=API&method=UnikGate.admin".into(),
            format!("module=Widgetize&action=iframe&moduleToWidgetize=UnikGate&actionToWidgetize=admin&{w}"),
            "module=CoreHome&action=showInContext&moduleToLoad=UnikGate&actionToLoad=admin".into(),
            format!("module=API&method=AutoLogin.setSuperUserAccess&{w}"),
            format!("module=API&method=%20autologin.getUsers&{w}"),
            format!("module=API&method=API.getBulkRequest&urls[0]=method%3DAutoLogin.setSuperUserAccess&{w}"),
            format!("module=API&method=API.getBulkRequest&urls[0]=method%253DAutoLogin.setSuperUserAccess&{w}"),
            format!("module=API&method=API.getBulkRequest&urls[]=method%3DAuto%2526%252376%253Bogin.x&{w}"),
            "module=PagePerformance&action=indexPagePerformance&apiMethod=AutoLogin.getUsers".into(),
        ] {
            assert!(forbidden(f(&q)), "{q} → {:?}", f(&q));
        }
        // From the body too (GET first: the query's own values win).
        assert!(forbidden(fb(
            &format!("module=Widgetize&action=iframe&{w}"),
            "moduleToWidgetize=AutoLogin&actionToWidgetize=index"
        )));
        assert_eq!(
            fb(
                &format!("module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&{w}"),
                "moduleToWidgetize=AutoLogin"
            ),
            Class::Public
        );
        // Matomo's Login module is never public, through Widgetize or showInContext.
        assert_eq!(
            f(&format!("module=Widgetize&action=iframe&moduleToWidgetize=Login&actionToWidgetize=login&{w}")),
            Class::Ui
        );
        assert_eq!(
            f("module=CoreHome&action=showInContext&moduleToLoad=Login"),
            Class::Ui
        );
        // Public widgets and ordinary chains stay as they were.
        assert_eq!(
            f(&format!("module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&actionToWidgetize=getEvolutionGraph&{w}")),
            Class::Public
        );
        assert_eq!(
            f("module=CoreHome&action=showInContext&moduleToLoad=Actions"),
            ui()
        );
        // Chains longer than unikgate follows are refused.
        assert!(forbidden(f(&format!(
            "module=Widgetize&action=iframe&moduleToWidgetize=CoreHome&actionToWidgetize=showInContext&moduleToLoad=Widgetize&actionToLoad=iframe&{w}"
        ))));
    }

    #[test]
    fn no_password_on_the_public_path_without_password_login() {
        let strict = c();
        let open = Classifier::new("", "/_unikgate", &[], true);
        let w = "format=json&token_auth=anonymous";
        let cases = [
            (
                format!("module=API&method=UsersManager.createAppSpecificTokenAuth&{w}"),
                "userLogin=alice&passwordConfirmation=x",
            ),
            (
                format!("module=API&method=UsersManager.createAppSpecificTokenAuth&{w}"),
                "userLogin=alice",
            ),
            (
                format!("module=API&method=API.getBulkRequest&{w}"),
                "urls[0]=method%3DUsersManager.createAppSpecificTokenAuth%26userLogin%3Dalice",
            ),
            (
                format!("module=API&method=API.getBulkRequest&{w}"),
                "urls[0]=method%253DX.y%2526passwordConfirmation%253Dx",
            ),
            (
                format!("module=API&method=UsersManager.updateUser&{w}"),
                "pass%77ordConfirmation=x",
            ),
            (
                format!("module=Widgetize&action=iframe&moduleToWidgetize=UsersManager&{w}"),
                "form_login=alice&form_password=x",
            ),
            // The opt-out page is public, and never carries a password (found by the fuzzer:
            // a name PHP cuts at its NUL byte, `password\0module`).
            (
                "module=CoreAdminHome&action=optOut".to_string(),
                "form_login=alice&form_password=x",
            ),
            (
                "module=CoreAdminHome&action=optOutJS".to_string(),
                "password%00module=x",
            ),
        ];
        for (q, body) in &cases {
            let b = Params::parse(body);
            assert!(
                matches!(
                    strict.classify("/index.php", Some(q), Some(&b)),
                    Class::Forbidden(_)
                ),
                "{q} {body}"
            );
            assert_eq!(
                open.classify("/index.php", Some(q), Some(&b)),
                Class::Public,
                "{q} {body}"
            );
        }
        // A real token with an ordinary method passes untouched.
        assert_eq!(
            strict.classify(
                "/index.php",
                Some("module=API&method=UsersManager.getUsers&token_auth=abc"),
                None
            ),
            Class::Public
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
        // API and the dispatchers may take their method, target or password from the body.
        assert_eq!(
            r("/index.php", Some("module=API&action=a&token_auth=x"), form),
            BodyRule::ReadForm
        );
        assert_eq!(
            r("/index.php", Some("module=Widgetize&action=iframe"), form),
            BodyRule::ReadForm
        );
        assert_eq!(
            r("/index.php", Some("module=UsersManager&action=x"), form),
            BodyRule::Stream
        );
        assert_eq!(
            r("/index.php", Some("module=Login&action=x"), form),
            BodyRule::ReadForm
        );
        assert_eq!(
            r(
                "/index.php",
                Some("module=CoreHome&action=showInContext"),
                Some("multipart/form-data; boundary=x")
            ),
            BodyRule::RefuseMultipart
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
