//! The names of the files beside the binary (`<bin>.new`, `<bin>.old`,
//! `<bin>.update-marker`); the helpers every step around them uses are in
//! [`crate::files`].
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{parent_dir, with_suffix};

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

/// Creates `path` afresh: whatever is there is unlinked first (a symlink
/// itself, never its target), then the file is created with `O_EXCL` and
/// `O_NOFOLLOW` and `mode`, so a link planted between the two steps fails
/// the creation instead of redirecting the write.
pub(crate) fn create_fresh(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Refuses to update a binary whose directory others could write to: they
/// could swap in their own `.new`, `.old` or marker, or the binary itself,
/// and the agent (often root) would run it.
pub(crate) fn check_binary_dir(bin: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = parent_dir(bin);
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("cannot inspect the directory {}: {e}", dir.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "the directory {} of the agent binary is writable by {} (mode {mode:04o}); \
                 anyone who can write there could replace what the agent runs: \
                 make it writable only by its owner (chmod go-w {}) and update again",
                dir.display(),
                if mode & 0o020 != 0 && mode & 0o002 != 0 {
                    "group and others"
                } else if mode & 0o020 != 0 {
                    "its group"
                } else {
                    "others"
                },
                dir.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = bin;
    Ok(())
}
