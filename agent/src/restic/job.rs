//! One restic job from `command.restic` to its `job.finished`: the
//! password file and environment, the passes (with one unlock-and-retry on
//! a stale lock), and the result by kind.
use std::io;
use std::path::Path;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::output::{Output, classify};
use super::results::{count_restored, snapshot_parts};
use super::run::{self, JobLog, ProgressGate, Redactor, StopReason};
use super::secrets::{PasswordFile, urlencoding_decode};
use super::version::ResticVersion;
use super::{Inner, RESERVED_ENV, RESTIC_NOT_FOUND_MESSAGE, command};
use crate::client::FrameSender;
use crate::wire::{
    self, CommandRestic, FinishedStatus, JobFinished, JobKind, JobStarted, SnapshotInfo,
};

pub(super) fn failed(
    job_id: i64,
    kind: &str,
    error: String,
    exit_code: Option<i32>,
) -> JobFinished {
    JobFinished {
        exit_code,
        error_kind: Some(kind.to_string()),
        ..JobFinished::failed(job_id, error)
    }
}

pub(super) fn succeeded(
    job_id: i64,
    exit_code: Option<i32>,
    result: Option<serde_json::Value>,
) -> JobFinished {
    JobFinished {
        job_id,
        status: FinishedStatus::Succeeded,
        error: None,
        exit_code,
        warning: false,
        error_kind: None,
        result,
    }
}

fn stopped(job_id: i64, reason: StopReason, exit_code: Option<i32>) -> JobFinished {
    match reason {
        StopReason::Cancel => JobFinished {
            job_id,
            status: FinishedStatus::Cancelled,
            error: Some("cancelled".into()),
            exit_code,
            warning: false,
            error_kind: None,
            result: None,
        },
        StopReason::Shutdown => failed(
            job_id,
            wire::ERROR_AGENT,
            "the agent was stopped during the job; run it again".into(),
            exit_code,
        ),
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// What one job needs while it runs.
pub(super) struct Job<'a> {
    inner: &'a Inner,
    pub(super) command: &'a CommandRestic,
    version: ResticVersion,
    env: Vec<(String, String)>,
    global: Vec<String>,
    stop: watch::Receiver<Option<StopReason>>,
    log: JobLog,
    progress: ProgressGate,
}

/// One restic process's end and what it printed.
struct Pass {
    exit_code: Option<i32>,
    stopped: Option<StopReason>,
    output: Output,
}

impl Job<'_> {
    fn job_id(&self) -> i64 {
        self.command.job_id
    }

    /// Runs restic once with `args` (after the global flags).
    async fn pass(&mut self, kind: JobKind, args: &[String]) -> io::Result<Pass> {
        let mut full = self.global.clone();
        full.extend_from_slice(args);
        let mut output = Output::new(kind, command::ls_dir(&self.command.options));
        if let Some(reason) = *self.stop.borrow() {
            return Ok(Pass {
                exit_code: None,
                stopped: Some(reason),
                output,
            });
        }
        debug!(args = ?full, "starting restic");
        let child = run::spawn(&run::Spawn {
            restic: &self.inner.settings.restic_path,
            args: &full,
            env: &self.env,
        })
        .await?;
        let grace = self.inner.settings.cancel_grace;
        let ended = run::follow(
            child,
            &mut output,
            &mut self.log,
            &mut self.progress,
            &mut self.stop,
            grace,
        )
        .await?;
        Ok(Pass {
            exit_code: ended.exit_code,
            stopped: ended.stopped,
            output,
        })
    }

    /// `restic snapshots --json <id>`: the snapshot a backup wrote or a
    /// restore read. `None` (with a log line) when it cannot be had.
    pub(super) async fn lookup_snapshot(&mut self, id: &str) -> Option<SnapshotInfo> {
        let pass = self
            .pass(JobKind::Snapshots, &command::snapshot_lookup(id))
            .await
            .ok()?;
        let found = (pass.exit_code == Some(0))
            .then(|| pass.output.snapshots.clone())
            .flatten()
            .and_then(|list| list.into_iter().next());
        if found.is_none() && pass.stopped.is_none() {
            self.log
                .system(&format!("could not look up snapshot {id}"))
                .await;
        }
        found
    }
}

pub(super) async fn run_job(
    inner: &Inner,
    command: CommandRestic,
    stop: watch::Receiver<Option<StopReason>>,
    sender: FrameSender,
) -> JobFinished {
    let job_id = command.job_id;
    let started = JobStarted {
        job_id,
        kind: Some(command.kind),
    };
    if let Err(e) = sender.send_message(&started).await {
        warn!(error = %e, "could not queue job.started");
    }
    let repo = &command.repository;
    let mut secrets: Vec<String> = vec![repo.password.clone()];
    secrets.extend(repo.env.values().cloned());
    if let Ok(url) = url::Url::parse(repo.url.trim_start_matches("rest:"))
        && let Some(password) = url.password()
    {
        secrets.push(password.to_string());
        if let Ok(decoded) = urlencoding_decode(password) {
            secrets.push(decoded);
        }
    }
    let log = JobLog::new(job_id, sender.clone(), Redactor::new(secrets));
    let mut finished = execute(inner, &command, stop, log, sender).await;
    if let Some(error) = &finished.error {
        info!(status = ?finished.status, error_kind = ?finished.error_kind, error = %error, "restic job ended");
    } else {
        info!(status = ?finished.status, warning = finished.warning, "restic job ended");
    }
    finished.job_id = job_id;
    finished
}

async fn execute(
    inner: &Inner,
    command: &CommandRestic,
    stop: watch::Receiver<Option<StopReason>>,
    mut log: JobLog,
    sender: FrameSender,
) -> JobFinished {
    let job_id = command.job_id;
    let kind = command.kind;
    let Some(version) = inner.version().await else {
        log.system(RESTIC_NOT_FOUND_MESSAGE).await;
        return failed(
            job_id,
            wire::ERROR_RESTIC_NOT_FOUND,
            RESTIC_NOT_FOUND_MESSAGE.into(),
            None,
        );
    };
    let args = match command::args(kind, &command.options, version) {
        Ok(args) => args,
        Err(reason) => {
            log.system(&reason).await;
            return failed(job_id, wire::ERROR_AGENT, reason, None);
        }
    };
    // restic trims the password file's content: such a password could
    // never open the repository, and restic would say "wrong password".
    if command.repository.password.trim() != command.repository.password {
        let reason = "the repository password starts or ends with whitespace, which restic \
                      cannot read from a password file: change it on the repository page"
            .to_string();
        log.system(&reason).await;
        return failed(job_id, wire::ERROR_WRONG_PASSWORD, reason, None);
    }
    let password = match PasswordFile::create(
        &command.repository.password,
        inner.settings.secrets_dir.as_deref(),
    ) {
        Ok(file) => file,
        Err(e) => {
            let reason = format!("cannot write the repository password file: {e}");
            log.system(&reason).await;
            return failed(job_id, wire::ERROR_AGENT, reason, None);
        }
    };
    let mut env: Vec<(String, String)> = command
        .repository
        .env
        .iter()
        .filter(|(k, _)| !RESERVED_ENV.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("RESTIC_REPOSITORY".into(), command.repository.url.clone()));
    env.push((
        "RESTIC_PASSWORD_FILE".into(),
        password.path().to_string_lossy().into_owned(),
    ));
    let global = global_flags(&inner.settings.cache_dir, version, &mut log).await;
    log.system(&format!("restic {version}: {}", kind_name(kind)))
        .await;
    let mut job = Job {
        inner,
        command,
        version,
        env,
        global,
        stop,
        log,
        progress: ProgressGate::new(job_id, sender.clone()),
    };
    let finished = execute_passes(&mut job, &args, &sender).await;
    job.log.flush().await;
    // The password file goes now, whatever happened.
    drop(password);
    finished
}

async fn global_flags(cache_dir: &Path, version: ResticVersion, log: &mut JobLog) -> Vec<String> {
    let mut global = Vec::new();
    match create_cache_dir(cache_dir) {
        Ok(()) => global.push(format!("--cache-dir={}", cache_dir.display())),
        Err(e) => {
            log.system(&format!(
                "cannot use the cache directory {}: {e}; running restic without a cache",
                cache_dir.display()
            ))
            .await;
            global.push("--no-cache".into());
        }
    }
    if version.has_retry_lock() {
        global.push(format!("--retry-lock={}", command::RETRY_LOCK));
    }
    global
}

fn create_cache_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn kind_name(kind: JobKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Runs the job's restic, unlocking and retrying once on a lock failure,
/// and turns the outcome into its `job.finished`.
async fn execute_passes(job: &mut Job<'_>, args: &[String], sender: &FrameSender) -> JobFinished {
    let job_id = job.job_id();
    let kind = job.command.kind;
    let mut retried = false;
    loop {
        let pass = match job.pass(kind, args).await {
            Ok(pass) => pass,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                job.inner.store_version(None);
                job.log.system(RESTIC_NOT_FOUND_MESSAGE).await;
                return failed(
                    job_id,
                    wire::ERROR_RESTIC_NOT_FOUND,
                    RESTIC_NOT_FOUND_MESSAGE.into(),
                    None,
                );
            }
            Err(e) => {
                let reason = format!("cannot run restic: {e}");
                job.log.system(&reason).await;
                return failed(job_id, wire::ERROR_AGENT, reason, None);
            }
        };
        // A run that completed anyway (the stop came as it finished)
        // keeps its result.
        if let Some(reason) = pass.stopped.filter(|_| pass.exit_code != Some(0)) {
            let text = match reason {
                StopReason::Cancel => "cancelled: restic was stopped",
                StopReason::Shutdown => "the agent is shutting down: restic was stopped",
            };
            job.log.system(text).await;
            return stopped(job_id, reason, pass.exit_code);
        }
        match pass.exit_code {
            Some(0) => return success(job, pass, sender).await,
            Some(3) if kind == JobKind::Backup => {
                job.log
                    .system("restic could not read some files (listed above); the snapshot was written without them")
                    .await;
                let mut finished = success(job, pass, sender).await;
                finished.warning = true;
                return finished;
            }
            code => {
                let failure = classify(Some(job.version), code, &pass.output.stderr_tail());
                if failure.kind == wire::ERROR_REPOSITORY_LOCKED
                    && kind != JobKind::Unlock
                    && !retried
                {
                    retried = true;
                    job.log
                        .system(
                            "the repository is locked: running `restic unlock` (it removes stale \
                             locks only, never one a live restic holds) and trying once more",
                        )
                        .await;
                    match job.pass(JobKind::Unlock, &["unlock".to_string()]).await {
                        Ok(unlock) if unlock.stopped.is_some() => continue,
                        Ok(unlock) if unlock.exit_code == Some(0) => {}
                        Ok(unlock) => {
                            job.log
                                .system(&format!(
                                    "restic unlock failed (exit code {:?}); retrying anyway",
                                    unlock.exit_code
                                ))
                                .await
                        }
                        Err(e) => {
                            job.log
                                .system(&format!("cannot run restic unlock: {e}"))
                                .await
                        }
                    }
                    continue;
                }
                let message = job.log.redactor().apply(&failure.message);
                job.log.system(&message).await;
                let mut finished = failed(job_id, failure.kind, message, code);
                if kind == JobKind::Check && failure.kind == wire::ERROR_RESTIC_FAILED {
                    finished.result = to_value(&pass.output.check_result(false));
                }
                return finished;
            }
        }
    }
}

/// The result of a successful pass, by kind (and the `job.snapshots` parts
/// of a listing).
async fn success(job: &mut Job<'_>, pass: Pass, sender: &FrameSender) -> JobFinished {
    let job_id = job.job_id();
    let code = pass.exit_code;
    let output = pass.output;
    match job.command.kind {
        JobKind::Backup => {
            let Some(mut result) = output.backup else {
                job.log.system("restic printed no backup summary").await;
                return succeeded(job_id, code, None);
            };
            if !result.snapshot_id.is_empty() {
                let id = result.snapshot_id.clone();
                if let Some(info) = job.lookup_snapshot(&id).await {
                    // restic 0.14's summary has the short id only.
                    result.snapshot_id = info.id.clone();
                    result.snapshot = Some(info);
                }
            }
            succeeded(job_id, code, to_value(&result))
        }
        JobKind::Restore => {
            let result = match output.restore {
                Some(result) => result,
                None => count_restored(job).await,
            };
            succeeded(job_id, code, to_value(&result))
        }
        JobKind::Check => succeeded(job_id, code, to_value(&output.check_result(true))),
        JobKind::Forget => succeeded(
            job_id,
            code,
            to_value(&output.forget.clone().unwrap_or_default()),
        ),
        JobKind::Stats => succeeded(job_id, code, output.stats.as_ref().and_then(to_value)),
        JobKind::Ls => succeeded(job_id, code, to_value(&output.ls)),
        JobKind::Snapshots => {
            let Some(list) = output.snapshots else {
                let reason = "restic's snapshot listing could not be read".to_string();
                job.log.system(&reason).await;
                return failed(job_id, wire::ERROR_RESTIC_FAILED, reason, code);
            };
            for part in snapshot_parts(job_id, list) {
                if let Err(e) = sender.send_message(&part).await {
                    warn!(error = %e, "could not queue a snapshots part");
                }
            }
            succeeded(job_id, code, None)
        }
        _ => succeeded(job_id, code, None),
    }
}
