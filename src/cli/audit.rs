//! `unikgate audit list`: the audit trail kept in the link database, newest first.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditAction {
    /// List audit events, newest first.
    List {
        /// Only the events of this @unikname (the provider's subject).
        #[arg(long)]
        unikname: Option<String>,
        /// Only events younger than this (such as 24h or 7d), or since this date (2026-12-01).
        #[arg(long)]
        since: Option<String>,
        /// Only these events (refused, sign_in, link, unlink, …), comma-separated.
        #[arg(long, value_delimiter = ',')]
        event: Vec<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

/// `--since`: a duration back from now, or a date (UTC midnight), as Unix ms.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms - d.as_millis().min(i64::MAX as u128) as i64);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .map_err(|_| {
            format!(
                "--since {s:?}: write a duration such as 24h or 7d, or a date such as 2026-12-01"
            )
        })
}

fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub async fn run(app: &unikgate::App, json: bool, action: AuditAction) -> Result<ExitCode, String> {
    match action {
        AuditAction::List {
            unikname,
            since,
            event,
            limit,
        } => {
            let since = match since {
                Some(s) => Some(parse_since(&s, unikgate::now_ms())?),
                None => None,
            };
            let q = unikgate::store::AuditQuery {
                subject: unikname,
                since,
                events: event,
                offset: 0,
                limit,
            };
            let rows = app.audit.list(&q).await.map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
                );
            } else if rows.is_empty() {
                println!("no audit events");
            } else {
                println!(
                    "{:<20} {:<18} {:<28} {:<16} {:<16} reason",
                    "at (UTC)", "event", "unikname", "matomo_login", "client_ip"
                );
                for r in rows {
                    let mut reason = r.reason.unwrap_or_default();
                    let extras = [r.actor.map(|a| format!("by {a}")), r.details];
                    for x in extras.into_iter().flatten() {
                        if !reason.is_empty() {
                            reason.push_str("; ");
                        }
                        reason.push_str(&x);
                    }
                    println!(
                        "{:<20} {:<18} {:<28} {:<16} {:<16} {}",
                        when(r.at),
                        r.event,
                        r.subject.unwrap_or_else(|| "-".into()),
                        r.matomo_login.unwrap_or_else(|| "-".into()),
                        r.client_ip.unwrap_or_else(|| "-".into()),
                        reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_date() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("24h", now), Ok(now - 86_400_000));
        // 1_800_000_000 s is 2027-01-15T08:00:00Z: the date is its midnight.
        assert_eq!(parse_since("2027-01-15", now), Ok(1_799_971_200_000));
        assert!(parse_since("yesterday", now).is_err());
    }
}
