//! `unikgate links list|add|remove`.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum LinksAction {
    /// List every link.
    List,
    /// Link an @unikname (the provider's subject) to a Matomo login.
    Add {
        /// The subject (the `sub` of the @unikname at the provider).
        subject: String,
        /// The Matomo login.
        matomo_login: String,
        /// The issuer; default: the configured provider's.
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Remove the link of a subject, or of a Matomo login with --login.
    Remove {
        /// The subject, or the Matomo login with --login.
        who: String,
        #[arg(long)]
        login: bool,
        #[arg(long)]
        issuer: Option<String>,
    },
}

pub async fn run(
    app: &unikgate::App,
    json: bool,
    action: LinksAction,
    default_issuer: &str,
) -> Result<ExitCode, String> {
    let store = &app.links;
    match action {
        LinksAction::List => {
            let links = store.list().await.map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&links).map_err(|e| e.to_string())?
                );
            } else if links.is_empty() {
                println!("no links");
            } else {
                println!(
                    "{:<24} {:<40} {:<10} issuer",
                    "matomo_login", "subject", "superuser"
                );
                for l in links {
                    println!(
                        "{:<24} {:<40} {:<10} {}",
                        l.matomo_login, l.subject, l.superuser, l.issuer
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LinksAction::Add {
            subject,
            matomo_login,
            issuer,
        } => {
            let link = unikgate::store::Link {
                id: unikgate::random_token(),
                issuer: issuer.unwrap_or_else(|| default_issuer.to_string()),
                subject,
                matomo_login,
                superuser: false,
                created_at: unikgate::now_ms(),
                last_login_at: None,
            };
            match store.create(&link).await.map_err(|e| e.to_string())? {
                Ok(()) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string(&link).map_err(|e| e.to_string())?
                        );
                    } else {
                        println!("linked {} -> {}", link.subject, link.matomo_login);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(unikgate::store::LinkConflict::Identity) => {
                    eprintln!(
                        "refused: this subject is already linked (unikgate links remove {} first)",
                        link.subject
                    );
                    Ok(ExitCode::from(3))
                }
                Err(unikgate::store::LinkConflict::Login) => {
                    eprintln!(
                        "refused: the Matomo login {} is already linked to another subject (unikgate links remove --login {} first)",
                        link.matomo_login, link.matomo_login
                    );
                    Ok(ExitCode::from(3))
                }
            }
        }
        LinksAction::Remove { who, login, issuer } => {
            // Through the app: the identity's sessions end with its link.
            let removed = if login {
                app.unlink_login(&who).await
            } else {
                app.unlink(issuer.as_deref().unwrap_or(default_issuer), &who)
                    .await
            }
            .map_err(|e| e.to_string())?;
            if removed {
                let who_field = if login { "matomo_login" } else { "subject" };
                super::record(
                    app,
                    &[
                        ("event", "unlink".into()),
                        (who_field, who.clone()),
                        ("actor", "cli".into()),
                    ],
                )
                .await;
            }
            if json {
                println!("{{\"removed\":{removed}}}");
            } else if removed {
                println!("removed the link of {who} and ended its sessions");
            } else {
                println!("no link found for {who}");
            }
            Ok(if removed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
    }
}
