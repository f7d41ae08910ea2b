//! The Windows swap (the plan's helper-script path). A running `.exe` cannot
//! be overwritten, so the agent keeps `<bin>.old`, then starts a detached
//! `cmd.exe` script that waits for the service to stop, moves `<bin>.new`
//! over the binary and starts the service again; the agent then exits 0.
//!
//! NOT compiled or tested on the Linux machines this crate is developed on:
//! keep it this small, std-only, and obviously right.

use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{UpdateError, io_error, old_path, remove_quietly, with_suffix};

/// The service the installer registers.
const SERVICE_NAME: &str = "restic-manager-agent";
const DETACHED_PROCESS: u32 = 0x0000_0008;
const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;

pub(super) fn swap(
    bin: &Path,
    staged: &Path,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<(), UpdateError> {
    let old = old_path(bin);
    if let Err(e) = std::fs::copy(bin, &old) {
        remove_quietly(&old);
        return Err(io_error("copy the running binary to", &old)(e));
    }
    log(format!("kept the running binary as {}", old.display()));

    let (bin_text, staged_text) = (bin.display().to_string(), staged.display().to_string());
    // cmd.exe would expand `%` inside the paths.
    if bin_text.contains('%') || staged_text.contains('%') {
        return Err(UpdateError::OwnBinary(format!(
            "the agent path {bin_text} contains '%', which the Windows update helper cannot handle"
        )));
    }
    let script = with_suffix(bin, ".update.cmd");
    let text = helper_script(&bin_text, &staged_text);
    std::fs::write(&script, text).map_err(io_error("write the update helper", &script))?;
    Command::new("cmd.exe")
        .arg("/C")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP)
        .spawn()
        .map_err(io_error("start the update helper", &script))?;
    log(format!(
        "started {}; it moves the new binary into place once the service has stopped",
        script.display()
    ));
    Ok(())
}

/// `timeout` needs a console, which a detached process lacks: `ping` waits.
fn helper_script(bin: &str, staged: &str) -> String {
    [
        "@echo off".to_string(),
        "rem Written by restic-manager-agent to finish a self-update.".to_string(),
        format!("set SVC={SERVICE_NAME}"),
        "ping -n 3 127.0.0.1 >nul".to_string(),
        "sc stop %SVC% >nul 2>&1".to_string(),
        "set /a n=0".to_string(),
        ":wait".to_string(),
        "sc query %SVC% | find \"STOPPED\" >nul".to_string(),
        "if not errorlevel 1 goto stopped".to_string(),
        "set /a n+=1".to_string(),
        "if %n% geq 60 goto stopped".to_string(),
        "ping -n 2 127.0.0.1 >nul".to_string(),
        "goto wait".to_string(),
        ":stopped".to_string(),
        format!("move /Y \"{staged}\" \"{bin}\" >nul"),
        "sc start %SVC% >nul".to_string(),
        "del \"%~f0\"".to_string(),
    ]
    .join("\r\n")
        + "\r\n"
}

/// Puts `<bin>.old` back (the boot watchdog's rollback). A running `.exe`
/// can be renamed but not replaced, so the failed one is moved aside first.
pub(super) fn restore_old(bin: &Path) -> std::io::Result<()> {
    let aside = with_suffix(bin, ".failed");
    let _ = std::fs::remove_file(&aside);
    std::fs::rename(bin, &aside)?;
    if let Err(e) = std::fs::rename(old_path(bin), bin) {
        // Never leave the service without a binary to start.
        let _ = std::fs::rename(&aside, bin);
        return Err(e);
    }
    Ok(())
}
