//! The `unikgate` command: argument parsing only; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy allocates per request (headers, session data); glibc's allocator spent
/// about 14 % of the signed-in path's CPU in a profile (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use unikgate::config::{Config, LogFormat};

mod cli;
use cli::audit::AuditAction;
use cli::links::LinksAction;
use cli::sessions::SessionsAction;

/// Sign in to Matomo with your private @unikname: an authentication reverse proxy for Unikname
/// Connect (OpenID Connect) in front of Matomo.
#[derive(Parser)]
#[command(name = "unikgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML configuration file (every key can also be set as UNIKGATE_<SECTION>__<KEY>).
        #[arg(
            short,
            long,
            env = "UNIKGATE_CONFIG",
            default_value = "config/unikgate.toml"
        )]
        config: PathBuf,
    },
    /// Ask the running proxy of this configuration whether it is alive (GET <prefix>/healthz on
    /// server.listen); exit 0 when it answers 200. The container image's HEALTHCHECK.
    Healthcheck {
        #[arg(
            short,
            long,
            env = "UNIKGATE_CONFIG",
            default_value = "config/unikgate.toml"
        )]
        config: PathBuf,
    },
    /// Check a configuration file offline and list every problem.
    Check {
        #[arg(
            short,
            long,
            env = "UNIKGATE_CONFIG",
            default_value = "config/unikgate.toml"
        )]
        config: PathBuf,
    },
    /// Check the configuration, then HTTPS when unikgate serves it ([tls]: the certificate; with
    /// ACME the CA, the folder and the last failure, ordering nothing), then reach the provider
    /// and Matomo step by step (with the signed minter also Matomo's version and the settings
    /// that version needs).
    Doctor {
        #[arg(
            short,
            long,
            env = "UNIKGATE_CONFIG",
            default_value = "config/unikgate.toml"
        )]
        config: PathBuf,
        /// Also open a real Matomo session for this Matomo login, check who owns it, and log it
        /// out again (the check that minting works inside Matomo).
        #[arg(long = "as", value_name = "LOGIN")]
        as_login: Option<String>,
    },
    /// Manage the links between @uniknames and Matomo accounts.
    Links {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: LinksAction,
    },
    /// See and end people's sessions (as a back-channel logout from the provider would).
    Sessions {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Read the audit trail kept in the link database (sign-ins, links, refusals, admin actions).
    Audit {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: AuditAction,
    },
}

/// What `links` and `sessions` share.
#[derive(clap::Args)]
struct AdminArgs {
    /// The TOML configuration file.
    #[arg(
        short,
        long,
        env = "UNIKGATE_CONFIG",
        default_value = "config/unikgate.toml",
        global = true
    )]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| {
        eprintln!("{}: {} problem(s):", path.display(), errs.len());
        for e in &errs {
            eprintln!("  - {e}");
        }
        ExitCode::from(2)
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNIKGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn"));
    // Colours only on a terminal: a file or `docker compose logs` gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One CPU available (a pinned process, a one-CPU container): the single-threaded scheduler.
    // A lone worker gains nothing from work stealing, and with it the listener, the connections
    // and their upstream tasks share one thread instead of handing work across two (about 10 %
    // less CPU per request in interleaved runs; docs/PERFORMANCE.md).
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("unikgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Healthcheck { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match unikgate::server::probe_health(&cfg).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("unikgate is not healthy: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Check { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!("{}: OK", config.display());
            println!(
                "register at the provider: redirect URI {}  post-logout redirect URI {}  back-channel logout URI {}",
                cfg.redirect_uri(),
                cfg.post_logout_redirect_uri(),
                cfg.backchannel_logout_uri()
            );
            let missing = cfg.missing_provider_credentials();
            if !missing.is_empty() {
                println!(
                    "note: {} not set; unikgate will fail closed until {}",
                    missing.join(" and "),
                    if missing.len() == 1 {
                        "it is"
                    } else {
                        "they are"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logs(cfg.server.log_format);
            let listen = cfg.server.listen;
            let metrics_listen = cfg.server.metrics_listen;
            let handle = metrics_listen.and_then(|_| unikgate::install_metrics());
            let (gate, app) = unikgate::build_app(cfg).await?;
            if let (Some(addr), Some(handle)) = (metrics_listen, handle) {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on server.metrics_listen {addr}: {e}"))?;
                let m = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let h = handle.clone();
                        async move { h.render() }
                    }),
                );
                tracing::info!(%addr, "metrics listening");
                tokio::spawn(async move {
                    let _ = axum::serve(l, m).await;
                });
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on server.listen {listen}: {e}"))?;
            if let Some(addr) = app.cfg.server.http_listen {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on server.http_listen {addr}: {e}"))?;
                let cfg = app.cfg.clone();
                let acme = app.tls.as_ref().and_then(|t| t.acme()).cloned();
                tracing::info!(%addr, to = %cfg.public_origin(), "redirecting plain HTTP to HTTPS");
                tokio::spawn(async move {
                    let _ = unikgate::server::redirect::serve(
                        l,
                        &cfg,
                        acme,
                        unikgate::server::shutdown_signal(),
                    )
                    .await;
                });
            }
            let rt = tokio::runtime::Handle::current();
            let scheduler = match rt.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
                _ => "multi-threaded",
            };
            let workers = rt.metrics().num_workers();
            let scheme = if app.tls.is_some() {
                "https (HTTP/2, HTTP/1.1)"
            } else {
                "http"
            };
            tracing::info!(%listen, scheme, version = env!("CARGO_PKG_VERSION"), scheduler, workers, "unikgate listening");
            unikgate::server::serve(listener, gate, unikgate::server::shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { config, as_login } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!("ok   {:<20} {}", "configuration", config.display());
            let (_, app) = unikgate::build_app(cfg).await?;
            let steps = unikgate::doctor::run(&app, as_login.as_deref()).await;
            Ok(if unikgate::doctor::print(&steps) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Links {
            admin: AdminArgs { config, json },
            action,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let (_, app) = unikgate::build_app(cfg).await?;
            let default_issuer = cli::default_issuer(&app);
            cli::links::run(&app, json, action, &default_issuer).await
        }
        Command::Sessions {
            admin: AdminArgs { config, json },
            action,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logs(cfg.server.log_format);
            let (_, app) = unikgate::build_app(cfg).await?;
            cli::sessions::run(&app, json, action).await
        }
        Command::Audit {
            admin: AdminArgs { config, json },
            action,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let (_, app) = unikgate::build_app(cfg).await?;
            cli::audit::run(&app, json, action).await
        }
    }
}
