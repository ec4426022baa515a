//! What the processes of one machine say to each other through the approval server's API:
//! `GET /api/v1/hub` (who serves this address) and `POST /api/v1/hub/announce` (a change a
//! follower made to the shared store). The [`hub`](super::hub) is their client, the
//! [`web`](super::web) API their server.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::approval::ChangeKind;

/// The `service` named by `GET /api/v1/hub`.
pub const SERVICE: &str = "mcp-gate";

/// `GET /api/v1/hub`: who serves this approval address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    pub service: String,
    pub version: String,
    pub pid: u32,
    /// The canonical path of the database file; `None` for `:memory:`.
    pub database: Option<PathBuf>,
    /// The identity (`device:inode`) of the file this process opened at that path. A process whose
    /// file at the same path has another identity does not share its data (the file was deleted or
    /// replaced under one of them) and must not follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
}

impl HubInfo {
    /// This process, serving `store`.
    pub fn here(store: &crate::store::Store) -> HubInfo {
        HubInfo {
            service: SERVICE.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            database: store.path().map(Path::to_path_buf),
            database_id: store.file_id().map(|id| id.to_string()),
        }
    }
}

/// `POST /api/v1/hub/announce`: a change a follower made to the shared store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub kind: ChangeKind,
    pub id: String,
    pub actor: Option<String>,
}
