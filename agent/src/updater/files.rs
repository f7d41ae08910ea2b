//! The names of the files beside the binary (`<bin>.new`, `<bin>.old`,
//! `<bin>.update-marker`); the helpers every step around them uses are in
//! [`crate::files`].
use std::path::{Path, PathBuf};

use crate::files::with_suffix;

/// `<bin>.new`: the download, until it is renamed over the binary.
pub fn new_path(bin: &Path) -> PathBuf {
    with_suffix(bin, ".new")
}

/// `<bin>.old`: a copy of the binary that ran before the swap; the boot
/// watchdog puts it back when the new one fails.
pub fn old_path(bin: &Path) -> PathBuf {
    with_suffix(bin, ".old")
}

/// `<bin>.update-marker`: see [`UpdateMarker`].
pub fn marker_path(bin: &Path) -> PathBuf {
    with_suffix(bin, ".update-marker")
}
