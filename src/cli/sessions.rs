//! `unikgate sessions list|end`.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum SessionsAction {
    /// List the live unikgate sessions (never their ids: a short reference instead).
    List {
        /// Only the sessions of this @unikname (the provider's subject).
        #[arg(long, value_name = "SUBJECT")]
        unikname: Option<String>,
    },
    /// End every session of an @unikname, on every replica, and log its Matomo sessions out.
    End {
        /// The @unikname (the provider's subject).
        #[arg(long, value_name = "SUBJECT")]
        unikname: String,
        /// The issuer; default: the configured provider's.
        #[arg(long)]
        issuer: Option<String>,
    },
}

fn date_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub async fn run(
    app: &unikgate::App,
    json: bool,
    action: SessionsAction,
) -> Result<ExitCode, String> {
    match action {
        SessionsAction::List { unikname } => {
            let entries = app
                .session_index
                .list_sessions(unikname.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let mut rows = Vec::new();
            for e in entries {
                // The index outlives sessions that lapsed: only the live ones are listed.
                let Some(data) = app
                    .sessions
                    .peek(&e.session_id)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    continue;
                };
                let Some(user) = data.user else { continue };
                rows.push(serde_json::json!({
                    "session": &unikgate::session::cookie_hash(&e.session_id)[..12],
                    "unikname": e.subject,
                    "issuer": e.issuer,
                    "matomo_login": user.link.as_ref().map(|l| l.matomo_login.clone()),
                    "signed_in": date_time(user.signed_in),
                    "last_active": date_time(data.touched),
                    "provider_session": e.sid.is_some(),
                }));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
                );
            } else if rows.is_empty() {
                println!("no sessions");
            } else {
                println!(
                    "{:<14} {:<40} {:<16} {:<26} last active",
                    "session", "unikname", "matomo_login", "signed in"
                );
                for r in &rows {
                    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                    println!(
                        "{:<14} {:<40} {:<16} {:<26} {}",
                        s("session"),
                        s("unikname"),
                        s("matomo_login"),
                        s("signed_in"),
                        s("last_active")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsAction::End { unikname, issuer } => {
            let issuer = issuer.unwrap_or_else(|| super::default_issuer(app));
            let ids = app
                .session_index
                .take_sessions(&issuer, &unikname)
                .await
                .map_err(|e| e.to_string())?;
            let ended = app.end_sessions(&ids).await.map_err(|e| e.to_string())?;
            super::record(
                app,
                &[
                    ("event", "sessions_end".into()),
                    ("subject", unikname.clone()),
                    ("ended", ended.to_string()),
                    ("actor", "cli".into()),
                ],
            )
            .await;
            if json {
                println!("{{\"ended\":{ended}}}");
            } else {
                println!("ended {ended} session(s) of {unikname}, and their Matomo sessions");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
