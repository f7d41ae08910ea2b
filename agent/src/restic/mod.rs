//! Running restic for the server: `command.restic` starts a job,
//! `command.cancel` stops one, and every hello reports restic's version, the
//! jobs running and the ones that finished lately. [`ResticHandler`] owns
//! the job table; `job` runs one job to its finish, [`command`] builds
//! restic's arguments, [`run`] starts and follows the process, [`output`]
//! understands what it prints, `results` and `secrets` hold what a job
//! reports beyond that and how its password is kept out of sight.
//!
//! Must not: write the repository password or `env` values anywhere but
//! the 0600 password file and restic's environment — not in arguments, the
//! job log, or tracing.

pub mod command;
pub mod output;
pub mod run;
pub mod version;

mod job;
mod results;
mod secrets;

pub use results::snapshot_parts;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, warn};

use crate::client::{CommandHandler, DefaultHandler, FrameSender, HelloStatus};
use crate::config::AgentConfig;
use crate::wire::{self, CommandCancel, CommandRestic, Envelope, JobFinished};

use job::{failed, run_job};
use run::StopReason;
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

#[cfg(test)]
mod tests;
