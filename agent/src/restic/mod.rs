//! Running restic for the server: `command.restic` starts a job,
//! `command.cancel` stops one, and every hello reports restic's version, the
//! jobs running and the ones that finished lately. [`ResticHandler`] owns
//! the job table; [`command`] builds restic's arguments, [`run`] starts and
//! follows the process, [`output`] understands what it prints.
//!
//! Must not: write the repository password or `env` values anywhere but
//! the 0600 password file and restic's environment — not in arguments, the
//! job log, or tracing.

pub mod command;
pub mod output;
pub mod run;
pub mod version;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, warn};

use crate::client::{CommandHandler, DefaultHandler, FrameSender, HelloStatus};
use crate::config::AgentConfig;
use crate::wire::{
    self, CommandCancel, CommandRestic, Envelope, FinishedStatus, JobFinished, JobKind,
    JobSnapshots, JobStarted, RestoreResult, SnapshotInfo,
};

use output::{Output, classify};
use run::{JobLog, ProgressGate, Redactor, StopReason};
use version::ResticVersion;

/// SIGINT, then SIGKILL after this long, on `command.cancel`.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// On a clean agent shutdown restic gets at most this long after SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `recent_finished` in the hello: at most this many, at most this old.
pub const RECENT_FINISHED_MAX: usize = 16;
pub const RECENT_FINISHED_FOR: Duration = Duration::from_secs(3600);

/// How long a detected restic version is trusted before asking again.
const VERSION_TTL: Duration = Duration::from_secs(10);

/// Variables of the repository's `env` that would override how the agent
/// hands restic the repository and password: dropped.
const RESERVED_ENV: [&str; 5] = [
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
];

/// The job message when restic cannot be run at all.
pub const RESTIC_NOT_FOUND_MESSAGE: &str = "restic was not found on this host: install restic \
     (0.14 or newer) or set restic_path in the agent's config";

/// How the agent runs restic.
#[derive(Debug, Clone)]
pub struct ResticSettings {
    pub restic_path: PathBuf,
    pub cache_dir: PathBuf,
    /// Time between SIGINT and SIGKILL on cancel ([`CANCEL_GRACE`]).
    pub cancel_grace: Duration,
    /// Where the per-run password directories are made (default: the
    /// system temporary directory).
    pub secrets_dir: Option<PathBuf>,
}

impl ResticSettings {
    pub fn from_config(config: &AgentConfig) -> Self {
        ResticSettings {
            restic_path: config.restic_path(),
            cache_dir: config.restic_cache_dir(),
            cancel_grace: CANCEL_GRACE,
            secrets_dir: None,
        }
    }
}

/// Runs restic jobs; cheap to clone (all clones share the job table).
#[derive(Clone)]
pub struct ResticHandler {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ResticSettings,
    jobs: Mutex<HashMap<i64, watch::Sender<Option<StopReason>>>>,
    recent: Mutex<VecDeque<(Instant, JobFinished)>>,
    version: Mutex<Option<(Instant, Option<ResticVersion>)>>,
    shutting_down: std::sync::atomic::AtomicBool,
    job_ended: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these small maps leaves it usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ResticHandler {
    pub fn new(settings: ResticSettings) -> Self {
        ResticHandler {
            inner: Arc::new(Inner {
                settings,
                jobs: Mutex::new(HashMap::new()),
                recent: Mutex::new(VecDeque::new()),
                version: Mutex::new(None),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                job_ended: Notify::new(),
            }),
        }
    }

    /// The jobs running now, in id order.
    pub fn running_jobs(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.inner.jobs).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops every job (SIGINT, SIGKILL after [`SHUTDOWN_GRACE`]) and waits
    /// for them to report, so their `job.finished` is queued before the
    /// connection closes. Jobs arriving afterwards are refused.
    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for stop in lock(&self.inner.jobs).values() {
            let _ = stop.send(Some(StopReason::Shutdown));
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(5);
        loop {
            let ended = self.inner.job_ended.notified();
            if lock(&self.inner.jobs).is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                warn!(jobs = ?self.running_jobs(), "restic jobs still running at shutdown");
                return;
            }
        }
    }

    fn start(&self, command: CommandRestic, sender: FrameSender) {
        let job_id = command.job_id;
        let stop = {
            let mut jobs = lock(&self.inner.jobs);
            if jobs.contains_key(&job_id) {
                debug!(
                    job_id,
                    "ignoring a command.restic for a job already running"
                );
                return;
            }
            // A command repeated for a job that already ended (the server
            // missed its finish) gets that finish again, not a second run.
            let done = lock(&self.inner.recent)
                .iter()
                .find(|(_, f)| f.job_id == job_id)
                .map(|(_, f)| f.clone());
            if let Some(finished) = done {
                debug!(job_id, "repeating the finish of a job that already ran");
                tokio::spawn(async move {
                    let _ = sender.send_message(&finished).await;
                });
                return;
            }
            let (tx, rx) = watch::channel(None);
            if self
                .inner
                .shutting_down
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                let _ = tx.send(Some(StopReason::Shutdown));
            }
            jobs.insert(job_id, tx);
            rx
        };
        let inner = self.inner.clone();
        let span = tracing::info_span!("restic_job", job_id, kind = ?command.kind);
        tokio::spawn(
            async move {
                let finished = run_job(&inner, command, stop, sender.clone()).await;
                inner.record(finished.clone());
                if let Err(e) = sender.send_message(&finished).await {
                    warn!(error = %e, "could not queue the job's finish");
                }
            }
            .instrument(span),
        );
    }

    fn cancel(&self, job_id: i64) {
        match lock(&self.inner.jobs).get(&job_id) {
            Some(stop) => {
                info!(job_id, "cancelling restic job");
                let _ = stop.send(Some(StopReason::Cancel));
            }
            None => debug!(job_id, "ignoring a cancel for a job not running here"),
        }
    }
}

impl Inner {
    /// Notes a finished job for the hellos and takes it off the table.
    fn record(&self, finished: JobFinished) {
        let job_id = finished.job_id;
        {
            let mut recent = lock(&self.recent);
            recent.retain(|(_, f)| f.job_id != job_id);
            recent.push_back((Instant::now(), finished));
            while recent.len() > RECENT_FINISHED_MAX {
                recent.pop_front();
            }
        }
        lock(&self.jobs).remove(&job_id);
        self.job_ended.notify_waiters();
    }

    fn recent_finished(&self) -> Vec<JobFinished> {
        let mut recent = lock(&self.recent);
        recent.retain(|(at, _)| at.elapsed() < RECENT_FINISHED_FOR);
        recent.iter().map(|(_, f)| f.clone()).collect()
    }

    fn cached_version(&self) -> Option<Option<ResticVersion>> {
        match *lock(&self.version) {
            Some((at, version)) if at.elapsed() < VERSION_TTL => Some(version),
            _ => None,
        }
    }

    fn store_version(&self, version: Option<ResticVersion>) {
        *lock(&self.version) = Some((Instant::now(), version));
    }

    /// For the hello (synchronous): cached, else `restic version` now.
    fn version_blocking(&self) -> Option<ResticVersion> {
        if let Some(version) = self.cached_version() {
            return version;
        }
        let version = version::detect_blocking(&self.settings.restic_path);
        self.store_version(version);
        version
    }

    async fn version(&self) -> Option<ResticVersion> {
        if let Some(version) = self.cached_version() {
            return version;
        }
        let version = version::detect(&self.settings.restic_path).await;
        self.store_version(version);
        version
    }
}

impl CommandHandler for ResticHandler {
    fn handle(&self, frame: Envelope, sender: FrameSender) {
        match frame.kind.as_str() {
            wire::COMMAND_RESTIC => match frame.payload::<CommandRestic>() {
                Ok(command) => self.start(command, sender),
                Err(e) => refuse_unusable(&frame, e, sender),
            },
            wire::COMMAND_CANCEL => match frame.payload::<CommandCancel>() {
                Ok(cancel) => self.cancel(cancel.job_id),
                Err(e) => warn!(error = %e, "ignoring a command.cancel without a usable payload"),
            },
            _ => DefaultHandler.handle(frame, sender),
        }
    }

    fn hello_status(&self) -> HelloStatus {
        HelloStatus {
            restic_version: self.inner.version_blocking().map(|v| v.to_string()),
            running_jobs: Some(self.running_jobs()),
            recent_finished: self.inner.recent_finished(),
        }
    }
}

/// Fails a `command.restic` whose payload does not parse, if it names a job
/// (never echoing the payload: it holds the password).
fn refuse_unusable(frame: &Envelope, error: wire::WireError, sender: FrameSender) {
    #[derive(serde::Deserialize)]
    struct JobOnly {
        job_id: i64,
    }
    let Ok(JobOnly { job_id }) = frame.payload::<JobOnly>() else {
        warn!("ignoring a command.restic without a usable payload");
        return;
    };
    // serde's message may quote a value; keep only what kind of error it was.
    let reason = error
        .to_string()
        .split(['"', '`', '\''])
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    warn!(job_id, "refusing a command.restic without a usable payload");
    let finished = failed(
        job_id,
        wire::ERROR_AGENT,
        format!("the restic command is unusable ({reason}); is the agent older than the server?"),
        None,
    );
    tokio::spawn(async move {
        let _ = sender.send_message(&finished).await;
    });
}

fn failed(job_id: i64, kind: &str, error: String, exit_code: Option<i32>) -> JobFinished {
    JobFinished {
        exit_code,
        error_kind: Some(kind.to_string()),
        ..JobFinished::failed(job_id, error)
    }
}

fn succeeded(
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

/// The password, in a 0600 file inside a fresh 0700 directory; both are
/// removed when this is dropped (end of the run, error or cancel alike).
struct PasswordFile {
    dir: tempfile::TempDir,
}

impl PasswordFile {
    fn create(password: &str, parent: Option<&Path>) -> io::Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("rm-restic-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o700));
        }
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent)?,
            None => builder.tempdir()?,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(dir.path().join("password"))?;
        io::Write::write_all(&mut file, password.as_bytes())?;
        Ok(PasswordFile { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("password")
    }
}

/// What one job needs while it runs.
struct Job<'a> {
    inner: &'a Inner,
    command: &'a CommandRestic,
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
    async fn lookup_snapshot(&mut self, id: &str) -> Option<SnapshotInfo> {
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

async fn run_job(
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

/// Percent-decoding of a URL's password (`%40` → `@`) for the redactor.
fn urlencoding_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
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

/// Budget per `job.snapshots` frame: half the frame limit, so the envelope
/// and JSON escaping never push one over.
const SNAPSHOTS_PART_BYTES: usize = wire::MAX_FRAME_BYTES / 2;

/// Splits a listing into frames under [`SNAPSHOTS_PART_BYTES`]; always at
/// least one part, the last marked `last`.
pub fn snapshot_parts(job_id: i64, list: Vec<SnapshotInfo>) -> Vec<JobSnapshots> {
    let mut parts = Vec::new();
    let mut current: Vec<SnapshotInfo> = Vec::new();
    let mut size = 0;
    for snapshot in list {
        let len = serde_json::to_string(&snapshot).map_or(1024, |s| s.len()) + 1;
        if !current.is_empty() && size + len > SNAPSHOTS_PART_BYTES {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(snapshot);
    }
    parts.push(current);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, snapshots)| JobSnapshots {
            job_id,
            part: i as u32,
            snapshots,
            last: i + 1 == count,
        })
        .collect()
}

/// restic before 0.16 says nothing about what it restored: count the
/// regular files and bytes now under the target for the restored paths
/// (the includes, else the snapshot's paths).
async fn count_restored(job: &mut Job<'_>) -> RestoreResult {
    let options = &job.command.options;
    let Some(target) = options.target.clone() else {
        return RestoreResult::default();
    };
    let mut roots: Vec<String> = options.include.clone();
    if roots.is_empty() {
        let id = options.snapshot_id.clone().unwrap_or_default();
        if let Some(info) = job.lookup_snapshot(&id).await {
            roots = info.paths;
        }
    }
    let counted = tokio::task::spawn_blocking(move || {
        let mut total = RestoreResult::default();
        for root in roots {
            let relative = root.trim_start_matches('/');
            let path = Path::new(&target).join(relative);
            count_tree(&path, &mut total);
        }
        total
    })
    .await;
    counted.unwrap_or_default()
}

/// Adds the regular files under `path` (not following symlinks).
fn count_tree(path: &Path, total: &mut RestoreResult) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        total.files_restored += 1;
        total.bytes_restored += meta.len();
    } else if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            count_tree(&entry.path(), total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(i: usize) -> SnapshotInfo {
        SnapshotInfo {
            id: format!("{i:064x}"),
            short_id: format!("{i:08x}"),
            time: "2026-01-01T00:00:00Z".into(),
            hostname: "web-1".into(),
            paths: vec!["/srv/some/long/path/to/make/the/snapshot/bigger".into(); 4],
            tags: vec!["rm-plan:1".into()],
        }
    }

    #[test]
    fn snapshot_parts_stay_under_the_frame_limit() {
        let parts = snapshot_parts(3, vec![]);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].last && parts[0].snapshots.is_empty());

        let list: Vec<SnapshotInfo> = (0..8000).map(snapshot).collect();
        let parts = snapshot_parts(3, list.clone());
        assert!(parts.len() > 1, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            let text = wire::Message::envelope(part).to_text();
            assert!(
                text.len() < wire::MAX_FRAME_BYTES,
                "part {i}: {}",
                text.len()
            );
            assert_eq!(part.part as usize, i);
            assert_eq!(part.last, i + 1 == parts.len());
        }
        let joined: Vec<SnapshotInfo> = parts.into_iter().flat_map(|p| p.snapshots).collect();
        assert_eq!(joined, list);
    }

    #[test]
    fn url_passwords_are_decoded_for_redaction() {
        assert_eq!(urlencoding_decode("p%40ss%2Fw").unwrap(), "p@ss/w");
        assert_eq!(urlencoding_decode("plain%").unwrap(), "plain%");
    }

    #[test]
    fn recent_finished_is_bounded() {
        let handler = ResticHandler::new(ResticSettings {
            restic_path: "/nonexistent/restic".into(),
            cache_dir: std::env::temp_dir(),
            cancel_grace: CANCEL_GRACE,
            secrets_dir: None,
        });
        for id in 0..20 {
            handler.inner.record(succeeded(id, Some(0), None));
        }
        let recent = handler.inner.recent_finished();
        assert_eq!(recent.len(), RECENT_FINISHED_MAX);
        assert_eq!(recent[0].job_id, 4);
        let status = handler.hello_status();
        assert_eq!(status.restic_version, None);
        assert_eq!(status.running_jobs, Some(vec![]));
    }
}
