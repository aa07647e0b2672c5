//! Request parameters read the way PHP fills `$_GET` / `$_POST` and Matomo's
//! `Common::getRequestVar` reads them: percent and `+` decoding, the last of duplicate keys wins,
//! `name[]=` / `name[k]=` make arrays, dots and spaces in names become `_`, and a key of the query
//! string hides the same key of the POST body.
//!
//! Invariant: pure functions over bytes; no I/O, no allocation proportional to anything but the
//! (already bounded) input.

use std::borrow::Cow;

/// PHP's default `max_input_vars`: PHP ignores variables past this count, so unikgate refuses
/// requests that have more (it could not know what PHP would keep).
pub const MAX_INPUT_VARS: usize = 1000;

/// The value PHP would see for one top-level name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhpValue {
    Str(String),
    /// `name[]=…` or `name[key]=…`: the values, in order.
    Array(Vec<String>),
}

impl PhpValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PhpValue::Str(s) => Some(s),
            PhpValue::Array(_) => None,
        }
    }
}

/// Parsed parameters of one source (query string or form body).
#[derive(Debug, Default, Clone)]
pub struct Params {
    /// (top-level name, value) in order of last assignment.
    entries: Vec<(String, PhpValue)>,
    pub too_many: bool,
}

fn decode(s: &str) -> Cow<'_, str> {
    // Bytes, not chars: the usual short parameter is scanned in a few instructions.
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Cow::Borrowed(s);
    }
    let plus = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&plus).collect();
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

/// `s.split(sep)` for an ASCII separator (always a character boundary), as a plain byte scan:
/// the usual query string's pieces are a few bytes long, shorter than a char searcher's set-up.
pub fn split_ascii(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Splits a decoded key into PHP's top-level name and whether it is an array assignment.
fn php_name(key: &str) -> Option<(String, bool)> {
    // The usual name (`module`, `idSite`): nothing PHP changes, taken as it is.
    if !key.is_empty() && !key.bytes().any(|b| matches!(b, b' ' | b'.' | b'[' | b'\0')) {
        return Some((key.to_owned(), false));
    }
    // PHP drops leading spaces of names, and stops at a NUL byte.
    let key = key.trim_start_matches(' ');
    let key = key.split('\0').next().unwrap_or("");
    if key.is_empty() {
        return None;
    }
    let (base, is_array) = match key.find('[') {
        Some(i) if key[i..].contains(']') && i > 0 => (&key[..i], true),
        _ => (key, false),
    };
    // In the top-level name, ' ', '.' and (when not opening an array) the first '[' become '_'.
    let mut name = String::with_capacity(base.len());
    let mut bracket_seen = false;
    for c in base.chars() {
        match c {
            ' ' | '.' => name.push('_'),
            '[' if !bracket_seen => {
                bracket_seen = true;
                name.push('_')
            }
            c => name.push(c),
        }
    }
    if name.is_empty() {
        return None;
    }
    Some((name, is_array))
}

impl Params {
    /// Parses `a=1&b=2` (a query string or an `application/x-www-form-urlencoded` body).
    pub fn parse(input: &str) -> Params {
        let mut p = Params::default();
        let mut count = 0usize;
        for pair in split_ascii(input, b'&') {
            if pair.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_INPUT_VARS {
                p.too_many = true;
                break;
            }
            let (k, v) = match pair.bytes().position(|b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, ""),
            };
            let Some((name, is_array)) = php_name(&decode(k)) else {
                continue;
            };
            let value = decode(v).into_owned();
            p.assign(name, is_array, value);
        }
        p
    }

    fn assign(&mut self, name: String, is_array: bool, value: String) {
        let pos = self.entries.iter().position(|(n, _)| *n == name);
        match (pos, is_array) {
            (Some(i), true) => match &mut self.entries[i].1 {
                PhpValue::Array(items) => items.push(value),
                slot => *slot = PhpValue::Array(vec![value]),
            },
            (Some(i), false) => self.entries[i].1 = PhpValue::Str(value),
            (None, true) => self.entries.push((name, PhpValue::Array(vec![value]))),
            (None, false) => self.entries.push((name, PhpValue::Str(value))),
        }
    }

    pub fn get(&self, name: &str) -> Option<&PhpValue> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every top-level name PHP would see.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `name` as a list: every element of an array, or the one string.
    pub fn all(&self, name: &str) -> Vec<&str> {
        match self.get(name) {
            Some(PhpValue::Str(s)) => vec![s.as_str()],
            Some(PhpValue::Array(items)) => items.iter().map(String::as_str).collect(),
            None => Vec::new(),
        }
    }

    /// What Matomo's `Request::fromQueryString` reads from a string (e.g. an entry of
    /// `API.getBulkRequest`'s `urls[]`): `parse_str`, or, when that yields one name with an empty
    /// value (the string was URL-encoded whole), `parse_str(urldecode(…))`.
    pub fn from_query_string(s: &str) -> Params {
        let once = Params::parse(s);
        let encoded_whole = once.entries.len() == 1
            && matches!(&once.entries[0].1, PhpValue::Str(v) if v.is_empty());
        if encoded_whole {
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
            return Params::parse(&String::from_utf8_lossy(&decoded));
        }
        once
    }
}

/// The value Matomo works with after `Common::getRequestVar` sanitised it: HTML entities decoded
/// (`html_entity_decode(…, ENT_QUOTES)`: `&#76;`, `&#x4C;` and the named `&amp;` `&lt;` `&gt;`
/// `&quot;` `&#039;`, a semicolon required, one pass) and NUL bytes removed. So `Auto&#76;ogin`
/// and `Auto%00Login` are Matomo's `AutoLogin`.
pub fn matomo_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '\0']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match entity(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out.retain(|c| c != '\0');
    Cow::Owned(out)
}

/// One entity at the start of `s` (which starts with `&`): the character and the bytes it spans.
fn entity(s: &str) -> Option<(char, usize)> {
    let end = s[1..].find(';')? + 1;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
                u32::from_str_radix(hex.trim_start_matches('0'), 16)
                    .ok()
                    .or(Some(0))?
            }
            None if !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()) => num
                .trim_start_matches('0')
                .parse::<u32>()
                .ok()
                .or(Some(0))?,
            _ => return None,
        };
        if code == 0 {
            return None;
        }
        char::from_u32(code)?
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            _ => return None,
        }
    };
    Some((c, end + 1))
}

/// `$_GET + $_POST`: a name of the query hides the same name of the body.
pub struct Request<'a> {
    pub get: &'a Params,
    pub post: Option<&'a Params>,
}

impl Request<'_> {
    pub fn var(&self, name: &str) -> Option<&PhpValue> {
        self.get
            .get(name)
            .or_else(|| self.post.and_then(|p| p.get(name)))
    }

    /// `Common::getRequestVar($name, '', 'string')`: arrays read as absent.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.var(name).and_then(PhpValue::as_str)
    }

    /// The string Matomo works with for `name` ([`matomo_decode`]); None when absent, empty or an
    /// array (Matomo then uses its default).
    pub fn matomo(&self, name: &str) -> Option<Cow<'_, str>> {
        self.string(name)
            .map(matomo_decode)
            .filter(|v| !v.is_empty())
    }

    /// Every name of `$_GET + $_POST`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.get
            .names()
            .chain(self.post.into_iter().flat_map(Params::names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ascii_is_str_split() {
        for s in [
            "",
            "&",
            "&&",
            "a",
            "a&",
            "&a",
            "a&b",
            "a&&b",
            "é&ü=ß&",
            "module=CoreHome&action=index",
            "x=1&%26=2&&y",
            "日本&語",
        ] {
            for sep in [b'&', b'=', b';'] {
                assert_eq!(
                    split_ascii(s, sep).collect::<Vec<_>>(),
                    s.split(sep as char).collect::<Vec<_>>(),
                    "{s:?} on {}",
                    sep as char
                );
            }
        }
    }

    #[test]
    fn plain_and_changed_names() {
        // The fast path (nothing PHP changes) and the others agree with PHP.
        assert_eq!(php_name("idSite"), Some(("idSite".into(), false)));
        assert_eq!(php_name(""), None);
        assert_eq!(php_name(" "), None);
        assert_eq!(php_name("a.b"), Some(("a_b".into(), false)));
        assert_eq!(php_name("a\0b"), Some(("a".into(), false)));
        assert_eq!(php_name("a[]"), Some(("a".into(), true)));
    }

    #[test]
    fn last_duplicate_wins() {
        let p = Params::parse("module=Login&module=AutoLogin");
        assert_eq!(
            p.get("module").and_then(PhpValue::as_str),
            Some("AutoLogin")
        );
    }

    #[test]
    fn arrays_and_names() {
        let p = Params::parse("module[]=AutoLogin&token.auth=x&%20action=y&a[b=1");
        assert_eq!(
            p.get("module"),
            Some(&PhpValue::Array(vec!["AutoLogin".into()]))
        );
        assert_eq!(p.get("token_auth").and_then(PhpValue::as_str), Some("x"));
        assert_eq!(p.get("action").and_then(PhpValue::as_str), Some("y"));
        assert_eq!(p.get("a_b").and_then(PhpValue::as_str), Some("1"));
    }

    #[test]
    fn decoding() {
        let p = Params::parse("mod%75le=Auto%4Cogin&x=a+b");
        assert_eq!(
            p.get("module").and_then(PhpValue::as_str),
            Some("AutoLogin")
        );
        assert_eq!(p.get("x").and_then(PhpValue::as_str), Some("a b"));
    }

    #[test]
    fn get_wins_over_post() {
        let g = Params::parse("module=CoreHome");
        let b = Params::parse("module=AutoLogin&token_auth=t");
        let r = Request {
            get: &g,
            post: Some(&b),
        };
        assert_eq!(r.string("module"), Some("CoreHome"));
        assert_eq!(r.string("token_auth"), Some("t"));
    }

    #[test]
    fn matomo_decodes_entities_and_nul_like_php() {
        // Each checked against PHP 8.2: html_entity_decode($s, ENT_QUOTES, 'UTF-8') minus NULs.
        for (raw, want) in [
            ("Auto&#76;ogin", "AutoLogin"),
            ("Auto&#x4c;ogin", "AutoLogin"),
            ("Auto&#X4C;ogin", "AutoLogin"),
            ("Auto&#0000076;ogin", "AutoLogin"),
            ("Auto&#x0004c;ogin", "AutoLogin"),
            ("Auto&#76;&#111;gin", "AutoLogin"),
            ("Auto\0Login", "AutoLogin"),
            ("Auto&#76ogin", "Auto&#76ogin"),
            ("Auto&amp;#76;ogin", "Auto&#76;ogin"),
            ("&amp;&lt;&gt;&quot;", "&<>\""),
            ("a&#0;b", "a&#0;b"),
            ("a&#;b&#x;c&", "a&#;b&#x;c&"),
            ("&#1114112;", "&#1114112;"),
        ] {
            assert_eq!(matomo_decode(raw), want, "{raw}");
        }
    }

    #[test]
    fn bulk_entries_read_like_matomo() {
        let p = Params::from_query_string("method=A.b&idSite=1");
        assert_eq!(p.get("method").and_then(PhpValue::as_str), Some("A.b"));
        let p = Params::from_query_string("method%3DUsersManager.getUsers%26x%3D1");
        assert_eq!(
            p.get("method").and_then(PhpValue::as_str),
            Some("UsersManager.getUsers")
        );
    }

    #[test]
    fn too_many_vars() {
        let q: Vec<String> = (0..1001).map(|i| format!("v{i}=1")).collect();
        assert!(Params::parse(&q.join("&")).too_many);
    }
}
