//! Backup and restore of a management service's state: a consistent snapshot of the database
//! (SQLite's `VACUUM INTO`, safe while the service runs and writes) and the server key, so that
//! a restored service is the same server to its peers.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::service::{DB_FILE, KEY_FILE, private_dir};

/// Writes `data_dir`'s state into `out_dir` (created; it must not hold a backup already).
pub fn backup(data_dir: &Path, out_dir: &Path) -> Result<()> {
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        bail!(
            "{} has no {DB_FILE}: nothing to back up",
            data_dir.display()
        );
    }
    private_dir(out_dir)?;
    let target = out_dir.join(DB_FILE);
    if target.exists() {
        bail!(
            "{} exists: back up into an empty directory",
            target.display()
        );
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("open {}", db.display()))?;
    conn.execute(
        "VACUUM INTO ?1",
        [target.to_str().context("backup path is not UTF-8")?],
    )
    .context("snapshot the database")?;
    copy_private(&data_dir.join(KEY_FILE), &out_dir.join(KEY_FILE))?;
    check_readable(&target)
}

/// Puts a backup into `data_dir`. Refuses a directory that holds a database unless `replace`
/// (the service must be stopped then: it keeps the account in memory).
pub fn restore(backup_dir: &Path, data_dir: &Path, replace: bool) -> Result<()> {
    let source = backup_dir.join(DB_FILE);
    check_readable(&source)
        .with_context(|| format!("{} is not a usable backup", backup_dir.display()))?;
    private_dir(data_dir)?;
    let db = data_dir.join(DB_FILE);
    if db.exists() && !replace {
        bail!(
            "{} holds a database; restore into an empty directory or pass --replace with the service stopped",
            data_dir.display()
        );
    }
    for stale in ["management.db-wal", "management.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    copy_private(&source, &db)?;
    copy_private(&backup_dir.join(KEY_FILE), &data_dir.join(KEY_FILE))
}

fn copy_private(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The copy must be a database whose account loads, or it is no backup.
fn check_readable(db: &Path) -> Result<()> {
    let store = crate::store::Store::open(db)?;
    store.load().map(|_| ()).context("the copy does not load")
}
