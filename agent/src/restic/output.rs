//! What restic prints, understood: JSON lines turned into progress and
//! results per job kind, the other lines handed back for the job log, and a
//! failed run classified into one of the `wire::ERROR_*` kinds with a
//! message that says what to do. Pure: no I/O.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use crate::wire::{
    self, BackupResult, CheckResult, ForgetResult, JobKind, JobProgress, LsEntry, LsResult,
    RestoreResult, SnapshotInfo, StatsResult,
};

use super::version::ResticVersion;

/// Most entries an `ls` job returns; the rest is reported as `truncated`.
pub const LS_MAX_ENTRIES: usize = 10_000;

/// stderr lines kept for classifying a failure.
const STDERR_TAIL: usize = 40;

/// What to do with one stdout line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Not (understood) JSON: into the job log.
    Log(String),
    /// A status message; `job_id` is filled in by the sender.
    Progress(JobProgress),
    /// Understood and kept (summary, listing entries, noise).
    Quiet,
}

/// Collects a run's parsed output, for one job kind.
#[derive(Debug)]
pub struct Output {
    kind: JobKind,
    ls_dir: String,
    pub backup: Option<BackupResult>,
    pub restore: Option<RestoreResult>,
    /// `check --json`'s `num_errors` (restic ≥ 0.18).
    pub check_errors: Option<u64>,
    pub forget: Option<ForgetResult>,
    pub snapshots: Option<Vec<SnapshotInfo>>,
    pub stats: Option<StatsResult>,
    pub ls: LsResult,
    /// Non-JSON lines on stdout, for `check` on old restic.
    stdout_text: VecDeque<String>,
    stderr_tail: VecDeque<String>,
    /// restic ≥ 0.17's final `exit_error` message on stderr.
    exit_error: Option<String>,
}

impl Output {
    /// `ls_dir`: the directory an `ls` job lists (see `command::ls_dir`).
    pub fn new(kind: JobKind, ls_dir: String) -> Self {
        Output {
            kind,
            ls: LsResult {
                path: ls_dir.clone(),
                ..LsResult::default()
            },
            ls_dir,
            backup: None,
            restore: None,
            check_errors: None,
            forget: None,
            snapshots: None,
            stats: None,
            stdout_text: VecDeque::new(),
            stderr_tail: VecDeque::new(),
            exit_error: None,
        }
    }

    /// Reads one stdout line.
    pub fn stdout_line(&mut self, line: &str) -> Line {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Line::Quiet;
        }
        let value = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            serde_json::from_str::<Value>(trimmed).ok()
        } else {
            None
        };
        let Some(value) = value else {
            if self.kind == JobKind::Check {
                push_bounded(&mut self.stdout_text, trimmed.to_string());
            }
            return Line::Log(line.to_string());
        };
        let handled = match self.kind {
            JobKind::Backup => self.backup_message(&value),
            JobKind::Restore => self.restore_message(&value),
            JobKind::Check => self.check_message(&value),
            JobKind::Forget => self.forget_message(&value),
            JobKind::Snapshots => self.snapshots_message(&value),
            JobKind::Stats => self.stats_message(&value),
            JobKind::Ls => self.ls_message(&value),
            _ => None,
        };
        handled.unwrap_or_else(|| Line::Log(line.to_string()))
    }

    /// Reads one stderr line; returns the text for the job log. restic ≥
    /// 0.17 prints its errors there as JSON: they are logged as text.
    pub fn stderr_line(&mut self, line: &str) -> Option<String> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return None;
        }
        let text = match serde_json::from_str::<Value>(trimmed) {
            Ok(value) if value.is_object() => match message_type(&value) {
                Some("exit_error") => {
                    let message = str_field(&value, "message").unwrap_or_default().to_string();
                    self.exit_error = Some(message.clone());
                    format!("Fatal: {message}")
                }
                Some("error") => error_text(&value),
                _ => trimmed.to_string(),
            },
            _ => trimmed.to_string(),
        };
        push_bounded(&mut self.stderr_tail, text.clone());
        Some(text)
    }

    /// The stderr lines kept (newest last), for classification.
    pub fn stderr_tail(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.stderr_tail.iter().cloned().collect();
        if let Some(message) = &self.exit_error {
            lines.push(message.clone());
        }
        lines
    }

    /// How many errors `check` found: `check --json`'s count when there is
    /// one, otherwise 0 on success and the error lines restic printed (at
    /// least one) on failure.
    pub fn check_result(&self, succeeded: bool) -> CheckResult {
        if let Some(errors) = self.check_errors {
            return CheckResult { errors };
        }
        if succeeded {
            return CheckResult { errors: 0 };
        }
        let counted = self
            .stderr_tail
            .iter()
            .chain(self.stdout_text.iter())
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("error") || l.contains(" error: ")
            })
            .count() as u64;
        CheckResult {
            errors: counted.max(1),
        }
    }

    fn backup_message(&mut self, value: &Value) -> Option<Line> {
        match message_type(value)? {
            "status" => Some(Line::Progress(progress(value, "bytes_done", "files_done"))),
            "summary" => {
                let summary: BackupSummary = serde_json::from_value(value.clone()).ok()?;
                self.backup = Some(BackupResult {
                    snapshot_id: summary.snapshot_id.unwrap_or_default(),
                    files_new: summary.files_new,
                    files_changed: summary.files_changed,
                    files_unmodified: summary.files_unmodified,
                    data_added: summary.data_added,
                    total_bytes_processed: summary.total_bytes_processed,
                    duration_secs: summary.total_duration,
                    snapshot: None,
                });
                Some(Line::Quiet)
            }
            "verbose_status" => Some(Line::Quiet),
            "error" => Some(Line::Log(error_text(value))),
            _ => None,
        }
    }

    fn restore_message(&mut self, value: &Value) -> Option<Line> {
        match message_type(value)? {
            "status" => Some(Line::Progress(progress(
                value,
                "bytes_restored",
                "files_restored",
            ))),
            "summary" => {
                self.restore = Some(RestoreResult {
                    files_restored: u64_field(value, "files_restored"),
                    bytes_restored: u64_field(value, "bytes_restored"),
                });
                Some(Line::Quiet)
            }
            "verbose_status" => Some(Line::Quiet),
            "error" => Some(Line::Log(error_text(value))),
            _ => None,
        }
    }

    fn check_message(&mut self, value: &Value) -> Option<Line> {
        match message_type(value)? {
            "summary" => {
                self.check_errors = Some(u64_field(value, "num_errors"));
                Some(Line::Log(format!(
                    "check summary: {} error(s)",
                    u64_field(value, "num_errors")
                )))
            }
            "error" => Some(Line::Log(error_text(value))),
            _ => None,
        }
    }

    fn forget_message(&mut self, value: &Value) -> Option<Line> {
        let groups: Vec<ForgetGroup> = serde_json::from_value(value.clone()).ok()?;
        let result = self.forget.get_or_insert_with(ForgetResult::default);
        for group in groups {
            result.kept += group.keep.unwrap_or_default().len() as u64;
            result
                .removed
                .extend(group.remove.unwrap_or_default().into_iter().map(|s| s.id));
        }
        Some(Line::Quiet)
    }

    fn snapshots_message(&mut self, value: &Value) -> Option<Line> {
        let raw: Vec<RawSnapshot> = serde_json::from_value(value.clone()).ok()?;
        self.snapshots
            .get_or_insert_with(Vec::new)
            .extend(raw.into_iter().map(RawSnapshot::into_info));
        Some(Line::Quiet)
    }

    fn stats_message(&mut self, value: &Value) -> Option<Line> {
        value.get("total_size")?;
        self.stats = Some(StatsResult {
            total_size: u64_field(value, "total_size"),
            total_file_count: u64_field(value, "total_file_count"),
            snapshots_count: u64_field(value, "snapshots_count"),
        });
        Some(Line::Quiet)
    }

    /// restic 0.14 prints, for `ls <snapshot> <dir>`, the snapshot, the
    /// directory itself and its direct children (newer restic may print
    /// more): only entries whose parent is exactly the directory are kept.
    fn ls_message(&mut self, value: &Value) -> Option<Line> {
        let kind = message_type(value).or_else(|| str_field(value, "struct_type"))?;
        match kind {
            "snapshot" => Some(Line::Quiet),
            "node" => {
                let path = str_field(value, "path")?;
                if parent_dir(path) == self.ls_dir {
                    if self.ls.entries.len() < LS_MAX_ENTRIES {
                        self.ls.entries.push(LsEntry {
                            name: str_field(value, "name").unwrap_or_default().to_string(),
                            kind: str_field(value, "type").unwrap_or("file").to_string(),
                            size: u64_field(value, "size"),
                            mtime: str_field(value, "mtime").map(str::to_string),
                        });
                    } else {
                        self.ls.truncated = true;
                    }
                }
                Some(Line::Quiet)
            }
            _ => None,
        }
    }
}

/// The directory holding `path` inside a snapshot (`/a/b` → `/a`, `/a` → `/`).
fn parent_dir(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

fn push_bounded(lines: &mut VecDeque<String>, line: String) {
    if lines.len() == STDERR_TAIL {
        lines.pop_front();
    }
    lines.push_back(line);
}

fn message_type(value: &Value) -> Option<&str> {
    str_field(value, "message_type")
}

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name)?.as_str()
}

fn u64_field(value: &Value, name: &str) -> u64 {
    value.get(name).and_then(Value::as_u64).unwrap_or(0)
}

fn progress(value: &Value, bytes_done: &str, files_done: &str) -> JobProgress {
    let fraction = value
        .get("percent_done")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        .clamp(0.0, 1.0);
    JobProgress {
        job_id: 0,
        percent: (fraction * 1000.0).round() / 10.0,
        bytes_done: u64_field(value, bytes_done),
        total_bytes: u64_field(value, "total_bytes"),
        files_done: u64_field(value, files_done),
        total_files: u64_field(value, "total_files"),
        seconds_remaining: value.get("seconds_remaining").and_then(Value::as_u64),
    }
}

/// `{"message_type":"error","error":{"message":…},"during":…,"item":…}` as
/// a log line. restic 0.14 leaves `error` an empty object.
fn error_text(value: &Value) -> String {
    let message = match value.get("error") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(e) => e.get("message").and_then(Value::as_str),
        None => None,
    }
    .or_else(|| str_field(value, "message"));
    let mut text = String::from("error");
    if let Some(during) = str_field(value, "during") {
        text.push_str(&format!(" during {during}"));
    }
    if let Some(item) = str_field(value, "item") {
        text.push_str(&format!(" on {item}"));
    }
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {message}"));
    }
    text
}

#[derive(Debug, Deserialize)]
struct BackupSummary {
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    files_new: u64,
    #[serde(default)]
    files_changed: u64,
    #[serde(default)]
    files_unmodified: u64,
    #[serde(default)]
    data_added: u64,
    #[serde(default)]
    total_bytes_processed: u64,
    #[serde(default)]
    total_duration: f64,
}

/// A snapshot as restic prints it; `tags` and `paths` may be `null`.
#[derive(Debug, Deserialize)]
struct RawSnapshot {
    id: String,
    #[serde(default)]
    short_id: Option<String>,
    #[serde(default)]
    time: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl RawSnapshot {
    fn into_info(self) -> SnapshotInfo {
        let short_id = self
            .short_id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.id.chars().take(8).collect());
        SnapshotInfo {
            id: self.id,
            short_id,
            time: self.time,
            hostname: self.hostname.unwrap_or_default(),
            paths: self.paths.unwrap_or_default(),
            tags: self.tags.unwrap_or_default(),
        }
    }
}

/// Parses a `snapshots --json` listing (used for the lookup after a backup
/// and a restore).
pub fn parse_snapshots(text: &str) -> Option<Vec<SnapshotInfo>> {
    let raw: Vec<RawSnapshot> = serde_json::from_str(text.trim()).ok()?;
    Some(raw.into_iter().map(RawSnapshot::into_info).collect())
}

#[derive(Debug, Deserialize)]
struct ForgetGroup {
    #[serde(default)]
    keep: Option<Vec<RawSnapshot>>,
    #[serde(default)]
    remove: Option<Vec<RawSnapshot>>,
}

/// A failed run, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of the `wire::ERROR_*` constants.
    pub kind: &'static str,
    /// What happened and what to do, with restic's own words appended.
    pub message: String,
}

/// Classifies a failed run: from the exit code on restic ≥ 0.17 (10 no
/// repository, 11 locked, 12 wrong password), else from restic's messages.
pub fn classify(
    version: Option<ResticVersion>,
    exit_code: Option<i32>,
    stderr: &[String],
) -> Failure {
    let by_code = match (
        version.is_some_and(ResticVersion::has_exit_codes),
        exit_code,
    ) {
        (true, Some(10)) => Some(wire::ERROR_REPOSITORY_NOT_FOUND),
        (true, Some(11)) => Some(wire::ERROR_REPOSITORY_LOCKED),
        (true, Some(12)) => Some(wire::ERROR_WRONG_PASSWORD),
        _ => None,
    };
    let text = stderr.join("\n").to_lowercase();
    let kind = by_code.unwrap_or_else(|| {
        if text.contains("no space left on device") {
            wire::ERROR_NO_SPACE
        } else if text.contains("wrong password or no key found") {
            wire::ERROR_WRONG_PASSWORD
        } else if text.contains("repository is already locked")
            || text.contains("unable to create lock in backend")
        {
            wire::ERROR_REPOSITORY_LOCKED
        } else if text.contains("is there a repository at the following location?")
            || text.contains("repository does not exist")
        {
            wire::ERROR_REPOSITORY_NOT_FOUND
        } else {
            wire::ERROR_RESTIC_FAILED
        }
    });
    let advice = match kind {
        wire::ERROR_REPOSITORY_NOT_FOUND => {
            "the repository does not exist: run Init on it (or correct its URL)".to_string()
        }
        wire::ERROR_REPOSITORY_LOCKED => "the repository is locked by another restic process: \
             wait for it to finish, or run Unlock if none is running"
            .to_string(),
        wire::ERROR_WRONG_PASSWORD => {
            "wrong repository password: correct it on the repository page".to_string()
        }
        wire::ERROR_NO_SPACE => {
            "no space left on device: free space on the host (cache, temporary files) \
             or in the repository's storage"
                .to_string()
        }
        _ => match exit_code {
            Some(code) => format!("restic failed with exit code {code}"),
            None => "restic was killed by a signal".to_string(),
        },
    };
    let message = match restic_says(stderr) {
        Some(said) => format!("{advice} (restic: {said})"),
        None => advice,
    };
    Failure { kind, message }
}

/// The stderr line that best says why restic failed: its `Fatal:` line if
/// there is one, else the last line; capped.
fn restic_says(stderr: &[String]) -> Option<String> {
    let line = stderr
        .iter()
        .rev()
        .find(|l| l.starts_with("Fatal:"))
        .or_else(|| stderr.iter().rev().find(|l| !l.trim().is_empty()))?;
    let mut line = line.trim().lines().next().unwrap_or_default().trim();
    while let Some(rest) = line.strip_prefix("Fatal:") {
        line = rest.trim_start();
    }
    const MAX: usize = 300;
    if line.len() > MAX {
        Some(format!("{}…", &line[..line.floor_char_boundary(MAX)]))
    } else {
        Some(line.to_string())
    }
}

#[cfg(test)]
mod tests;
