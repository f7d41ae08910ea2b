//! The agent ⇄ server wire protocol: JSON text frames `{"type","id","payload"}`.
//! Shared by both binaries; holds types and (de)serialisation only, no I/O.
//!
//! Frames are parsed in two steps — first the [`Envelope`], then the payload
//! for a known `type` — so an unknown type is never an error for the peer:
//! it is logged and ignored by whoever receives it.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

/// The agent's endpoints on the server. Both sides use these: the server
/// registers its routes under them, the agent joins them onto the server
/// URL (keeping any path prefix).
pub const ENROLL_PATH: &str = "/agent/enroll";
pub const WS_PATH: &str = "/agent/ws";
pub const BINARY_PATH: &str = "/agent/binary";
pub const INSTALL_SH_PATH: &str = "/agent/install.sh";

/// Headers the server sends with the agent binary (`GET /agent/binary`):
/// its sha256 and version, which the updater checks against the command.
pub const SHA256_HEADER: &str = "x-agent-sha256";
pub const VERSION_HEADER: &str = "x-agent-version";

/// Largest frame either side accepts. A bigger frame closes the connection
/// with a policy-violation code.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest `data` of one `log.stream` message the agent sends.
pub const MAX_LOG_CHUNK_BYTES: usize = 64 * 1024;

// Agent → server.
pub const AGENT_HELLO: &str = "agent.hello";
pub const JOB_STARTED: &str = "job.started";
pub const JOB_FINISHED: &str = "job.finished";
pub const LOG_STREAM: &str = "log.stream";
// Server → agent.
pub const HELLO_ACK: &str = "hello.ack";
pub const HELLO_REJECTED: &str = "hello.rejected";

/// Close reason when the server took a newer connection for the same host
/// in place of this one (normally the agent's own reconnect; on a live
/// connection, another machine using the same secret).
pub const CLOSE_REPLACED: &str = "replaced by a newer connection";
pub const COMMAND_UPDATE: &str = "command.update";
pub const COMMAND_RESTIC: &str = "command.restic";
pub const COMMAND_CANCEL: &str = "command.cancel";
pub const JOB_PROGRESS: &str = "job.progress";
pub const JOB_SNAPSHOTS: &str = "job.snapshots";

/// One frame on the wire.
///
/// The payload is kept as the JSON text it arrived as and decoded only into
/// the type its `kind` names ([`Envelope::payload`]): a frame is never turned
/// into a `serde_json::Value` tree, which costs many times the frame's size
/// (a node per value, a `String` and a map entry per key). Parsing an
/// envelope costs one copy of the payload's text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Absent on the wire reads as `null`, as it always has.
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
}

fn null_payload() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// Equal when type, id and the payload's JSON text are the same.
impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.id == other.id && self.payload.get() == other.payload.get()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
}

impl Envelope {
    /// Builds a frame from a typed payload.
    pub fn new<P: Message>(payload: &P) -> Self {
        Envelope::of_kind(P::TYPE, payload)
    }

    /// Builds a frame of any `kind` from anything serialisable.
    ///
    /// The payload goes through a `serde_json::Value` on its way out, as it
    /// always has: that writes its keys in sorted order, and keeps every
    /// frame byte for byte what older agents and servers sent. The sender
    /// holds its own data, so this is no cost a peer can inflate.
    pub fn of_kind<P: Serialize + ?Sized>(kind: &str, payload: &P) -> Self {
        // Serialising a plain struct of strings and numbers cannot fail.
        let value = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
        Envelope {
            kind: kind.to_string(),
            id: None,
            payload: serde_json::value::to_raw_value(&value).unwrap_or_else(|_| null_payload()),
        }
    }

    /// Parses a text frame, refusing oversized input before touching JSON.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(text.len()));
        }
        Ok(serde_json::from_str(text)?)
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes the payload as `P`; the caller has already matched `kind`.
    /// Straight from the payload's text: no intermediate `Value`.
    pub fn payload<P: DeserializeOwned>(&self) -> Result<P, WireError> {
        Ok(serde_json::from_str(self.payload.get())?)
    }
}

/// A typed payload and the `type` string it travels under.
pub trait Message: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    fn envelope(&self) -> Envelope {
        Envelope::new(self)
    }
}

/// `agent.hello`: the first frame of every connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Hello {
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub hostname: String,
    /// Outcome of the last self-update, read from the update marker the
    /// updater leaves beside the binary. Lets the server finish an update
    /// job even when the agent's last messages before restarting were lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
    /// `restic version` of the restic this agent runs (`"0.14.0"`); `None`
    /// when restic is missing, and absent from agents older than the restic
    /// core (tell those apart with `running_jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic_version: Option<String>,
    /// Restic jobs this agent is running right now. `None` (absent) means an
    /// agent older than the restic core: it cannot run restic jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<Vec<i64>>,
    /// Restic jobs that ended recently (bounded), repeated in every hello:
    /// a `job.finished` written to a socket that died with the server is
    /// not lost. The server ignores a finish it already has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_finished: Vec<JobFinished>,
}
impl Message for Hello {
    const TYPE: &'static str = AGENT_HELLO;
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The new binary booted (this hello is coming from it).
    Updated,
    /// The boot watchdog put the previous binary back.
    RolledBack,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateReport {
    pub job_id: i64,
    pub from_version: String,
    pub to_version: String,
    pub outcome: UpdateOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `hello.ack`: the server accepted the hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HelloAck {
    pub host_id: i64,
    pub server_version: String,
}
impl Message for HelloAck {
    const TYPE: &'static str = HELLO_ACK;
}

/// `hello.rejected`: the server refused the hello; the connection closes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HelloRejected {
    pub reason: String,
}
impl Message for HelloRejected {
    const TYPE: &'static str = HELLO_REJECTED;
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Backup,
    Init,
    Forget,
    Prune,
    Check,
    Unlock,
    Restore,
    Diff,
    Update,
    Snapshots,
    Ls,
    Stats,
}

/// `job.started`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStarted {
    pub job_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
}
impl Message for JobStarted {
    const TYPE: &'static str = JOB_STARTED;
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishedStatus {
    Succeeded,
    Failed,
    Cancelled,
}

/// `job.finished`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobFinished {
    pub job_id: i64,
    pub status: FinishedStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The run succeeded with something to look at (restic's exit code 3:
    /// some files could not be read, the snapshot was written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// Why a restic job failed, one of the `ERROR_*` constants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// What the job produced, by kind: [`BackupResult`], [`ForgetResult`],
    /// [`CheckResult`], [`RestoreResult`], [`StatsResult`], [`LsResult`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}
impl Message for JobFinished {
    const TYPE: &'static str = JOB_FINISHED;
}

impl JobFinished {
    /// A job that failed with `error`; nothing else set.
    pub fn failed(job_id: i64, error: impl Into<String>) -> JobFinished {
        JobFinished {
            job_id,
            status: FinishedStatus::Failed,
            error: Some(error.into()),
            exit_code: None,
            warning: false,
            error_kind: None,
            result: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogStreamKind {
    Stdout,
    Stderr,
    /// Lines the agent itself writes about the job (e.g. updater steps).
    System,
}

/// `log.stream`: one chunk of a job's output. `seq` starts at 1 per job and
/// lets the server drop duplicates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogStream {
    pub job_id: i64,
    pub seq: i64,
    pub stream: LogStreamKind,
    pub data: String,
    /// Agent clock, RFC 3339.
    pub at: String,
}
impl Message for LogStream {
    const TYPE: &'static str = LOG_STREAM;
}

/// `command.update`: replace the agent binary with the staged one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandUpdate {
    pub job_id: i64,
    pub target_version: String,
    pub sha256: String,
    pub size: u64,
    /// Seconds the agent has to download, verify and preflight before it
    /// gives up (the server fails the job at its deadline; a swap after that
    /// would run a version nobody is waiting for). Absent from older
    /// servers: the agent then allows [`DEFAULT_STAGE_WITHIN_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_within_secs: Option<u64>,
}

/// Staging time allowed when `command.update` does not say (the server's
/// default deadline is 90 s).
pub const DEFAULT_STAGE_WITHIN_SECS: u64 = 75;
impl Message for CommandUpdate {
    const TYPE: &'static str = COMMAND_UPDATE;
}

// Failure classes of a restic job (`job.finished.error_kind`).
pub const ERROR_REPOSITORY_NOT_FOUND: &str = "repository_not_found";
pub const ERROR_REPOSITORY_LOCKED: &str = "repository_locked";
pub const ERROR_WRONG_PASSWORD: &str = "wrong_password";
pub const ERROR_RESTIC_NOT_FOUND: &str = "restic_not_found";
pub const ERROR_NO_SPACE: &str = "no_space";
pub const ERROR_RESTIC_FAILED: &str = "restic_failed";
/// The agent could not start the run (temporary directory, bad options).
pub const ERROR_AGENT: &str = "agent_error";

/// Where restic finds a repository and how it opens it. Secrets: `Debug`
/// shows neither the password nor `env` values, and the agent never writes
/// them anywhere but the 0600 password file and restic's environment.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResticRepository {
    pub url: String,
    pub password: String,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for ResticRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResticRepository")
            .field("url", &"[redacted]")
            .field("password", &"[redacted]")
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How long to keep snapshots (`restic forget --keep-*`). Empty keeps all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// A restic duration such as `30d` or `1y2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// Per-kind options of a `command.restic`; fields a kind does not use are
/// left empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResticOptions {
    /// backup: what to back up (absolute).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// backup: tags to add; forget, snapshots: tags to filter by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// backup: `--host`; forget, snapshots: only this host's snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// forget: `--group-by` (`host,paths`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// forget: also `--prune`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prune: bool,
    /// prune: `--max-unused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unused: Option<String>,
    /// check: `--read-data-subset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
    /// unlock: `--remove-all` (also fresh locks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_all: bool,
    /// restore, ls, diff, stats: the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// restore: `--include` paths (empty: the whole snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// restore: `--target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// ls: the directory to list (one level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `command.restic`: run one restic job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandRestic {
    pub job_id: i64,
    pub kind: JobKind,
    pub repository: ResticRepository,
    #[serde(default)]
    pub options: ResticOptions,
}
impl Message for CommandRestic {
    const TYPE: &'static str = COMMAND_RESTIC;
}

/// `command.cancel`: stop a running job (SIGINT, then SIGKILL after 30 s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandCancel {
    pub job_id: i64,
}
impl Message for CommandCancel {
    const TYPE: &'static str = COMMAND_CANCEL;
}

/// `job.progress`: the latest state of a running job (at most one a second).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct JobProgress {
    pub job_id: i64,
    /// 0 to 100.
    pub percent: f64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub files_done: u64,
    #[serde(default)]
    pub total_files: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_remaining: Option<u64>,
}
impl Message for JobProgress {
    const TYPE: &'static str = JOB_PROGRESS;
}

/// One snapshot as restic lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    pub id: String,
    #[serde(default)]
    pub short_id: String,
    /// RFC 3339, as restic prints it.
    pub time: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `job.snapshots`: part of a `snapshots` job's listing, sent before its
/// `job.finished` in as many parts as the frame limit needs. `last` marks
/// the final part: only a complete listing replaces the server's index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSnapshots {
    pub job_id: i64,
    pub part: u32,
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(default)]
    pub last: bool,
}
impl Message for JobSnapshots {
    const TYPE: &'static str = JOB_SNAPSHOTS;
}

/// `result` of a backup job (restic's summary).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BackupResult {
    pub snapshot_id: String,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub data_added: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
    #[serde(default)]
    pub duration_secs: f64,
    /// The snapshot as restic would list it, for the server's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// `result` of a forget job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ForgetResult {
    pub removed: Vec<String>,
    pub kept: u64,
}

/// `result` of a check job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CheckResult {
    pub errors: u64,
}

/// `result` of a restore job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RestoreResult {
    pub files_restored: u64,
    pub bytes_restored: u64,
}

/// `result` of a stats job (`restic stats --json`, restore-size mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StatsResult {
    pub total_size: u64,
    pub total_file_count: u64,
    #[serde(default)]
    pub snapshots_count: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LsEntry {
    pub name: String,
    /// `file`, `dir`, `symlink`, …
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
}

/// `result` of an ls job: one directory's entries (capped; `truncated`
/// says the directory had more).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LsResult {
    pub path: String,
    pub entries: Vec<LsEntry>,
    #[serde(default)]
    pub truncated: bool,
}

#[cfg(test)]
mod tests;
