//! The gateway's WireGuard identity and registration record, kept in its state directory.
//!
//! `wg.key` holds the private key (mode 0600, generated on first run); `registered` records that a
//! setup key has been used, so later logins present the key alone.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use management_proto::WgKey;

pub struct Identity {
    pub key: WgKey,
    dir: PathBuf,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

impl Identity {
    /// Loads the key from `dir`, or creates the directory (0700) and a new key on first run.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create state directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
        let path = dir.join("wg.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bail!(
                        "{} is readable by others (mode {mode:o}); chmod 600 it",
                        path.display()
                    );
                }
                WgKey::from_base64(&text).with_context(|| format!("{}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = WgKey::generate();
                write_private(&path, &format!("{}\n", key.to_base64()))?;
                tracing::info!(public_key = %key.public(), "generated WireGuard key {}", path.display());
                key
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Identity {
            key,
            dir: dir.to_path_buf(),
        })
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("registered")
    }

    pub fn is_registered(&self) -> bool {
        self.marker().exists()
    }

    pub fn mark_registered(&self, url: &str) -> anyhow::Result<()> {
        write_private(&self.marker(), &format!("{url}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("gateway-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Identity::load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(dir.join("wg.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!first.is_registered());
        first.mark_registered("http://127.0.0.1:1").unwrap();
        let again = Identity::load_or_create(&dir).unwrap();
        assert_eq!(again.key.public(), first.key.public());
        assert!(again.is_registered());
        std::fs::set_permissions(dir.join("wg.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(
            Identity::load_or_create(&dir).is_err(),
            "a key others can read is refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
