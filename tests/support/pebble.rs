//! Let's Encrypt's test CA for the ACME tests: Debian's `pebble`, with `pebble-challtestsrv` as
//! its DNS (every name is 127.0.0.1), on free loopback ports, stopped when dropped. Its own HTTPS
//! listener has a certificate of a test CA (`ca_file`); the certificates it issues chain to a
//! root it makes at start (`issuing_root`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ca::Ca;

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The root of pebble's own HTTPS listener (for `tls.acme_ca_file`).
    pub ca_file: PathBuf,
    mgmt: SocketAddr,
    log: PathBuf,
    children: Vec<Child>,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port` of
    /// 127.0.0.1; `validity` sets the life of the certificates it issues.
    pub async fn start(tls_port: u16, http_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("pebble");
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("cert.pem"), cert).expect("write");
        std::fs::write(p("key.pem"), key).expect("write");
        std::fs::write(p("ca.pem"), &ca.pem).expect("write");
        let (listen, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let mut conf = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": p("cert.pem"),
            "privateKey": p("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            conf["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        std::fs::write(p("pebble.json"), conf.to_string()).expect("write");
        let log = p("pebble.log");
        let dns_log = std::fs::File::create(p("dns.log")).expect("log");
        let challtest = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ])
            .stdout(dns_log.try_clone().expect("log"))
            .stderr(dns_log)
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) must be installed");
        // Its DNS answers before pebble asks it anything.
        let mut up = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", dns))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", dns_mgmt))
                    .await
                    .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            up,
            "pebble-challtestsrv did not start: {}",
            std::fs::read_to_string(p("dns.log")).unwrap_or_default()
        );
        let out = std::fs::File::create(&log).expect("log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(p("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleeps before validating; every good nonce accepted; every order
            // validated afresh (a renewal proves the challenge again).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out.try_clone().expect("log"))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("pebble (Debian package pebble) must be installed");
        let me = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file: p("ca.pem"),
            mgmt: ([127, 0, 0, 1], mgmt).into(),
            log,
            children: vec![challtest, pebble],
            ca_pem: ca.pem.clone(),
            _dir: dir,
        };
        let c = me.client();
        for _ in 0..100 {
            if c.get(&me.directory)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return me;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pebble did not answer: {}", me.log_text());
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("pem"),
            )
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    }

    /// The root the certificates pebble issues chain to (PEM).
    pub async fn issuing_root(&self) -> String {
        self.client()
            .get(format!("https://{}/roots/0", self.mgmt))
            .send()
            .await
            .expect("pebble roots")
            .text()
            .await
            .expect("root")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> usize {
        self.log_text().matches("Issued certificate serial").count()
    }

    /// Orders made so far.
    pub fn orders(&self) -> usize {
        self.log_text()
            .lines()
            .filter_map(|l| l.split("There are now ").nth(1))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The certificate `addr` serves for `domain`, verified against `root` only: its serial (DER,
/// hex) and the protocol ALPN chose (h2 and http/1.1 offered). `Err` when the handshake or the
/// verification fails.
pub async fn served(
    addr: std::net::SocketAddr,
    domain: &str,
    root: &str,
) -> Result<(String, Option<Vec<u8>>), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut cc = rustls::ClientConfig::builder_with_provider(unikgate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cc)).connect(name, tcp),
    )
    .await
    .map_err(|_| "no handshake within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok((
        x.raw_serial_as_string(),
        conn.alpn_protocol().map(|p| p.to_vec()),
    ))
}
