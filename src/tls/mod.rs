//! The certificates of HTTPS on `server.listen` when `[tls]` is set, and the server side of TLS:
//! rustls (TLS 1.2 and 1.3, its safe defaults, the `ring` provider), ALPN `h2` and `http/1.1`.
//! The certificate comes from PEM files read again when they change (here: a renewal by another
//! tool needs no restart) or from an ACME CA (`acme.rs`: obtained, stored, renewed). The listener
//! (`server/`) accepts with [`Served`]; `readyz` and `doctor` report its problems.
//!
//! Invariants: a certificate is served only once its chain and key have been read, parsed and
//! found to belong together; a changed file that cannot be used leaves the last good certificate
//! in place (logged, and shown by `readyz`); nothing here reads a request.

pub mod acme;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often the certificate files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The crypto provider unikgate uses everywhere (ring: no C toolchain beyond a C compiler).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate served, and why the last attempt to read new files failed (if it did).
#[derive(Debug)]
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times and sizes of the files the current certificate came from.
    seen: RwLock<Stamp>,
    problem: RwLock<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    Stamp(of(cert), of(key))
}

/// Why a certificate pair cannot be used: the key (`cert_file` or `key_file`) and what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls.{}: {}", self.key, self.message)
    }
}

/// Reads a PEM chain and key and checks that they belong together. The messages name the file
/// and what to check.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, FileError> {
    let cert_err = |message: String| FileError {
        key: "cert_file",
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(format!("cannot read {}: {e}", cert_file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            cert_err(format!(
                "{} is not a PEM certificate chain: {e}",
                cert_file.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(cert_err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| FileError {
        key: "key_file",
        message: format!(
            "no usable private key in {} (PEM: PKCS#8, PKCS#1 or SEC1): {e}",
            key_file.display()
        ),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| FileError {
        key: "key_file",
        message: format!(
            "{} is not the key of the certificate in {} ({e}): use the key the certificate was issued for",
            key_file.display(),
            cert_file.display()
        ),
    })
}

impl Certificates {
    /// Reads the files once; an error names the file and the fix.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificates>, FileError> {
        let seen = stamp(cert_file, key_file);
        let ck = load(cert_file, key_file)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            seen: RwLock::new(seen),
            problem: RwLock::new(None),
        }))
    }

    /// Reads the files again if they changed since the certificate in use was read. A pair that
    /// cannot be used keeps the current certificate and is reported.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert_file, &self.key_file);
        if self.seen.read().is_ok_and(|s| *s == now) {
            return;
        }
        match load(&self.cert_file, &self.key_file) {
            Ok(ck) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(ck);
                }
                if let Ok(mut p) = self.problem.write() {
                    *p = None;
                }
                self.gauge();
                tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate read again from its changed files");
            }
            Err(e) => {
                let e = e.to_string();
                let changed = self
                    .problem
                    .read()
                    .map(|p| p.as_deref() != Some(e.as_str()))
                    .unwrap_or(true);
                if changed {
                    tracing::error!(problem = %e, "the changed TLS files cannot be used; the previous certificate is still served");
                }
                if let Ok(mut p) = self.problem.write() {
                    *p = Some(e);
                }
            }
        }
        // Also after a failure: the same broken files are not read again every few seconds (a
        // further change is).
        if let Ok(mut s) = self.seen.write() {
            *s = now;
        }
    }

    /// Why the changed files could not be used, while that lasts.
    pub fn problem(&self) -> Option<String> {
        self.problem.read().ok().and_then(|p| p.clone())
    }

    /// What makes this process unfit to serve: only a certificate served past its expiry. Changed
    /// files that cannot be used are logged (and refused by `check` and `doctor`) but, while the
    /// certificate served is still good, they do not fail `readyz`: every replica reads the same
    /// files, and failing them all would take the whole service out while each still serves.
    pub fn readiness_problem(&self, now: SystemTime) -> Option<String> {
        let served = self.current()?;
        let leaf = leaf(served.cert.first()?).ok()?;
        if leaf.not_after > now {
            return None;
        }
        Some(format!(
            "the certificate served expired at {}{}",
            humantime::format_rfc3339_seconds(leaf.not_after),
            self.problem()
                .map(|p| format!(", and the files cannot replace it: {p}"))
                .unwrap_or_else(|| format!(
                    ": replace {} and {}",
                    self.cert_file.display(),
                    self.key_file.display()
                ))
        ))
    }

    /// Sets the expiry gauge from the certificate served.
    fn gauge(&self) {
        if let Some(l) = self.current().and_then(|c| leaf(c.cert.first()?).ok()) {
            expiry_gauge(l.not_after);
        }
    }

    /// The chain and key served now (`doctor` reads the certificate's names and dates).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }

    /// Looks at the files every [`RELOAD_EVERY`] for as long as the process runs.
    pub fn watch(self: &Arc<Self>) {
        self.gauge();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                let m = me.clone();
                // File reads off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || m.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// `unikgate_tls_certificate_expiry_timestamp_seconds`: when the certificate served expires
/// (files and ACME alike).
pub(crate) fn expiry_gauge(not_after: SystemTime) {
    metrics::gauge!("unikgate_tls_certificate_expiry_timestamp_seconds").set(
        not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    );
}

/// Where the served certificate comes from, as the listener and `readyz` see it.
#[derive(Debug, Clone)]
pub enum Served {
    Files(Arc<Certificates>),
    Acme(Arc<acme::Acme>),
}

impl Served {
    /// Why this process cannot serve HTTPS as it should (`readyz`): no certificate yet, or the one
    /// served expired. A renewal or a replacement that fails while the certificate served is good
    /// is logged and shown by `doctor`, not here.
    pub fn problem(&self) -> Option<String> {
        match self {
            Served::Files(c) => c.readiness_problem(SystemTime::now()),
            Served::Acme(a) => a.problem(),
        }
    }

    /// The ACME side, whose challenges the HTTP listener answers.
    pub fn acme(&self) -> Option<&Arc<acme::Acme>> {
        match self {
            Served::Acme(a) => Some(a),
            Served::Files(_) => None,
        }
    }
}

/// The server side of TLS for `tls`: TLS 1.2 and 1.3, ALPN h2 then http/1.1 (and, with ACME,
/// `acme-tls/1` for the CA's TLS-ALPN-01 check, which no browser offers).
pub fn server_config(served: &Served) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth();
    let mut sc = match served {
        Served::Files(c) => builder.with_cert_resolver(c.clone()),
        Served::Acme(a) => builder.with_cert_resolver(a.clone()),
    };
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if matches!(served, Served::Acme(_)) {
        sc.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(sc))
}

/// A name ACME can certify with the challenges unikgate answers: a DNS name (lower-cased), not
/// an IP address, not a wildcard.
pub fn acme_name(name: &str) -> Result<String, String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if n.starts_with("*.") {
        return Err(
            "a wildcard needs the DNS-01 challenge, which unikgate does not answer: list the names"
                .into(),
        );
    }
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address: ACME certificates here are for DNS names".into());
    }
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err("not a DNS name (letters, digits, hyphens and dots; an internationalised name in its xn-- form)".into());
    }
    Ok(n)
}

/// What a certificate says of itself: the names it is for and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Its DNS names (lower-cased) and IP addresses, from the subject alternative names.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The serial number, hex.
    pub serial: String,
}

/// Reads the names, dates and serial of a certificate (DER).
pub fn leaf(der: &CertificateDer<'_>) -> Result<Leaf, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let v = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(Leaf {
        names,
        not_before: at(v.not_before.timestamp()),
        not_after: at(v.not_after.timestamp()),
        serial: cert.raw_serial_as_string(),
    })
}

/// True when a certificate with these `names` (as [`leaf`] gives them) is valid for `host`, the
/// way browsers match: DNS names without case, a wildcard `*.` standing for exactly one leftmost
/// label, IP addresses only by an IP address name.
pub fn names_host(names: &[String], host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            names.iter().any(|n| match n.strip_prefix("*.") {
                Some(parent) => d
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *n == d,
            })
        }
        url::Host::Ipv4(ip) => names.iter().any(|n| *n == ip.to_string()),
        url::Host::Ipv6(ip) => names.iter().any(|n| *n == ip.to_string()),
    }
}

/// The certificates of a PEM file of extra roots (`tls.acme_ca_file`).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

/// The client side of `unikgate healthcheck` with `[tls]`: it asks its own process on loopback,
/// by an address the certificate does not name, so it checks that TLS answers, not who answers
/// (no certificate is verified: this configuration is used for nothing else). ALPN http/1.1.
pub fn probe_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let mut cc = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cc))
}

/// Accepts any server certificate (signatures are still checked): the health probe's only.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for localhost valid from `from` to `until` (seconds from now), in `dir`.
    fn pair(dir: &Path, name: &str, from: i64, until: i64) -> (PathBuf, PathBuf) {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(from);
        p.not_after = now + time::Duration::seconds(until);
        let k = rcgen::KeyPair::generate().expect("key");
        let c = p.self_signed(&k).expect("cert");
        let (cf, kf) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cf, c.pem()).expect("write");
        std::fs::write(&kf, k.serialize_pem()).expect("write");
        (cf, kf)
    }

    #[test]
    fn readyz_fails_for_files_only_once_the_certificate_served_expired() {
        let dir = tempfile::tempdir().expect("dir");
        let (cf, kf) = pair(dir.path(), "good", -60, 3600);
        let certs = Certificates::from_files(&cf, &kf).expect("good pair");
        assert_eq!(certs.readiness_problem(SystemTime::now()), None);
        let later = SystemTime::now() + Duration::from_secs(7200);
        let p = certs.readiness_problem(later).expect("expired by then");
        assert!(p.starts_with("the certificate served expired at "), "{p}");
        assert!(p.contains(": replace "), "{p}");
        let (cf2, kf2) = pair(dir.path(), "expired", -7200, -3600);
        let expired = Certificates::from_files(&cf2, &kf2).expect("parses");
        assert!(expired.readiness_problem(SystemTime::now()).is_some());
    }

    #[test]
    fn a_host_is_named_as_browsers_match_it() {
        let names: Vec<String> = [
            "a.example.com",
            "*.b.example.com",
            "192.0.2.7",
            "2001:db8::1",
        ]
        .iter()
        .map(|n| n.to_string())
        .collect();
        let dns = |d: &'static str| url::Host::Domain(d);
        assert!(names_host(&names, &dns("a.example.com")));
        assert!(names_host(&names, &dns("A.Example.com.")));
        assert!(names_host(&names, &dns("x.b.example.com")));
        assert!(
            !names_host(&names, &dns("b.example.com")),
            "a wildcard needs a label"
        );
        assert!(
            !names_host(&names, &dns("y.x.b.example.com")),
            "one label only"
        );
        assert!(!names_host(&names, &dns("example.com")));
        assert!(names_host(&names, &url::Host::Ipv4([192, 0, 2, 7].into())));
        assert!(!names_host(&names, &url::Host::Ipv4([192, 0, 2, 8].into())));
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().expect("ip");
        assert!(names_host(&names, &url::Host::Ipv6(v6)));
    }

    #[test]
    fn a_leaf_gives_its_dns_names_and_ip_addresses() {
        let p = rcgen::CertificateParams::new(vec!["Gate.Example.com".into(), "127.0.0.1".into()])
            .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        let l = leaf(cert.der()).expect("leaf");
        assert_eq!(l.names, vec!["gate.example.com", "127.0.0.1"]);
        assert!(l.not_before < l.not_after);
        assert!(leaf(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
