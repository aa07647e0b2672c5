//! The administration commands of the binary (`links`, `sessions`): what they print and how they
//! exit. The work itself is the library's (`App::unlink`, `App::end_sessions`, the link store).

pub mod audit;
pub mod links;
pub mod sessions;

/// An audit event of a command: logged, and written to the link database before the command
/// exits (a failure to keep it is said on stderr, the command's work stands).
pub async fn record(app: &unikgate::App, fields: &[(&str, String)]) {
    let r = unikgate::store::AuditRecord::from_fields(fields);
    tracing::info!(target: "unikgate::audit", event = %r.event, subject = ?r.subject, matomo_login = ?r.matomo_login, actor = ?r.actor, details = ?r.details);
    if let Err(e) = app.audit.write(r).await {
        eprintln!("warning: the audit event was logged but not kept in the database: {e}");
    }
}

/// The configured provider's issuer, as links and sessions record it.
pub fn default_issuer(app: &unikgate::App) -> String {
    app.oidc
        .as_ref()
        .map(|o| o.identity_issuer.clone())
        .or_else(|| {
            app.cfg
                .provider
                .issuer
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_string())
        })
        .unwrap_or_default()
}
