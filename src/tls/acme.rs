//! Automatic certificates over ACME (RFC 8555), for `[tls]` without `cert_file`: the account and
//! the certificate kept in `tls.acme_dir`, a certificate ordered when there is none (or it does
//! not name every `tls.domains`), renewed once two thirds of its life have passed (less a jitter
//! of up to 5 % of it, so that replicas and restarts do not all ask at one instant), failures
//! retried after 2 min, doubling up to an hour. The CA checks the names with TLS-ALPN-01 on the
//! HTTPS port (the resolver below answers it) or HTTP-01 on `server.http_listen`
//! (`server/redirect.rs` asks [`Acme::http01`]).
//!
//! Why instant-acme and not rustls-acme: instant-acme speaks the protocol and nothing else, so the
//! timings, the storage, the HTTP client (timeouts, `tls.acme_ca_file`) and the challenge state
//! are ours and shared by replicas through the folder; rustls-acme fixes its schedule and keeps
//! its challenge state in one process's memory.
//!
//! Files in `tls.acme_dir` (created 0700; files 0600):
//! - `account.json`: the directory URL and the account's key (a changed directory makes a new
//!   account; an account the CA no longer knows is made again);
//! - `certificate.pem`: the private key, then the chain, written whole then renamed;
//! - `challenges/tls-alpn-01/<domain>`, `challenges/http-01/<token>`: the key authorizations
//!   of the order in progress, so that whichever replica the CA reaches answers;
//! - `order.lock`: held (flock) by the one process ordering;
//! - `last-error.txt`: when the last attempt of any replica failed, and why (removed by the next
//!   success), for `doctor`, which runs in a process of its own.
//!
//! Invariants: until a certificate is issued, a self-signed placeholder is served and `readyz`
//! fails, saying why; once one is, it is served until a newer one replaces it, and a failed
//! renewal is logged (and shown by `doctor`) without taking a working replica out; only names in
//! `tls.domains` get a TLS-ALPN-01 answer.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use url::Url;

/// The ALPN protocol of the TLS-ALPN-01 check (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// `[tls]` without `cert_file`: the certificate obtained and renewed over ACME (RFC 8555).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// `tls.acme_directory`: the CA's directory URL. Default Let's Encrypt's production
    /// directory.
    pub directory: Url,
    /// `tls.acme_email`: the account's contact (expiry and policy mail from the CA). Optional.
    pub email: Option<String>,
    /// `tls.domains`: the names the certificate is for. Default: the host of `server.public_url`.
    pub domains: Vec<String>,
    /// `tls.acme_ca_file`: an extra root (PEM) trusted for the CA's own HTTPS, for a private CA
    /// (step-ca, pebble). The usual public roots stay trusted.
    pub ca_file: Option<PathBuf>,
    /// `tls.acme_dir`: the folder holding the account and the certificate. Default `acme/` in the
    /// data folder (next to the SQLite file). Replicas share one certificate by sharing this
    /// folder (one of them orders at a time, under a lock in it; any of them answers the CA).
    pub dir: PathBuf,
    /// `tls.acme_challenge`: how the CA checks the names: `tls-alpn-01` (default, on the HTTPS
    /// port) or `http-01` (on `server.http_listen`, which must then be set and reached on 80).
    pub challenge: AcmeChallenge,
}

/// The ACME challenge unikgate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    TlsAlpn01,
    Http01,
}

const CERT_FILE: &str = "certificate.pem";
const ACCOUNT_FILE: &str = "account.json";
const LOCK_FILE: &str = "order.lock";
const ERROR_FILE: &str = "last-error.txt";
/// First wait after a failed attempt, doubled after each further failure up to [`MAX_BACKOFF`]
/// (Let's Encrypt allows 5 failed validations per name per hour).
const FIRST_BACKOFF: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The largest share of a certificate's life by which a process renews before two thirds of it.
const MAX_JITTER: f64 = 0.05;
/// Each request to the CA.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The CA checking the names, then issuing.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the folder is looked at (a certificate another replica wrote) while nothing is due.
const LOOK_EVERY: Duration = super::RELOAD_EVERY;

/// The certificate obtained over ACME, and the resolver that serves it (and the challenges).
#[derive(Debug)]
pub struct Acme {
    cfg: AcmeConfig,
    current: RwLock<Arc<CertifiedKey>>,
    issued: RwLock<Option<Issued>>,
    /// TLS-ALPN-01 answers made from the challenge files: domain → (key authorization, cert).
    answers: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
    /// The stamp of a `certificate.pem` found unusable: not read (nor logged) again until it
    /// changes.
    refused: Mutex<Option<(SystemTime, u64)>>,
    /// The last attempt's failure, until one succeeds.
    last_error: RwLock<Option<String>>,
    /// This process's share of the renewal jitter, in [0, 0.05).
    jitter: f64,
    /// The loop was started ([`Acme::begin`]).
    begun: std::sync::atomic::AtomicBool,
}

/// What is known of the certificate served from `certificate.pem`.
#[derive(Debug, Clone)]
pub struct Issued {
    stamp: Option<(SystemTime, u64)>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub names: Vec<String>,
    pub serial: String,
}

/// What `doctor` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub issued: Option<Issued>,
    /// When this process renews it (`None`: now, it does not name every domain).
    pub renew_at: Option<SystemTime>,
    /// The earliest any process renews it (each draws its own jitter).
    pub renew_from: Option<SystemTime>,
    /// Why the last attempt failed (of any replica sharing the folder), until one succeeds.
    pub last_error: Option<String>,
    /// When, if known (it is when the failure was read from the folder).
    pub last_error_at: Option<SystemTime>,
}

impl Acme {
    /// Makes the folder and serves the certificate found in it (or a placeholder). The loop that
    /// orders and renews starts with [`Acme::begin`], once the listeners answer the CA.
    pub fn start(cfg: &AcmeConfig) -> Result<Arc<Acme>, String> {
        make_dir(&cfg.dir).map_err(|e| {
            format!(
                "tls.acme_dir: cannot create {}: {e} (it holds the ACME account and certificate: a writable folder, a volume shared by the replicas)",
                cfg.dir.display()
            )
        })?;
        let placeholder = self_signed(cfg.domains.clone(), None)?;
        let me = Arc::new(Acme {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(placeholder)),
            issued: RwLock::new(None),
            answers: Mutex::new(HashMap::new()),
            refused: Mutex::new(None),
            last_error: RwLock::new(None),
            jitter: rand::random::<f64>() * MAX_JITTER,
            begun: Default::default(),
        });
        me.reload();
        Ok(me)
    }

    /// Starts ordering and renewing (once; later calls do nothing). Called by the HTTPS listener
    /// when it accepts, so that the CA's check finds it answering.
    pub fn begin(self: &Arc<Self>) {
        if !self.begun.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(self)));
        }
    }

    /// Why `readyz` fails: no certificate issued yet, or the one served expired (a renewal that
    /// fails while the certificate is still good is logged and shown by `doctor`, not here: it
    /// would take every replica out at once while they all still work).
    pub fn problem(&self) -> Option<String> {
        let issued = self.issued.read().ok().and_then(|i| i.clone());
        let last = self.last_error.read().ok().and_then(|e| e.clone());
        let why = last.map(|e| format!(": {e}")).unwrap_or_default();
        match issued {
            None => Some(format!(
                "no certificate from {} yet{}",
                self.cfg.directory,
                if why.is_empty() {
                    " (ordering; a self-signed placeholder is served meanwhile)".to_string()
                } else {
                    why
                }
            )),
            Some(i) if i.not_after <= SystemTime::now() => Some(format!(
                "the certificate expired at {} and was not renewed{why}",
                humantime::format_rfc3339_seconds(i.not_after)
            )),
            Some(_) => None,
        }
    }

    /// The certificate in use, when it is due, and the last failure: this process's, else the
    /// one stored in the folder by whichever process last tried.
    pub fn status(&self) -> Status {
        let issued = self.issued.read().ok().and_then(|i| i.clone());
        let (last_error_at, last_error) = match self.stored_error() {
            Some((at, e)) => (Some(at), Some(e)),
            None => (None, self.last_error.read().ok().and_then(|e| e.clone())),
        };
        Status {
            renew_at: issued.as_ref().and_then(|i| self.renew_at(i)),
            renew_from: issued
                .as_ref()
                .and_then(|i| self.renew_with_jitter(i, MAX_JITTER)),
            issued,
            last_error,
            last_error_at,
        }
    }

    /// The failure stored in `last-error.txt`: its time (first line, RFC 3339) and message.
    fn stored_error(&self) -> Option<(SystemTime, String)> {
        let text = std::fs::read_to_string(self.cfg.dir.join(ERROR_FILE)).ok()?;
        let (at, message) = text.split_once('\n')?;
        let at = humantime::parse_rfc3339(at.trim()).ok()?;
        Some((at, message.trim().to_string()))
    }

    /// Records the last attempt's outcome in the folder: `Some` failure, or `None` (a success).
    fn store_outcome(&self, failure: Option<&str>) {
        let path = self.cfg.dir.join(ERROR_FILE);
        let written = match failure {
            Some(e) => write_private(
                &path,
                format!(
                    "{}\n{e}\n",
                    humantime::format_rfc3339_seconds(SystemTime::now())
                )
                .as_bytes(),
            ),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the last ACME attempt in the folder");
        }
    }

    async fn store_outcome_off_thread(self: &Arc<Self>, failure: Option<String>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.store_outcome(failure.as_deref())).await;
    }

    pub fn config(&self) -> &AcmeConfig {
        &self.cfg
    }

    /// The HTTP-01 answer for `token` while an order waits for it.
    pub fn http01(&self, token: &str) -> Option<String> {
        if token.is_empty()
            || token.len() > 256
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let p = self.cfg.dir.join("challenges/http-01").join(token);
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// When the certificate `i` is due for renewal: two thirds of its life, less the jitter;
    /// `None` (now) when it does not name every domain.
    fn renew_at(&self, i: &Issued) -> Option<SystemTime> {
        self.renew_with_jitter(i, self.jitter)
    }

    fn renew_with_jitter(&self, i: &Issued, jitter: f64) -> Option<SystemTime> {
        if !self.cfg.domains.iter().all(|d| i.names.contains(d)) {
            return None;
        }
        let life = i.not_after.duration_since(i.not_before).unwrap_or_default();
        Some(i.not_before + life.mul_f64(2.0 / 3.0 - jitter))
    }

    /// True when there is no certificate, or it is due.
    fn due(&self) -> bool {
        match self.issued.read().ok().and_then(|i| i.clone()) {
            None => true,
            Some(i) => self.renew_at(&i).is_none_or(|at| at <= SystemTime::now()),
        }
    }

    /// Serves `certificate.pem` if it changed since it was last read.
    fn reload(&self) {
        let path = self.cfg.dir.join(CERT_FILE);
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let Some(stamp) = stamp else { return };
        if self
            .issued
            .read()
            .is_ok_and(|i| i.as_ref().is_some_and(|i| i.stamp == Some(stamp)))
        {
            return;
        }
        if self.refused.lock().is_ok_and(|r| *r == Some(stamp)) {
            return;
        }
        let read = super::load(&path, &path)
            .map_err(|e| e.message)
            .and_then(|ck| {
                let leaf = ck.cert.first().ok_or("no certificate")?.clone();
                Ok((ck, describe(&leaf, stamp)?))
            });
        match read {
            Ok((ck, issued)) => {
                super::expiry_gauge(issued.not_after);
                tracing::info!(
                    names = %issued.names.join(","),
                    serial = %issued.serial,
                    not_after = %humantime::format_rfc3339_seconds(issued.not_after),
                    "TLS certificate from the ACME CA served"
                );
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(ck);
                }
                if let Ok(mut i) = self.issued.write() {
                    *i = Some(issued);
                }
            }
            Err(e) => {
                // Not read again until it changes. With nothing issued yet, the loop orders one
                // (and writes it over this file); else the certificate served stays, due as before.
                let serving = self.issued.read().is_ok_and(|i| i.is_some());
                if serving {
                    tracing::error!(file = %path.display(), problem = %e, "the stored ACME certificate cannot be used; the one served stays until its renewal");
                } else {
                    tracing::error!(file = %path.display(), problem = %e, "the stored ACME certificate cannot be used; a new one will be ordered");
                }
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(stamp);
                }
            }
        }
    }

    async fn reload_off_thread(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.reload()).await;
    }

    /// One attempt: under the folder's lock, order a certificate if it is still due.
    async fn attempt(self: &Arc<Self>) -> Result<Attempt, String> {
        let dir = self.cfg.dir.clone();
        let lock = tokio::task::spawn_blocking(move || try_lock(&dir))
            .await
            .map_err(|e| e.to_string())??;
        let Some(_lock) = lock else {
            return Ok(Attempt::Busy);
        };
        // Another replica may have just renewed.
        self.reload_off_thread().await;
        if !self.due() {
            return Ok(Attempt::Done);
        }
        let http = Http::new(&self.cfg)?;
        let account = self.account(&http, false).await?;
        let pem = match self.order(&account).await {
            Err(Failure::UnknownAccount) => {
                tracing::warn!("the ACME CA no longer knows the stored account: making a new one");
                let account = self.account(&http, true).await?;
                self.order(&account).await.map_err(Failure::into_message)?
            }
            r => r.map_err(Failure::into_message)?,
        };
        write_private(&self.cfg.dir.join(CERT_FILE), pem.as_bytes()).map_err(|e| {
            format!(
                "cannot write the certificate into {}: {e}",
                self.cfg.dir.display()
            )
        })?;
        self.reload_off_thread().await;
        Ok(Attempt::Done)
    }

    /// The stored account for this directory, or a new one (stored).
    async fn account(&self, http: &Http, fresh: bool) -> Result<Account, String> {
        let path = self.cfg.dir.join(ACCOUNT_FILE);
        let directory = self.cfg.directory.to_string();
        if !fresh {
            if let Ok(bytes) = std::fs::read(&path) {
                match serde_json::from_slice::<StoredAccount>(&bytes) {
                    Ok(stored) if stored.directory == directory => {
                        return Account::builder_with_http(Box::new(http.clone()))
                            .from_credentials(stored.credentials)
                            .await
                            .map_err(|e| self.explain(&e, None));
                    }
                    Ok(_) => tracing::info!(
                        "tls.acme_directory changed: making an account with the new CA"
                    ),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "unreadable ACME account file: making a new account")
                    }
                }
            }
        }
        let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(|c| c.as_str()).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(|e| self.explain(&e, None))?;
        let stored = serde_json::to_vec(&StoredAccount {
            directory,
            credentials,
        })
        .map_err(|e| e.to_string())?;
        write_private(&path, &stored)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tracing::info!(id = account.id(), "ACME account made");
        Ok(account)
    }

    /// Orders a certificate for every domain: key then chain, PEM.
    async fn order(&self, account: &Account) -> Result<String, Failure> {
        let ids: Vec<Identifier> = self
            .cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        tracing::info!(domains = %self.cfg.domains.join(","), directory = %self.cfg.directory, "ordering a TLS certificate over ACME");
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| self.failure(&e, None))?;
        let mut written = Vec::new();
        let result = self.complete(&mut order, &mut written).await;
        for p in written {
            let _ = std::fs::remove_file(p);
        }
        metrics::counter!("unikgate_acme_orders_total", "result" => if result.is_ok() { "issued" } else { "failed" }).increment(1);
        result
    }

    async fn complete(
        &self,
        order: &mut Order,
        written: &mut Vec<PathBuf>,
    ) -> Result<String, Failure> {
        let kind = match self.cfg.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let mut a = a.map_err(|e| self.failure(&e, None))?;
                let domain = a.identifier().to_string();
                match a.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Failure::Message(format!(
                            "the CA's authorization for {domain} is {other:?}"
                        )))
                    }
                }
                let mut ch = a.challenge(kind.clone()).ok_or_else(|| {
                    Failure::Message(format!(
                        "the CA offers no {} challenge for {domain}: set tls.acme_challenge to the other one",
                        challenge_name(self.cfg.challenge)
                    ))
                })?;
                let ka = ch.key_authorization();
                let path = match self.cfg.challenge {
                    AcmeChallenge::TlsAlpn01 => {
                        self.cfg.dir.join("challenges/tls-alpn-01").join(&domain)
                    }
                    AcmeChallenge::Http01 => {
                        self.cfg.dir.join("challenges/http-01").join(&ch.token)
                    }
                };
                write_private(&path, ka.as_str().as_bytes()).map_err(|e| {
                    Failure::Message(format!("cannot write {}: {e}", path.display()))
                })?;
                written.push(path);
                ch.set_ready()
                    .await
                    .map_err(|e| self.failure(&e, Some(&domain)))?;
            }
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&polling)
            .await
            .map_err(|e| self.failure(&e, None))?;
        if status != OrderStatus::Ready {
            return Err(Failure::Message(self.why_invalid(order).await));
        }
        let key_pem = order.finalize().await.map_err(|e| self.failure(&e, None))?;
        let chain = order
            .poll_certificate(&polling)
            .await
            .map_err(|e| self.failure(&e, None))?;
        Ok(format!("{key_pem}{chain}"))
    }

    /// The CA's own words on why an order became invalid: the failed challenge's error.
    async fn why_invalid(&self, order: &mut Order) -> String {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            let domain = a.identifier().to_string();
            if let Ok(state) = a.refresh().await {
                for c in &state.challenges {
                    if let Some(p) = &c.error {
                        return self.explain_problem(p, Some(&domain));
                    }
                }
            }
        }
        "the CA marked the order invalid without saying why".into()
    }

    fn failure(&self, e: &instant_acme::Error, domain: Option<&str>) -> Failure {
        if let instant_acme::Error::Api(p) = e {
            if problem_kind(p) == "accountDoesNotExist" {
                return Failure::UnknownAccount;
            }
        }
        Failure::Message(self.explain(e, domain))
    }

    /// A failure in words that say what to check.
    fn explain(&self, e: &instant_acme::Error, domain: Option<&str>) -> String {
        match e {
            instant_acme::Error::Api(p) => self.explain_problem(p, domain),
            instant_acme::Error::Other(inner) if inner.downcast_ref::<Transport>().is_some() => {
                format!(
                    "cannot reach the ACME CA at {}: {inner}: check tls.acme_directory and that this host can open HTTPS connections to it{}",
                    self.cfg.directory,
                    if self.cfg.ca_file.is_none() {
                        " (a private CA's root goes in tls.acme_ca_file)"
                    } else {
                        ""
                    }
                )
            }
            instant_acme::Error::Timeout(_) => format!(
                "the ACME CA did not finish the order within {} s",
                ORDER_TIMEOUT.as_secs()
            ),
            other => format!("ACME: {other}"),
        }
    }

    fn explain_problem(&self, p: &Problem, domain: Option<&str>) -> String {
        let detail = p.detail.clone().unwrap_or_default();
        let name = domain
            .map(|d| d.to_string())
            .unwrap_or_else(|| self.cfg.domains.join(", "));
        match problem_kind(p) {
            "rateLimited" => format!(
                "rate limited by the ACME CA: {detail} (unikgate tries again later, waiting longer each time)"
            ),
            "unauthorized" | "connection" | "dns" | "tls" | "incorrectResponse" | "caa" => {
                let port = match self.cfg.challenge {
                    AcmeChallenge::TlsAlpn01 => "443 (tls-alpn-01) reaches unikgate's server.listen",
                    AcmeChallenge::Http01 => "80 (http-01) reaches unikgate's server.http_listen",
                };
                format!(
                    "the ACME CA could not check that {name} is served here: {detail}: check that DNS for {name} points at this host and that port {port}"
                )
            }
            "rejectedIdentifier" | "malformed" => {
                format!("the ACME CA will not issue for {name}: {detail}: check tls.domains")
            }
            "externalAccountRequired" => format!(
                "the ACME CA requires an external account binding, which unikgate does not send: {detail}"
            ),
            kind => format!("the ACME CA refused ({kind}): {detail}"),
        }
    }

    /// The TLS-ALPN-01 answer for `domain` from its challenge file, made once per key
    /// authorization.
    fn answer(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let p = self.cfg.dir.join("challenges/tls-alpn-01").join(domain);
        let ka = std::fs::read_to_string(p).ok()?.trim().to_string();
        let mut answers = self.answers.lock().ok()?;
        if let Some((k, cert)) = answers.get(domain) {
            if *k == ka {
                return Some(cert.clone());
            }
        }
        let digest = sha2::Sha256::digest(ka.as_bytes());
        let ext = rcgen::CustomExtension::new_acme_identifier(&digest);
        let cert = match self_signed(vec![domain.to_string()], Some(ext)) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(problem = %e, "cannot make the TLS-ALPN-01 answer");
                return None;
            }
        };
        answers.insert(domain.to_string(), (ka, cert.clone()));
        Some(cert)
    }
}

impl ResolvesServerCert for Acme {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered: Vec<&[u8]> = hello.alpn().map(|a| a.collect()).unwrap_or_default();
        if !offered.is_empty() && offered.iter().all(|p| *p == ACME_TLS_ALPN) {
            // The CA's TLS-ALPN-01 check: only for a configured name, only while an order waits.
            let name = hello.server_name()?.to_ascii_lowercase();
            if !self.cfg.domains.contains(&name) {
                return None;
            }
            return self.answer(&name);
        }
        self.current.read().ok().map(|c| c.clone())
    }
}

enum Attempt {
    Done,
    /// Another process holds the lock (it is ordering).
    Busy,
}

enum Failure {
    UnknownAccount,
    Message(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::UnknownAccount => "the ACME CA does not know the account it just made".into(),
            Failure::Message(m) => m,
        }
    }
}

/// The loop: look at the folder, order when due, back off after a failure. Ends when the
/// certificate source is dropped.
async fn run(me: Weak<Acme>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = {
            let Some(me) = me.upgrade() else { return };
            me.reload_off_thread().await;
            if !me.due() {
                LOOK_EVERY
            } else {
                match me.attempt().await {
                    Ok(Attempt::Done) => {
                        backoff = FIRST_BACKOFF;
                        if let Ok(mut e) = me.last_error.write() {
                            *e = None;
                        }
                        me.store_outcome_off_thread(None).await;
                        LOOK_EVERY
                    }
                    Ok(Attempt::Busy) => LOOK_EVERY,
                    Err(e) => {
                        let wait = backoff.mul_f64(0.9 + rand::random::<f64>() * 0.2);
                        tracing::error!(problem = %e, retry_in_s = wait.as_secs(), "no TLS certificate from the ACME CA");
                        me.store_outcome_off_thread(Some(e.clone())).await;
                        if let Ok(mut last) = me.last_error.write() {
                            *last = Some(e);
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// `urn:ietf:params:acme:error:rateLimited` → `rateLimited`.
fn problem_kind(p: &Problem) -> &str {
    p.r#type
        .as_deref()
        .map(|t| t.rsplit(':').next().unwrap_or(t))
        .unwrap_or("")
}

fn challenge_name(c: AcmeChallenge) -> &'static str {
    match c {
        AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        AcmeChallenge::Http01 => "http-01",
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The dates, names and serial of an issued certificate.
fn describe(leaf: &CertificateDer<'_>, stamp: (SystemTime, u64)) -> Result<Issued, String> {
    let l = super::leaf(leaf)?;
    Ok(Issued {
        stamp: Some(stamp),
        not_before: l.not_before,
        not_after: l.not_after,
        names: l.names,
        serial: l.serial,
    })
}

/// A self-signed certificate for `names` (the placeholder, or a TLS-ALPN-01 answer with `ext`).
fn self_signed(
    names: Vec<String>,
    ext: Option<rcgen::CustomExtension>,
) -> Result<CertifiedKey, String> {
    let mut p = rcgen::CertificateParams::new(names).map_err(|e| format!("TLS: {e}"))?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "unikgate (waiting for the ACME certificate)",
    );
    if let Some(e) = ext {
        p.custom_extensions.push(e);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("TLS: {e}"))?;
    let cert = p.self_signed(&key).map_err(|e| format!("TLS: {e}"))?;
    // Not `CertifiedKey::from_der`: its check that key and certificate match parses the
    // certificate with webpki, which refuses the critical acmeIdentifier extension. They match:
    // the certificate was just made with this key.
    let signer = super::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes `bytes` to `path` whole (a temporary file renamed over it), readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        make_dir(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The folder's order lock, or `None` when another process holds it.
fn try_lock(dir: &Path) -> Result<Option<std::fs::File>, String> {
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// A transport failure talking to the CA (told apart from the CA's answers in [`Acme::explain`]).
#[derive(Debug)]
struct Transport(String);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transport {}

/// The HTTP client instant-acme talks to the CA with: reqwest (the public roots, plus
/// `tls.acme_ca_file`), each request bounded by [`HTTP_TIMEOUT`].
#[derive(Clone)]
struct Http(reqwest::Client);

impl Http {
    fn new(cfg: &AcmeConfig) -> Result<Http, String> {
        client(cfg, HTTP_TIMEOUT).map(Http)
    }
}

/// A client to the CA of `cfg`: the public roots plus `tls.acme_ca_file`, each request bounded
/// by `timeout` (connecting by 10 s at most). `doctor` asks the directory with it too.
pub fn client(cfg: &AcmeConfig, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("unikgate/", env!("CARGO_PKG_VERSION"), " (ACME)"));
    if let Some(f) = &cfg.ca_file {
        for root in super::read_roots(f).map_err(|e| format!("tls.acme_ca_file: {e}"))? {
            let c = reqwest::Certificate::from_der(root.as_ref())
                .map_err(|e| format!("tls.acme_ca_file: {e}"))?;
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| format!("ACME client: {e}"))
}

/// A reqwest error with its causes (`error sending request: …: Connection refused`), without
/// which a failed connection says too little to act on.
pub fn in_words(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn transport(e: reqwest::Error) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(Transport(in_words(&e))))
}

impl instant_acme::HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let res = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(transport)?;
            let mut head = http::Response::builder().status(res.status());
            for (k, v) in res.headers() {
                head = head.header(k, v);
            }
            let bytes = res.bytes().await.map_err(transport)?;
            let (parts, ()) = head
                .body(())
                .map_err(instant_acme::Error::Http)?
                .into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn acme(dir: &Path) -> Acme {
        Acme {
            cfg: AcmeConfig {
                directory: "https://ca.example/dir".parse().expect("url"),
                email: None,
                domains: vec!["a.example".into()],
                ca_file: None,
                dir: dir.to_path_buf(),
                challenge: AcmeChallenge::TlsAlpn01,
            },
            current: RwLock::new(Arc::new(
                self_signed(vec!["a.example".into()], None).expect("placeholder"),
            )),
            issued: RwLock::new(None),
            answers: Mutex::new(HashMap::new()),
            refused: Mutex::new(None),
            last_error: RwLock::new(None),
            jitter: 0.0,
            begun: Default::default(),
        }
    }

    fn problem(kind: &str, detail: &str) -> Problem {
        serde_json::from_value(serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{kind}"),
            "detail": detail,
            "status": 400,
        }))
        .expect("problem")
    }

    #[test]
    fn each_problem_of_the_ca_says_what_to_check() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        let m = a.explain_problem(&problem("rateLimited", "too many certificates"), None);
        assert!(
            m.starts_with("rate limited by the ACME CA: too many certificates"),
            "{m}"
        );
        let m = a.explain_problem(
            &problem("connection", "connection refused"),
            Some("a.example"),
        );
        assert!(
            m.contains("could not check that a.example is served here: connection refused"),
            "{m}"
        );
        assert!(m.contains("DNS for a.example points at this host"), "{m}");
        assert!(m.contains("443 (tls-alpn-01)"), "{m}");
        let m = a.explain_problem(&problem("rejectedIdentifier", "forbidden name"), None);
        assert!(m.contains("will not issue for a.example"), "{m}");
        let m = a.explain(
            &instant_acme::Error::Other(Box::new(Transport("connection refused".into()))),
            None,
        );
        assert!(
            m.starts_with("cannot reach the ACME CA at https://ca.example/dir"),
            "{m}"
        );
        assert!(m.contains("tls.acme_ca_file"), "{m}");
        assert!(matches!(
            a.failure(
                &instant_acme::Error::Api(problem("accountDoesNotExist", "gone")),
                None
            ),
            Failure::UnknownAccount
        ));
    }

    #[test]
    fn until_a_certificate_is_issued_readyz_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        let p = a.problem().expect("a problem");
        assert!(
            p.starts_with("no certificate from https://ca.example/dir yet (ordering"),
            "{p}"
        );
        *a.last_error.write().expect("lock") = Some("cannot reach".into());
        assert_eq!(
            a.problem().as_deref(),
            Some("no certificate from https://ca.example/dir yet: cannot reach")
        );
        assert!(a.due());
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life_or_when_a_name_is_missing() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut i = Issued {
            stamp: None,
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
            names: vec!["a.example".into()],
            serial: "01".into(),
        };
        assert_eq!(
            a.renew_at(&i),
            Some(start + Duration::from_secs(60 * 86400))
        );
        i.names = vec!["b.example".into()];
        assert_eq!(a.renew_at(&i), None);
    }

    #[test]
    fn http01_answers_only_a_token_it_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        write_private(
            &dir.path().join("challenges/http-01/tok_EN-1"),
            b"tok_EN-1.thumb\n",
        )
        .expect("write");
        assert_eq!(a.http01("tok_EN-1").as_deref(), Some("tok_EN-1.thumb"));
        assert_eq!(a.http01("other"), None);
        assert_eq!(a.http01("../account.json"), None);
        assert_eq!(a.http01(""), None);
    }

    #[test]
    fn an_unusable_stored_certificate_is_refused_once_and_a_good_one_then_served() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        let file = dir.path().join(CERT_FILE);
        write_private(&file, b"not a certificate").expect("write");
        a.reload();
        assert!(a.issued.read().expect("lock").is_none());
        assert!(a.refused.lock().expect("lock").is_some(), "its stamp kept");
        assert!(a.due(), "ordered anew");
        // What an order writes: the key, then the chain.
        let p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        let k = rcgen::KeyPair::generate().expect("key");
        let c = p.self_signed(&k).expect("cert");
        write_private(
            &file,
            format!("{}{}", k.serialize_pem(), c.pem()).as_bytes(),
        )
        .expect("write");
        a.reload();
        let issued = a.issued.read().expect("lock").clone().expect("served");
        assert_eq!(issued.names, vec!["a.example".to_string()]);
        assert!(!a.due(), "a fresh certificate is not due");
    }

    #[test]
    fn a_tls_alpn_01_answer_is_made_from_the_challenge_file() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        assert!(a.answer("a.example").is_none(), "no order waiting");
        write_private(
            &dir.path().join("challenges/tls-alpn-01/a.example"),
            b"tok.thumb",
        )
        .expect("write");
        let cert = a.answer("a.example").expect("an answer");
        let (_, x) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).expect("x509");
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the SHA-256 of the key authorization.
        assert_eq!(
            &ext.value[2..],
            sha2::Sha256::digest(b"tok.thumb").as_slice()
        );
    }

    #[test]
    fn the_last_failure_is_kept_in_the_folder_until_a_success() {
        let dir = tempfile::tempdir().expect("dir");
        let a = acme(dir.path());
        assert!(a.status().last_error.is_none());
        *a.last_error.write().expect("lock") = Some("in memory".into());
        let s = a.status();
        assert_eq!(
            (s.last_error.as_deref(), s.last_error_at),
            (Some("in memory"), None)
        );
        let before = SystemTime::now() - Duration::from_secs(1);
        a.store_outcome(Some("cannot reach the ACME CA"));
        let s = a.status();
        assert_eq!(s.last_error.as_deref(), Some("cannot reach the ACME CA"));
        assert!(s.last_error_at.is_some_and(|t| t >= before));
        // Another process on the folder (doctor) reads it.
        let other = acme(dir.path());
        assert_eq!(
            other.status().last_error.as_deref(),
            Some("cannot reach the ACME CA")
        );
        a.store_outcome(None);
        assert!(other.status().last_error.is_none());
        a.store_outcome(None);
    }

    #[test]
    fn the_order_lock_is_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().expect("dir");
        let first = try_lock(dir.path()).expect("lock");
        assert!(first.is_some());
        assert!(try_lock(dir.path()).expect("second").is_none());
        drop(first);
        assert!(try_lock(dir.path()).expect("third").is_some());
    }
}
