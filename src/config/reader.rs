//! Reads one TOML section key by key, with `UNIKGATE_<SECTION>__<KEY>` environment overrides, and
//! collects every problem instead of stopping at the first one.
//!
//! Each section's `read` names its keys exactly once, so the list of known keys, the type of each
//! key (used to parse its environment override), and the error messages cannot drift apart.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::Value;
use url::Url;

/// One configuration problem, named by its key path, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Where environment overrides come from (a trait so tests can pass a map).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable name (to catch `UNIKGATE_…` names that match no key).
    fn names(&self) -> Vec<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

pub struct Reader<'a> {
    section: &'static str,
    table: Option<&'a toml::Table>,
    env: &'a dyn Env,
    seen: BTreeSet<&'static str>,
    pub errors: &'a mut Vec<ConfigError>,
}

/// A value found in the file or the environment.
enum Raw<'v> {
    File(&'v Value),
    Env(String),
}

impl<'a> Reader<'a> {
    pub fn new(
        root: &'a toml::Table,
        section: &'static str,
        env: &'a dyn Env,
        errors: &'a mut Vec<ConfigError>,
    ) -> Self {
        let table = match root.get(section) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                errors.push(ConfigError {
                    key: section.to_string(),
                    message: format!("must be a table: write it as a [{section}] section"),
                });
                None
            }
        };
        Reader {
            section,
            table,
            env,
            seen: BTreeSet::new(),
            errors,
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{}", self.section, key)
    }

    pub fn env_name(section: &str, key: &str) -> String {
        format!(
            "UNIKGATE_{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }

    fn raw(&mut self, key: &'static str) -> Option<Raw<'a>> {
        self.seen.insert(key);
        if let Some(v) = self.env.var(&Self::env_name(self.section, key)) {
            return Some(Raw::Env(v));
        }
        self.table.and_then(|t| t.get(key)).map(Raw::File)
    }

    /// The section is written in the file (possibly empty).
    pub fn present(&self) -> bool {
        self.table.is_some()
    }

    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let key = self.path(key);
        self.errors.push(ConfigError {
            key,
            message: message.into(),
        });
    }

    fn type_error(&mut self, key: &str, raw: &Raw<'_>, want: &str) {
        let got = match raw {
            Raw::File(v) => v.type_str().to_string(),
            Raw::Env(_) => format!("environment variable {}", Self::env_name(self.section, key)),
        };
        self.error(key, format!("expected {want}, found {got}"));
    }

    /// An optional string. Empty strings count as absent.
    pub fn opt_string(&mut self, key: &'static str) -> Option<String> {
        match self.raw(key)? {
            Raw::Env(s) => Some(s).filter(|s| !s.is_empty()),
            Raw::File(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            raw => {
                self.type_error(key, &raw, "a string in quotes");
                None
            }
        }
    }

    pub fn string(&mut self, key: &'static str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    pub fn bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(Raw::File(Value::Boolean(b))) => *b,
            Some(Raw::Env(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.error(key, format!("expected true or false, found {s:?}"));
                    default
                }
            },
            Some(raw) => {
                self.type_error(key, &raw, "true or false");
                default
            }
        }
    }

    pub fn u64(&mut self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let n = match self.raw(key) {
            None => return default,
            Some(Raw::File(Value::Integer(i))) => u64::try_from(*i).ok(),
            Some(Raw::Env(s)) => s.trim().parse::<u64>().ok(),
            Some(raw) => {
                self.type_error(key, &raw, "a whole number");
                return default;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(key, format!("must be a whole number from {min} to {max}"));
                default
            }
        }
    }

    /// A list of strings; from the environment, comma-separated.
    pub fn list(&mut self, key: &'static str, default: &[&str]) -> Vec<String> {
        match self.raw(key) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(Raw::Env(s)) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            Some(Raw::File(Value::Array(items))) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            let msg = format!(
                                "expected a list of strings, found a {} in it",
                                other.type_str()
                            );
                            self.error(key, msg);
                        }
                    }
                }
                out
            }
            Some(raw) => {
                self.type_error(key, &raw, "a list of strings such as [\"a\", \"b\"]");
                default.iter().map(|s| s.to_string()).collect()
            }
        }
    }

    /// A duration written like `"90s"`, `"15m"`, `"1h 30m"`, or a number of seconds.
    pub fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        let text = match self.raw(key) {
            None => return default,
            Some(Raw::File(Value::Integer(i))) if *i >= 0 => return Duration::from_secs(*i as u64),
            Some(Raw::File(Value::String(s))) => s.clone(),
            Some(Raw::Env(s)) => s,
            Some(raw) => {
                self.type_error(key, &raw, "a duration such as \"30s\", \"15m\" or \"1h\"");
                return default;
            }
        };
        let parsed = text
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .or_else(|_| humantime::parse_duration(text.trim()));
        match parsed {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(key, "must be longer than zero");
                default
            }
            Err(_) => {
                self.error(
                    key,
                    format!("{text:?} is not a duration: write it like \"30s\", \"15m\" or \"1h\""),
                );
                default
            }
        }
    }

    /// An optional absolute http(s) URL.
    pub fn opt_url(&mut self, key: &'static str) -> Option<Url> {
        let s = self.opt_string(key)?;
        match Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            Ok(_) => {
                self.error(
                    key,
                    format!("{s:?} must be an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                self.error(
                    key,
                    format!("{s:?} is not a URL ({e}); write it like https://host/path"),
                );
                None
            }
        }
    }

    pub fn url(&mut self, key: &'static str, default: &str) -> Option<Url> {
        match self.opt_url(key) {
            Some(u) => Some(u),
            None if self.has_error_for(key) => None,
            None => Url::parse(default).ok(),
        }
    }

    pub fn has_error_for(&self, key: &str) -> bool {
        let path = self.path(key);
        self.errors.iter().any(|e| e.key == path)
    }

    /// One of a fixed set of words.
    pub fn choice(
        &mut self,
        key: &'static str,
        default: &'static str,
        allowed: &[&'static str],
    ) -> String {
        let v = self.string(key, default);
        if allowed.contains(&v.as_str()) {
            v
        } else {
            self.error(key, format!("{v:?} is not one of: {}", allowed.join(", ")));
            default.to_string()
        }
    }

    /// Counts `keys` as read without reading them (a mode that does not use them).
    pub fn skip(&mut self, keys: &[&'static str]) {
        self.seen.extend(keys.iter().copied());
    }

    /// Reports every key present in the file section that no reader asked for.
    pub fn finish(self) {
        if let Some(t) = self.table {
            for k in t.keys() {
                if !self.seen.contains(k.as_str()) {
                    let known: Vec<&str> = self.seen.iter().copied().collect();
                    self.errors.push(ConfigError {
                        key: format!("{}.{}", self.section, k),
                        message: format!(
                            "unknown key; the keys of [{}] are: {}",
                            self.section,
                            known.join(", ")
                        ),
                    });
                }
            }
        }
    }
}
