//! Reads what the compose files of `deploy/` give each service, the way `docker compose` would
//! with a `.env` file: the `environment:` block, the `volumes:` sources and the variables
//! (`${VAR}`, `${VAR:-default}`, `${VAR:?message}`). Only the shapes our compose files use.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `KEY=value` lines of a `.env` file (comments and blank lines skipped).
pub fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every variable a compose file uses, and whether it is required (`${VAR:?…}` or a bare
/// `${VAR}` without a default).
pub fn variables(text: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let body = &rest[i + 2..];
        let Some(end) = body.find('}') else { break };
        let inner = &body[..end];
        let (name, required) = match inner.find(':') {
            Some(j) => (&inner[..j], inner[j..].starts_with(":?")),
            None => (inner, true),
        };
        let e = out.entry(name.to_string()).or_insert(false);
        *e |= required;
        rest = &body[end..];
    }
    out
}

/// Substitutes `${…}` in `value` from `env`; a required variable that is missing is an error.
pub fn substitute(value: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let body = &rest[i + 2..];
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {value}"))?;
        let inner = &body[..end];
        let (name, op) = match inner.find(':') {
            Some(j) => (&inner[..j], Some(&inner[j..])),
            None => (inner, None),
        };
        let v = env.get(name).filter(|v| !v.is_empty());
        match (v, op) {
            (Some(v), _) => out.push_str(v),
            (None, Some(op)) if op.starts_with(":-") => out.push_str(&op[2..]),
            (None, Some(op)) if op.starts_with(":?") => {
                return Err(format!("{name} is required: {}", &op[2..]))
            }
            (None, _) => {}
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The lines of `service`'s block (indented under `services:`).
fn service_block<'a>(text: &'a str, service: &str) -> Vec<&'a str> {
    let header = format!("  {service}:");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != header);
    lines.next();
    lines
        .take_while(|l| {
            l.trim().is_empty() || l.starts_with("    ") || l.trim_start().starts_with('#')
        })
        .collect()
}

/// `service`'s `environment:` entries, unsubstituted.
pub fn environment(text: &str, service: &str) -> Vec<(String, String)> {
    let block = service_block(text, service);
    let mut out = Vec::new();
    let mut inside = false;
    for l in block {
        if l.trim_start().starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        if indent == 4 {
            inside = l.trim() == "environment:";
            continue;
        }
        if inside && indent >= 6 {
            if let Some((k, v)) = l.trim().split_once(':') {
                out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
    }
    out
}

/// The host paths `service` mounts (`- ./x:/y`, relative to `deploy/`), named volumes left out.
pub fn mounted_paths(text: &str, service: &str) -> Vec<PathBuf> {
    let block = service_block(text, service);
    let mut out = Vec::new();
    let mut inside = false;
    for l in block {
        let indent = l.len() - l.trim_start().len();
        if indent == 4 {
            inside = l.trim() == "volumes:";
            continue;
        }
        if inside {
            if let Some(src) = l
                .trim()
                .strip_prefix("- ")
                .and_then(|m| m.split(':').next())
            {
                if src.starts_with('.') || src.starts_with('/') {
                    out.push(deploy_dir().join(src));
                }
            }
        }
    }
    out
}

/// The services of a compose file.
pub fn services(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if !l.starts_with(' ') && !l.trim().is_empty() {
            inside = l.trim() == "services:";
            continue;
        }
        if inside && l.starts_with("  ") && !l.starts_with("   ") && l.trim().ends_with(':') {
            out.push(l.trim().trim_end_matches(':').to_string());
        }
    }
    out
}
