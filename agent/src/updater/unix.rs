//! The Unix swap: a file may be renamed over a running executable (the
//! process keeps its open inode), so the swap is one atomic rename. Also
//! the watchdog's way back: rename `<bin>.old` over the binary.

use std::path::Path;

use super::{UpdateError, io_error, old_path, parent_dir, remove_quietly, sync_dir};

/// Keeps a durable copy of the running binary as `<bin>.old`, renames
/// `staged` over `bin` and fsyncs the directory.
pub(super) fn swap(
    bin: &Path,
    staged: &Path,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<(), UpdateError> {
    let old = old_path(bin);
    // Never `fs::copy`: it would write through a symlink planted as `.old`.
    let copied = (|| {
        let mut from = std::fs::File::open(bin)?;
        let mut to = super::files::create_fresh(&old, 0o755)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()
    })();
    if let Err(e) = copied {
        remove_quietly(&old);
        return Err(io_error("copy the running binary to", &old)(e));
    }
    log(format!("kept the running binary as {}", old.display()));

    std::fs::rename(staged, bin).map_err(io_error("rename the new binary over", bin))?;
    // The rename has happened; a failed fsync only weakens its durability
    // across a power cut, which is no reason to report the update failed.
    match sync_dir(parent_dir(bin)) {
        Ok(()) => log(format!("swapped the new binary into {}", bin.display())),
        Err(e) => log(format!(
            "swapped the new binary into {} (warning: fsync of its directory failed: {e})",
            bin.display()
        )),
    }
    Ok(())
}

/// Puts `<bin>.old` back over `bin` (the boot watchdog's rollback).
pub(super) fn restore_old(bin: &Path) -> std::io::Result<()> {
    std::fs::rename(old_path(bin), bin)?;
    sync_dir(parent_dir(bin))
}
