//! The session key: from the configuration, or generated once into the data folder (mode 0600).

use cookie::Key;

/// Reads or creates the session key. From config when set; else a 64-byte key generated once
/// into `<data_dir>/session.key` (mode 0600).
pub fn load_key(
    configured: Option<&secrecy::SecretString>,
    data_dir: Option<&std::path::Path>,
) -> Result<Key, String> {
    use secrecy::ExposeSecret;
    if let Some(k) = configured {
        return Key::try_from(k.expose_secret().as_bytes())
            .map_err(|_| "session.key must be at least 64 bytes".to_string());
    }
    let dir = data_dir
        .ok_or("session.key (or key_file) is required when the store is not a SQLite file")?;
    let path = dir.join("session.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let bytes = hex::decode(s.trim()).map_err(|_| {
                format!(
                    "{} is not a hex key; delete it to make a new one",
                    path.display()
                )
            })?;
            Key::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "{} is shorter than 64 bytes; delete it to make a new one",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut bytes = [0u8; 64];
            rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes[..]);
            write_private(&path, hex::encode(bytes).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new session key");
            Key::try_from(&bytes[..]).map_err(|_| "key generation failed".to_string())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
