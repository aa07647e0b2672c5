//! Who may sign in (`[access]`): the rules, a person's verdict, and the stamp that lets a session
//! made under other rules be checked again.
//!
//! Invariants: pure (no store, no network); a refusal names the rule that refused (for the audit
//! log, never the page); an e-mail domain counts only with `email_verified = true`; every replica
//! computes the same stamp for the same rules (SHA-256, not a per-process hash).

use std::collections::BTreeMap;

use crate::config::AccessConfig;
use crate::oidc::{claim_bool, claim_values};

/// The claims a session keeps for checking it again: by path, every value the provider gave
/// (empty when it gave none). Only the paths the rules read.
pub type Projection = BTreeMap<String, Vec<String>>;

/// The rules of `[access]`, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: AccessConfig,
    /// Required claims by path, each with its alternatives.
    require: BTreeMap<String, Vec<String>>,
    stamp: u64,
}

/// Why a person may not come in: the rule, as named in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `allow_subjects` nor `allow_email_domains` lets this person in.
    NotListed { unverified_email: bool },
    /// A required claim (`require_claims`, by path) does not hold.
    Claim(String),
}

impl Refusal {
    /// The rule, for the audit log and `reason=` fields.
    pub fn rule(&self, cfg: &AccessConfig) -> String {
        match self {
            Refusal::NotListed { unverified_email } => {
                let mut keys = Vec::new();
                if !cfg.allow_subjects.is_empty() {
                    keys.push("access.allow_subjects");
                }
                if !cfg.allow_email_domains.is_empty() {
                    keys.push("access.allow_email_domains");
                }
                let mut s = keys.join(" / ");
                if *unverified_email && !cfg.allow_email_domains.is_empty() {
                    s.push_str(" (the e-mail address is not verified by the provider)");
                }
                s
            }
            Refusal::Claim(path) => format!("access.require_claims ({path})"),
        }
    }
}

/// The outcome of checking a session again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    Allowed,
    Refused(Refusal),
    /// The rules read a claim the session did not keep: only a new sign-in can tell.
    SignInAgain,
}

impl Policy {
    pub fn new(cfg: &AccessConfig) -> Policy {
        let mut require: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, value) in &cfg.require_claims {
            require.entry(path.clone()).or_default().push(value.clone());
        }
        let stamp = if cfg.is_open() {
            0
        } else {
            stamp_of(cfg, &require)
        };
        Policy {
            cfg: cfg.clone(),
            require,
            stamp,
        }
    }

    /// 0 with no rule; else the same number on every replica for the same rules (their order in
    /// the file does not matter).
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    pub fn config(&self) -> &AccessConfig {
        &self.cfg
    }

    /// What a session keeps of the provider's claims: `email`, `email_verified` and every
    /// required path (never more than the rules read).
    pub fn project(&self, claims: &serde_json::Value) -> Projection {
        let mut p = Projection::new();
        if self.cfg.is_open() {
            return p;
        }
        if !self.cfg.allow_email_domains.is_empty() {
            p.insert("email".into(), claim_values(claims, "email"));
            p.insert(
                "email_verified".into(),
                vec![claim_bool(claims, "email_verified").to_string()],
            );
        }
        for path in self.require.keys() {
            p.insert(path.clone(), claim_values(claims, path));
        }
        p
    }

    /// The verdict for a person at sign-in.
    pub fn evaluate(&self, subject: &str, claims: &serde_json::Value) -> Result<(), Refusal> {
        match self.check(subject, &self.project(claims)) {
            Recheck::Allowed => Ok(()),
            Recheck::Refused(r) => Err(r),
            // Not reached: the projection was made for these rules.
            Recheck::SignInAgain => Err(Refusal::NotListed {
                unverified_email: false,
            }),
        }
    }

    /// The verdict for a session that kept `kept` when it signed in (under other rules).
    pub fn check(&self, subject: &str, kept: &Projection) -> Recheck {
        let c = &self.cfg;
        let listed = c.allow_subjects.is_empty() && c.allow_email_domains.is_empty();
        if !listed {
            let by_subject = c.allow_subjects.iter().any(|s| s == subject);
            let mut unverified_email = false;
            let by_domain = if c.allow_email_domains.is_empty() || by_subject {
                false
            } else {
                let (Some(email), Some(verified)) = (kept.get("email"), kept.get("email_verified"))
                else {
                    return Recheck::SignInAgain;
                };
                let verified = verified.first().is_some_and(|v| v == "true");
                let domain = email
                    .first()
                    .and_then(|e| e.rsplit_once('@'))
                    .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
                let in_list = domain
                    .as_deref()
                    .is_some_and(|d| c.allow_email_domains.iter().any(|a| a == d));
                unverified_email = in_list && !verified;
                in_list && verified
            };
            if !by_subject && !by_domain {
                return Recheck::Refused(Refusal::NotListed { unverified_email });
            }
        }
        for (path, alternatives) in &self.require {
            let Some(values) = kept.get(path) else {
                return Recheck::SignInAgain;
            };
            if !values.iter().any(|v| alternatives.contains(v)) {
                return Recheck::Refused(Refusal::Claim(path.clone()));
            }
        }
        Recheck::Allowed
    }
}

/// SHA-256 of the rules in a canonical order, its first 8 bytes (never 0: 0 means "no rules").
fn stamp_of(cfg: &AccessConfig, require: &BTreeMap<String, Vec<String>>) -> u64 {
    use sha2::{Digest, Sha256};
    let mut subjects = cfg.allow_subjects.clone();
    subjects.sort();
    subjects.dedup();
    let mut domains = cfg.allow_email_domains.clone();
    domains.sort();
    domains.dedup();
    let mut h = Sha256::new();
    let mut put = |tag: &str, items: &[String]| {
        h.update(tag.as_bytes());
        h.update((items.len() as u64).to_be_bytes());
        for i in items {
            h.update((i.len() as u64).to_be_bytes());
            h.update(i.as_bytes());
        }
    };
    put("subjects", &subjects);
    put("domains", &domains);
    for (path, alts) in require {
        let mut alts = alts.clone();
        alts.sort();
        alts.dedup();
        put(path, &alts);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(subjects: &[&str], domains: &[&str], claims: &[(&str, &str)]) -> AccessConfig {
        AccessConfig {
            allow_subjects: subjects.iter().map(|s| s.to_string()).collect(),
            allow_email_domains: domains.iter().map(|s| s.to_string()).collect(),
            require_claims: claims
                .iter()
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn no_rule_lets_everybody_in_with_stamp_zero() {
        let p = Policy::new(&AccessConfig::default());
        assert_eq!(p.stamp(), 0);
        assert_eq!(p.evaluate("anyone", &json!({})), Ok(()));
        assert!(p.project(&json!({"email": "a@b.c"})).is_empty());
    }

    #[test]
    fn subjects_and_verified_domains_are_alternatives() {
        let p = Policy::new(&cfg(&["uns-alice"], &["example.org"], &[]));
        assert_eq!(p.evaluate("uns-alice", &json!({})), Ok(()));
        let verified = json!({"email": "bob@Example.ORG", "email_verified": true});
        assert_eq!(p.evaluate("uns-bob", &verified), Ok(()));
        // A domain check on an unverified address is no check.
        let unverified = json!({"email": "bob@example.org", "email_verified": false});
        let r = p.evaluate("uns-bob", &unverified).unwrap_err();
        assert_eq!(
            r,
            Refusal::NotListed {
                unverified_email: true
            }
        );
        assert!(r.rule(p.config()).contains("not verified"));
        let missing = json!({"email": "bob@example.org"});
        assert!(p.evaluate("uns-bob", &missing).is_err());
        let other = json!({"email": "eve@example.org.evil.com", "email_verified": true});
        assert!(p.evaluate("uns-eve", &other).is_err());
        let sub = json!({"email": "eve@sub.example.org", "email_verified": true});
        assert!(p.evaluate("uns-eve", &sub).is_err());
        assert_eq!(
            Refusal::NotListed {
                unverified_email: false
            }
            .rule(p.config()),
            "access.allow_subjects / access.allow_email_domains"
        );
    }

    #[test]
    fn required_claims_all_hold_with_alternatives_per_path() {
        let p = Policy::new(&cfg(
            &[],
            &[],
            &[
                ("groups", "matomo"),
                ("groups", "staff"),
                ("org.unit", "sales"),
            ],
        ));
        let ok = json!({"groups": ["x", "staff"], "org": {"unit": "sales"}});
        assert_eq!(p.evaluate("s", &ok), Ok(()));
        let no_unit = json!({"groups": ["matomo"]});
        assert_eq!(
            p.evaluate("s", &no_unit),
            Err(Refusal::Claim("org.unit".into()))
        );
        let wrong_group = json!({"groups": "other", "org": {"unit": "sales"}});
        assert_eq!(
            p.evaluate("s", &wrong_group)
                .map_err(|r| r.rule(p.config())),
            Err("access.require_claims (groups)".into())
        );
        // Listed subjects must still meet the required claims.
        let p = Policy::new(&cfg(&["s"], &[], &[("groups", "matomo")]));
        assert!(p.evaluate("s", &json!({})).is_err());
    }

    #[test]
    fn a_session_is_checked_again_from_what_it_kept() {
        let before = Policy::new(&cfg(&[], &["example.org"], &[]));
        let kept = before
            .project(&json!({"email": "a@example.org", "email_verified": true, "groups": ["g"]}));
        assert_eq!(kept.len(), 2, "only what the rules read: {kept:?}");
        // Narrower rules refuse from the kept claims.
        let after = Policy::new(&cfg(&[], &["example.com"], &[]));
        assert!(matches!(after.check("s", &kept), Recheck::Refused(_)));
        // A claim the session did not keep: sign in again.
        let after = Policy::new(&cfg(&[], &["example.org"], &[("groups", "g")]));
        assert_eq!(after.check("s", &kept), Recheck::SignInAgain);
        // A listed subject needs no e-mail at all.
        let after = Policy::new(&cfg(&["s"], &[], &[]));
        assert_eq!(after.check("s", &Projection::new()), Recheck::Allowed);
        assert!(matches!(
            after.check("t", &Projection::new()),
            Recheck::Refused(_)
        ));
    }

    #[test]
    fn the_stamp_ignores_order_and_tells_rules_apart() {
        let a = Policy::new(&cfg(&["x", "y"], &["a.org"], &[("g", "1"), ("g", "2")]));
        let b = Policy::new(&cfg(
            &["y", "x", "x"],
            &["a.org"],
            &[("g", "2"), ("g", "1")],
        ));
        assert_eq!(a.stamp(), b.stamp());
        assert_ne!(a.stamp(), 0);
        let c = Policy::new(&cfg(&["x"], &["a.org"], &[("g", "1"), ("g", "2")]));
        assert_ne!(a.stamp(), c.stamp());
        // A subject cannot pose as a domain.
        let d = Policy::new(&cfg(&["a.org"], &[], &[]));
        let e = Policy::new(&cfg(&[], &["a.org"], &[]));
        assert_ne!(d.stamp(), e.stamp());
    }
}
