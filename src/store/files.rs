//! The database file: its identity (device and inode), whether it is still the one opened, and
//! files and directories created private to their owner.

use std::path::Path;

use super::StoreError;

/// The identity of a file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

impl FileId {
    /// The identity of the file at `path` now; `None` where the platform has no inodes.
    pub fn of(path: &Path) -> std::io::Result<Option<FileId>> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(Some(FileId { dev: meta.dev(), ino: meta.ino() }))
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Ok(None)
        }
    }
}

/// How the file at `path` is no longer the one whose identity is `id` (`deleted`, `replaced`),
/// logged as the error it is; `None` while it is, or cannot be told.
pub(super) fn file_change(path: &Path, id: FileId) -> Option<&'static str> {
    let how = match FileId::of(path) {
        Ok(Some(now)) if now == id => None,
        Ok(None) => None,
        Ok(Some(_)) => Some("replaced"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("deleted"),
        // Unreadable for a moment (permissions, I/O): not proof of a different file.
        Err(_) => None,
    };
    if let Some(how) = how {
        tracing::error!(
            path = %path.display(),
            "the database file was {how} while in use: refusing every request from now on \
             (held calls are refused, nothing is approved into a file no other process sees); \
             restart mcp-gate"
        );
    }
    how
}

/// Creates a directory (and its missing parents) with mode 0700: the data directory holds the
/// approver token and the database, which no other user may read.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Creates the database file with mode 0600 if it does not exist, and tightens an existing one.
#[cfg(unix)]
pub(super) fn create_private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let perms = std::fs::metadata(path)?.permissions();
    if perms.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn create_private_file(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}
