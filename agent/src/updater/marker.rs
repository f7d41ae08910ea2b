//! `<bin>.update-marker`: what the boot watchdog knows about the last
//! update (written before the swap, deleted once the new binary proved
//! itself).
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{UpdateError, io_error, parent_dir, remove_quietly, sync_dir, with_suffix};

/// What a marker says about the update it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerState {
    /// The new binary was renamed into place; it has not yet proven itself.
    Swapped,
    /// The boot watchdog put `<bin>.old` back.
    RolledBack,
}

/// `<bin>.update-marker`, JSON. Written before the swap, read by the boot
/// watchdog at every start, deleted once a hello carrying its outcome was
/// acknowledged. `boots` counts starts of the new binary without such an
/// acknowledgement; `reason` says why a rollback happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateMarker {
    pub job_id: i64,
    pub from_version: String,
    pub to_version: String,
    pub state: MarkerState,
    #[serde(default)]
    pub boots: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl UpdateMarker {
    /// `Ok(None)` when there is no marker.
    pub fn load(path: &Path) -> Result<Option<Self>, UpdateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read the update marker", path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| UpdateError::Marker {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Writes atomically (temp file, fsync, rename, fsync the directory):
    /// a crash leaves the previous marker or this one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), UpdateError> {
        let tmp = with_suffix(path, ".tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let written = (|| {
            let mut file = super::files::create_fresh(&tmp, 0o600)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)?;
            sync_dir(parent_dir(path))
        })();
        if written.is_err() {
            remove_quietly(&tmp);
        }
        written.map_err(io_error("write the update marker", path))
    }
}
