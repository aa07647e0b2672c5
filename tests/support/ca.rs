//! A test certificate authority (rcgen): a CA and the server certificates it signs, for the
//! HTTPS tests, the real-Matomo journey over https, and pebble's own HTTPS listener.

use std::path::Path;

pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("unikgate test CA {name}"),
        );
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let k = rcgen::KeyPair::generate().expect("leaf key");
        let c = p.signed_by(&k, &self.issuer).expect("leaf certificate");
        (c.pem(), k.serialize_pem())
    }

    /// Writes a server certificate for `localhost` and 127.0.0.1 and its key to `cert` and
    /// `key`: the certificate written whole under another name, then renamed, as a renewal tool
    /// does.
    pub fn issue(&self, cert: &Path, key: &Path) {
        let (c, k) = self.leaf(&["localhost", "127.0.0.1"]);
        let tmp = cert.with_extension("new");
        std::fs::write(&tmp, c).expect("write certificate");
        std::fs::write(key, k).expect("write key");
        std::fs::rename(&tmp, cert).expect("rename certificate");
    }
}
