//! The audit trail: every audit event goes to the log (target `unikgate::audit`) and into the
//! link database, where `unikgate audit list` and the superusers' page read it back, for
//! `audit.retention`.
//!
//! Invariants: recording never waits for the database (a bounded queue, written by one task in
//! batches; a full queue drops the event from the database, never from the log, and counts it in
//! `unikgate_audit_dropped_total`); an event holds no token, code, cookie or password (the call
//! sites pass only identities, addresses and reasons).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{AuditLog, AuditRecord};
use crate::util::now_ms;

/// Events waiting for the database at most (a burst of refusals beyond this is only logged).
const QUEUE: usize = 4096;
/// Events written in one transaction at most.
const BATCH: usize = 256;
/// How often events older than the retention are deleted; the first time a while after start
/// (a command-line process, which exits first, never prunes).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_FIRST: Duration = Duration::from_secs(300);

/// Where audit events are recorded (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditRecord>,
    log: Arc<dyn AuditLog>,
}

impl Audit {
    /// Starts the writer: events go to `log`, and those older than `retention` are deleted
    /// (at start, then hourly).
    pub fn start(log: Arc<dyn AuditLog>, retention: Duration) -> Audit {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(QUEUE);
        let prune_log = log.clone();
        let direct = log.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_FIRST, PRUNE_EVERY);
            loop {
                tick.tick().await;
                let before = now_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
                match prune_log.prune(before).await {
                    Ok(n) if n > 0 => tracing::info!(
                        deleted = n,
                        "audit events older than audit.retention deleted"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "could not delete old audit events")
                    }
                }
            }
        });
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = log.append(&batch).await {
                    metrics::counter!("unikgate_audit_dropped_total").increment(batch.len() as u64);
                    tracing::warn!(error = %e.chain(), events = batch.len(), "could not keep audit events in the database (they are in the log)");
                }
                batch.clear();
            }
        });
        Audit { tx, log: direct }
    }

    /// Writes an event now, waiting for the database (the command line, which exits next).
    pub async fn write(&self, r: AuditRecord) -> Result<(), crate::error::Error> {
        self.log.append(std::slice::from_ref(&r)).await
    }

    /// Reads events back, newest first.
    pub async fn list(
        &self,
        q: &crate::store::AuditQuery,
    ) -> Result<Vec<AuditRecord>, crate::error::Error> {
        self.log.list(q).await
    }

    /// Queues an event for the database (never waits).
    pub fn record(&self, r: AuditRecord) {
        if self.tx.try_send(r).is_err() {
            metrics::counter!("unikgate_audit_dropped_total").increment(1);
        }
    }
}

impl AuditRecord {
    /// An event from its fields as the log line has them: `event`, `subject`, `matomo_login`,
    /// `client_ip`, `reason` and `actor` have columns; the others go to `details`.
    pub fn from_fields(fields: &[(&str, String)]) -> AuditRecord {
        let mut r = AuditRecord {
            at: now_ms(),
            ..Default::default()
        };
        let mut details = Vec::new();
        for (k, v) in fields {
            // Some values come from the network (a provider's error code in the callback's
            // query): no control character reaches a terminal that prints the trail
            // (`unikgate audit list`) or a log viewer.
            let v = v
                .chars()
                .take(1000)
                .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
                .collect::<String>();
            match *k {
                "event" => r.event = v,
                "subject" => r.subject = Some(v),
                "matomo_login" => r.matomo_login = Some(v),
                "client_ip" => r.client_ip = Some(v),
                "reason" => r.reason = Some(v),
                "actor" => r.actor = Some(v),
                other => details.push(format!("{other}={v}")),
            }
        }
        if !details.is_empty() {
            r.details = Some(details.join(" "));
        }
        r
    }
}

/// An audit event: logged (target `unikgate::audit`, at `info` or `warn`) and kept in the link
/// database through `$app.audit`. Fields are `name = value`, each value `Display`.
///
/// ```ignore
/// audit!(app, warn, event = "refused", subject = user.subject, reason = "superuser");
/// ```
#[macro_export]
macro_rules! audit {
    ($app:expr, $level:ident, $($k:ident = $v:expr),+ $(,)?) => {{
        let fields: &[(&str, String)] = &[$((stringify!($k), ($v).to_string())),+];
        tracing::$level!(target: "unikgate::audit", $($k = %$v),+);
        $app.audit.record($crate::store::AuditRecord::from_fields(fields));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fields_get_columns_and_the_rest_details() {
        let r = AuditRecord::from_fields(&[
            ("event", "refused".into()),
            ("subject", "uns-a".into()),
            ("client_ip", "192.0.2.1".into()),
            ("reason", "access.allow_subjects".into()),
            ("when", "access rules changed".into()),
            ("by", "provision".into()),
        ]);
        assert_eq!(r.event, "refused");
        assert_eq!(r.subject.as_deref(), Some("uns-a"));
        assert_eq!(r.client_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(r.matomo_login, None);
        assert_eq!(
            r.details.as_deref(),
            Some("when=access rules changed by=provision")
        );
        assert!(r.at > 0);
    }

    #[test]
    fn no_control_character_is_kept() {
        let r = AuditRecord::from_fields(&[
            ("event", "refused".into()),
            ("reason", "provider error".into()),
            (
                "error",
                "x\u{1b}[2J\u{1b}]0;owned\u{7}\r\nfake line\u{9b}".into(),
            ),
        ]);
        let d = r.details.unwrap_or_default();
        assert!(!d.chars().any(char::is_control), "{d:?}");
        assert!(d.starts_with("error=x\u{FFFD}[2J"), "{d:?}");
    }
}
