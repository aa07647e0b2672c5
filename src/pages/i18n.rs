//! The words of unikgate's pages: one catalogue per language (`locales/<lang>.toml`, built into
//! the binary), chosen per request from `Accept-Language`, English as the fallback.
//!
//! Invariant: pages and error pages take every sentence from here; a key missing from a
//! catalogue falls back to English (a test keeps the catalogues' keys equal).

use std::collections::HashMap;
use std::sync::LazyLock;

use http::header::{HeaderMap, ACCEPT_LANGUAGE};

/// One language's texts.
#[derive(Debug)]
pub struct Texts {
    /// The language tag, for `<html lang>`.
    pub lang: &'static str,
    map: HashMap<String, String>,
}

/// The catalogues as shipped: (language tag, TOML source). English first: it is the fallback.
pub const SOURCES: &[(&str, &str)] = &[
    ("en", include_str!("../../locales/en.toml")),
    ("fr", include_str!("../../locales/fr.toml")),
];

static CATALOGUES: LazyLock<Vec<Texts>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|(lang, src)| Texts {
            lang,
            map: parse(src).unwrap_or_else(|e| {
                tracing::error!(lang, error = %e, "unreadable message catalogue");
                HashMap::new()
            }),
        })
        .collect()
});

/// Flattens a catalogue into `section.key` → text.
pub fn parse(src: &str) -> Result<HashMap<String, String>, String> {
    fn walk(
        prefix: &str,
        t: &toml::Table,
        out: &mut HashMap<String, String>,
    ) -> Result<(), String> {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::String(s) => {
                    out.insert(key, s.clone());
                }
                toml::Value::Table(t) => walk(&key, t, out)?,
                _ => {
                    return Err(format!(
                        "{key}: only texts and sections belong in a catalogue"
                    ))
                }
            }
        }
        Ok(())
    }
    let table: toml::Table = src.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = HashMap::new();
    walk("", &table, &mut out)?;
    Ok(out)
}

/// English.
pub fn english() -> &'static Texts {
    &CATALOGUES[0]
}

/// The catalogue for a request: the first language of `Accept-Language` (by weight) that
/// unikgate has, else English.
pub fn for_request(headers: &HeaderMap) -> &'static Texts {
    negotiate(headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()))
}

/// See [`for_request`].
pub fn negotiate(accept: Option<&str>) -> &'static Texts {
    let Some(accept) = accept else {
        return english();
    };
    let mut best: Option<(f32, usize, &'static Texts)> = None;
    for (pos, item) in accept.split(',').take(32).enumerate() {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 || !q.is_finite() {
            continue;
        }
        let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
        let Some(t) = CATALOGUES.iter().find(|t| t.lang == primary) else {
            continue;
        };
        // Higher weight wins; equal weights keep the header's order.
        if best.is_none_or(|(bq, _, _)| q > bq) {
            best = Some((q, pos, t));
        }
    }
    best.map(|(_, _, t)| t).unwrap_or_else(english)
}

impl Texts {
    /// The text of `key`, from this language, else English, else the key itself.
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.map
            .get(key)
            .or_else(|| english().map.get(key))
            .map(String::as_str)
            .unwrap_or(key)
    }

    /// [`Texts::get`] with `{name}` placeholders filled in.
    pub fn fmt(&self, key: &str, args: &[(&str, &str)]) -> String {
        let mut s = self.get(key).to_string();
        for (name, value) in args {
            s = s.replace(&format!("{{{name}}}"), value);
        }
        s
    }

    /// The keys of this catalogue (tests compare them across languages).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Every shipped catalogue.
    pub fn all() -> &'static [Texts] {
        &CATALOGUES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_catalogue_has_exactly_the_english_keys() {
        let en: BTreeSet<&str> = english().keys().collect();
        assert!(en.len() > 100, "the English catalogue parsed: {}", en.len());
        for (lang, src) in SOURCES {
            let map = parse(src).unwrap_or_else(|e| panic!("{lang}: {e}"));
            let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
            let missing: Vec<_> = en.difference(&keys).collect();
            let extra: Vec<_> = keys.difference(&en).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{lang}: missing {missing:?}, not in English {extra:?}"
            );
            for (k, v) in &map {
                assert!(!v.trim().is_empty(), "{lang}: {k} is empty");
                // The same placeholders in every language.
                let names = |s: &str| -> BTreeSet<String> {
                    s.split('{')
                        .skip(1)
                        .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_string()))
                        .collect()
                };
                assert_eq!(
                    names(v),
                    names(english().get(k)),
                    "{lang}: {k} placeholders"
                );
            }
        }
        // French is French: no text left as the English one, except where the words are the same.
        let fr = negotiate(Some("fr"));
        let same: Vec<_> = en
            .iter()
            .filter(|k| fr.get(k) == english().get(k))
            .collect();
        assert!(same.is_empty(), "left untranslated in French: {same:?}");
    }

    #[test]
    fn accept_language_picks_the_best_supported_language() {
        assert_eq!(negotiate(None).lang, "en");
        assert_eq!(negotiate(Some("fr-FR,fr;q=0.9,en;q=0.8")).lang, "fr");
        assert_eq!(
            negotiate(Some("de-DE,de;q=0.9,fr;q=0.5,en;q=0.4")).lang,
            "fr"
        );
        assert_eq!(negotiate(Some("en-GB,fr;q=0.9")).lang, "en");
        assert_eq!(negotiate(Some("fr;q=0, en")).lang, "en");
        assert_eq!(negotiate(Some("de")).lang, "en");
        assert_eq!(negotiate(Some("en;q=0.2, FR;q=0.8")).lang, "fr");
        assert_eq!(negotiate(Some("garbage;;;q=x,,")).lang, "en");
    }

    #[test]
    fn placeholders_are_filled_and_unknown_keys_show_themselves() {
        let fr = negotiate(Some("fr"));
        assert_eq!(
            fr.fmt("link.this_session", &[("login", "alice")]),
            "Associer ce compte (alice)"
        );
        assert_eq!(english().get("no.such.key"), "no.such.key");
    }
}
