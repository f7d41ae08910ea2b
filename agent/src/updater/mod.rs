//! Agent self-update: download the staged binary beside our own, verify its
//! size and SHA-256, prove it runs and reports the target version, leave an
//! update marker, then swap it in. It owns the files beside the binary
//! (`<bin>.new`, `<bin>.old`, `<bin>.update-marker`) and never exits the
//! process: the caller does that once the swap is done.
//!
//! Until the swap, every failure removes `<bin>.new` and leaves the running
//! binary untouched; errors are written for the person reading the job log.

mod download;
mod files;
pub mod handler;
mod marker;
pub mod watchdog;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as platform;
// Not compiled on the Linux machines this crate is built and tested on.
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as platform;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::{self, ServerUrlError};
use crate::http::snippet;
use crate::wire::CommandUpdate;

pub(crate) use crate::files::{parent_dir, remove_quietly, sync_dir, with_suffix};
use download::download;
pub use files::{marker_path, new_path, old_path};
pub use handler::{ExitRequest, UPDATE_ALREADY_RUNNING, UpdateHandler};
pub use marker::{MarkerState, UpdateMarker};

pub use crate::version::VERSION_PREFIX;
use crate::wire::{BINARY_PATH, SHA256_HEADER, VERSION_HEADER};

/// How long `<bin>.new --version` may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);
/// A sanity bound on `size`: an agent is a few MB, never a gigabyte.
const MAX_BINARY_BYTES: u64 = 1 << 30;
/// Upper bound on the staging time a server may grant (one day).
const MAX_STAGE_SECS: u64 = 24 * 60 * 60;

/// Why an update did not happen. The `Display` text is what goes into the
/// job's error, so it is written for a person, not for a log parser.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot update: {0}")]
    OwnBinary(String),
    #[error("the update command is unusable: {0}")]
    BadCommand(String),
    #[error(transparent)]
    ServerUrl(#[from] ServerUrlError),
    #[error("could not download the new binary from {url}: {reason}")]
    Download { url: String, reason: String },
    /// The server said no in its JSON error shape; `message` is its words.
    #[error("server refused the download (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("server answered the download with HTTP {status}: {snippet}")]
    UnexpectedStatus { status: u16, snippet: String },
    /// The staged binary changed between dispatch and download.
    #[error(
        "server now offers {what} {offered}, but this update expects {expected}; start the update again"
    )]
    Offered {
        what: &'static str,
        offered: String,
        expected: String,
    },
    #[error("download is larger than the expected {expected} bytes")]
    TooLarge { expected: u64 },
    /// `detail` is empty or starts with ": ".
    #[error("download cut off after {got} of {expected} bytes{detail}")]
    Truncated {
        got: u64,
        expected: u64,
        detail: String,
    },
    #[error(
        "the new binary was not downloaded and checked within {secs}s; the server gives up at its deadline, so nothing was changed"
    )]
    TooSlow { secs: u64 },
    #[error("checksum mismatch: expected {expected}, got {got}")]
    Checksum { expected: String, got: String },
    #[error("new binary could not run: {0}")]
    CannotRun(String),
    #[error("new binary reports version {got}, expected {expected}")]
    WrongVersion { got: String, expected: String },
    #[error(
        "new binary printed {got:?} for --version, expected \"restic-manager-agent {expected}\""
    )]
    UnexpectedVersionOutput { got: String, expected: String },
    /// The OS error is part of the message because this text is all the
    /// server gets.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("update marker {} is unreadable: {reason}", path.display())]
    Marker { path: PathBuf, reason: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpdateError + use<> {
    let path = path.to_path_buf();
    move |error| UpdateError::Io {
        action,
        path,
        error,
    }
}

/// The real path of the running executable, resolved at start: after the
/// swap `/proc/self/exe` names a deleted file, so callers save this before
/// any update can happen and pass it in.
pub fn resolve_own_binary() -> Result<PathBuf, UpdateError> {
    let exe = std::env::current_exe()
        .map_err(|e| UpdateError::OwnBinary(format!("cannot find this agent's executable: {e}")))?;
    check_own_binary(&exe)
}

/// Canonicalizes `exe` and refuses paths that are not a real file one can
/// rename over: anything under `/proc`, or a file that was already deleted.
pub fn check_own_binary(exe: &Path) -> Result<PathBuf, UpdateError> {
    let refuse = |path: &Path, why: &str| {
        UpdateError::OwnBinary(format!(
            "this agent's executable {} {why}; self-update needs the real file",
            path.display()
        ))
    };
    let unresolvable =
        |path: &Path| path.starts_with("/proc") || path.to_string_lossy().ends_with(" (deleted)");
    if unresolvable(exe) {
        return Err(refuse(exe, "cannot be resolved to a file on disk"));
    }
    let real = std::fs::canonicalize(exe)
        .map_err(|e| refuse(exe, &format!("cannot be resolved ({e})")))?;
    if unresolvable(&real) {
        return Err(refuse(&real, "cannot be resolved to a file on disk"));
    }
    if !real.is_file() {
        return Err(refuse(&real, "is not a regular file"));
    }
    Ok(real)
}

/// Everything but exiting: download to `<bin>.new`, verify, preflight,
/// write the marker, swap. `log` receives one human line per step. On
/// `Ok` the new binary is in place (on Windows: a helper script is waiting
/// for the service to stop) and the caller must exit 0 so the supervisor
/// starts it. On `Err` nothing beside the binary changed.
pub async fn fetch_verify_and_swap(
    server_url: &str,
    secret: &str,
    bin: &Path,
    command: &CommandUpdate,
    from_version: &str,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<(), UpdateError> {
    check_command(command)?;
    if !bin.is_file() {
        return Err(UpdateError::OwnBinary(format!(
            "the agent binary {} is not a file",
            bin.display()
        )));
    }
    files::check_binary_dir(bin).map_err(UpdateError::OwnBinary)?;
    log(format!(
        "updating {} from {from_version} to {} (job {})",
        bin.display(),
        command.target_version,
        command.job_id
    ));
    let staged = new_path(bin);
    let within = Duration::from_secs(
        command
            .stage_within_secs
            .unwrap_or(crate::wire::DEFAULT_STAGE_WITHIN_SECS)
            .clamp(1, MAX_STAGE_SECS),
    );
    // Past this the server has failed the job: give up rather than swap in
    // a version nobody waits for. Dropping the work closes the file and
    // kills a running preflight.
    let staged_in_time =
        tokio::time::timeout(within, stage(server_url, secret, &staged, command, log))
            .await
            .unwrap_or(Err(UpdateError::TooSlow {
                secs: within.as_secs(),
            }));
    if let Err(e) = staged_in_time {
        remove_quietly(&staged);
        return Err(e);
    }

    let marker_file = marker_path(bin);
    let marker = UpdateMarker {
        job_id: command.job_id,
        from_version: from_version.to_string(),
        to_version: command.target_version.clone(),
        state: MarkerState::Swapped,
        boots: 0,
        reason: None,
    };
    if let Err(e) = marker.save(&marker_file) {
        remove_quietly(&staged);
        return Err(e);
    }
    log(format!("wrote the update marker {}", marker_file.display()));

    if let Err(e) = platform::swap(bin, &staged, log) {
        remove_quietly(&staged);
        remove_quietly(&marker_file);
        return Err(e);
    }
    Ok(())
}

fn check_command(command: &CommandUpdate) -> Result<(), UpdateError> {
    let bad = |why: String| Err(UpdateError::BadCommand(why));
    if command.sha256.len() != 64 || !command.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad(format!(
            "sha256 must be 64 hex digits, got {:?}",
            snippet(command.sha256.as_bytes())
        ));
    }
    if command.size == 0 || command.size > MAX_BINARY_BYTES {
        return bad(format!(
            "size must be between 1 and {MAX_BINARY_BYTES} bytes, got {}",
            command.size
        ));
    }
    // What the server accepts in a hello: a version it would refuse would
    // only be rolled back.
    let version = command.target_version.as_str();
    if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_graphic()) {
        return bad(format!(
            "target version {:?} is not 1–64 printable characters",
            snippet(version.as_bytes())
        ));
    }
    Ok(())
}

/// Download, verify and preflight `<bin>.new`. The caller removes it on error.
async fn stage(
    server_url: &str,
    secret: &str,
    staged: &Path,
    command: &CommandUpdate,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<(), UpdateError> {
    let mut url = config::endpoint_url(server_url, BINARY_PATH)?;
    url.query_pairs_mut()
        .append_pair("os", std::env::consts::OS)
        .append_pair("arch", std::env::consts::ARCH);
    log(format!("downloading {url}"));
    download(&url, secret, staged, command).await?;
    log(format!(
        "downloaded {} bytes to {}; size and sha256 {} match",
        command.size,
        staged.display(),
        command.sha256.to_ascii_lowercase()
    ));
    set_executable(staged)?;
    let line = preflight(staged, &command.target_version).await?;
    log(format!("new binary runs and reports {line:?}"));
    Ok(())
}

fn set_executable(path: &Path) -> Result<(), UpdateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(io_error("chmod 0755", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Runs `<staged> --version` and requires its first stdout line to be
/// exactly `restic-manager-agent <target>`. Returns that line.
async fn preflight(staged: &Path, target: &str) -> Result<String, UpdateError> {
    let output = run_version(staged).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = stdout.lines().next().unwrap_or("").trim_end_matches('\r');
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if stderr.trim().is_empty() {
            first
        } else {
            stderr.trim()
        };
        let mut reason = format!("`--version` failed ({})", output.status);
        if !said.is_empty() {
            reason.push_str(": ");
            reason.push_str(&snippet(said.as_bytes()));
        }
        return Err(UpdateError::CannotRun(reason));
    }
    if first == format!("{VERSION_PREFIX}{target}") {
        return Ok(first.to_string());
    }
    match first.strip_prefix(VERSION_PREFIX) {
        Some(version) => Err(UpdateError::WrongVersion {
            got: snippet(version.as_bytes()),
            expected: target.to_string(),
        }),
        None => Err(UpdateError::UnexpectedVersionOutput {
            got: snippet(first.as_bytes()),
            expected: target.to_string(),
        }),
    }
}

async fn run_version(staged: &Path) -> Result<std::process::Output, UpdateError> {
    let mut busy_retries = 0;
    loop {
        let spawned = tokio::process::Command::new(staged)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            // "Text file busy": a process forked elsewhere in this program
            // may briefly hold an inherited write handle on the fresh file.
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && busy_retries < 20 => {
                busy_retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(UpdateError::CannotRun(e.to_string())),
        };
        // On timeout the child is dropped, which kills it.
        return match tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(UpdateError::CannotRun(e.to_string())),
            Err(_) => Err(UpdateError::CannotRun(format!(
                "`--version` did not finish within {}s",
                PREFLIGHT_TIMEOUT.as_secs()
            ))),
        };
    }
}

#[cfg(all(test, unix))]
mod tests;
