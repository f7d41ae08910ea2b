//! Which restic this agent runs: `restic version` parsed into a comparable
//! version, and the features that depend on it. Detection never fails: a
//! missing or broken binary is `None`.

use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A restic release, `major.minor.patch`; ordered, so features compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResticVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ResticVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        ResticVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses the first line of `restic version`
    /// (`restic 0.14.0 compiled with go1.19.8 on linux/amd64`), or a bare
    /// `0.14.0`. Suffixes such as `0.17.0-dev` count as the release.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().next()?.trim();
        let word = match line.strip_prefix("restic ") {
            Some(rest) => rest.split_whitespace().next()?,
            None => line.split_whitespace().next()?,
        };
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut parts = word.splitn(3, '.');
        let number = |part: Option<&str>| -> Option<u32> {
            let digits: String = part?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = number(parts.next()).unwrap_or(0);
        Some(ResticVersion::new(major, minor, patch))
    }

    /// Exit codes 10 (no repository) and 11 (locked), 0.17.0; 12 (wrong
    /// password) came in 0.17.1 and is only ever 12 for that.
    pub fn has_exit_codes(self) -> bool {
        self >= ResticVersion::new(0, 17, 0)
    }

    /// `--retry-lock <duration>` on every command that locks.
    pub fn has_retry_lock(self) -> bool {
        self >= ResticVersion::new(0, 16, 0)
    }

    /// `restore --json` status and summary lines.
    pub fn has_restore_json(self) -> bool {
        self >= ResticVersion::new(0, 16, 0)
    }

    /// `check --json`: a summary line with `num_errors`.
    pub fn has_check_json(self) -> bool {
        self >= ResticVersion::new(0, 18, 0)
    }
}

impl fmt::Display for ResticVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// How long `restic version` may take before the binary counts as broken.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `<restic> version` and parses it, blocking the calling thread (at
/// most [`VERSION_TIMEOUT`]). Used for the hello, which is synchronous.
pub fn detect_blocking(restic: &Path) -> Option<ResticVersion> {
    let mut child = std::process::Command::new(restic)
        .arg("version")
        .env_clear()
        .envs(super::run::base_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let mut out = String::new();
    let mut stdout = child.stdout.take()?;
    std::io::Read::read_to_string(&mut stdout, &mut out).ok()?;
    ResticVersion::parse(&out)
}

/// The async twin of [`detect_blocking`], for a job about to start.
pub async fn detect(restic: &Path) -> Option<ResticVersion> {
    let mut command = tokio::process::Command::new(restic);
    command
        .arg("version")
        .env_clear()
        .envs(super::run::base_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(VERSION_TIMEOUT, command.output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    ResticVersion::parse(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_restic_prints() {
        assert_eq!(
            ResticVersion::parse("restic 0.14.0 compiled with go1.19.8 on linux/amd64\n"),
            Some(ResticVersion::new(0, 14, 0))
        );
        assert_eq!(
            ResticVersion::parse("restic 0.17.3 compiled with go1.23.3 on windows/amd64"),
            Some(ResticVersion::new(0, 17, 3))
        );
        assert_eq!(
            ResticVersion::parse("restic 0.18.0-dev (compiled manually) compiled with go1.24"),
            Some(ResticVersion::new(0, 18, 0))
        );
        assert_eq!(
            ResticVersion::parse("0.16.4"),
            Some(ResticVersion::new(0, 16, 4))
        );
        assert_eq!(ResticVersion::parse(""), None);
        assert_eq!(ResticVersion::parse("restic"), None);
        assert_eq!(ResticVersion::parse("command not found"), None);
    }

    #[test]
    fn features_follow_the_version_numerically() {
        let v = |s: &str| ResticVersion::parse(s).unwrap();
        // 0.9 < 0.14 < 0.16: numeric, not string, comparison.
        assert!(v("0.9.6") < v("0.14.0"));
        assert!(!v("0.14.0").has_retry_lock());
        assert!(!v("0.14.0").has_exit_codes());
        assert!(!v("0.14.0").has_restore_json());
        assert!(!v("0.14.0").has_check_json());
        assert!(v("0.16.0").has_retry_lock() && v("0.16.0").has_restore_json());
        assert!(!v("0.16.4").has_exit_codes());
        assert!(v("0.17.0").has_exit_codes());
        assert!(!v("0.17.3").has_check_json());
        assert!(v("0.18.1").has_check_json());
        assert!(v("1.0.0").has_check_json() && v("1.0.0").has_exit_codes());
        assert_eq!(v("restic 0.14.0 compiled").to_string(), "0.14.0");
    }
}
