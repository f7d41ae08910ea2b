//! The agent ⇄ server wire protocol: JSON text frames `{"type","id","payload"}`.
//! Shared by both binaries; holds types and (de)serialisation only, no I/O.
//!
//! Frames are parsed in two steps — first the [`Envelope`], then the payload
//! for a known `type` — so an unknown type is never an error for the peer:
//! it is logged and ignored by whoever receives it.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

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

/// One frame on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub payload: serde_json::Value,
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
        Envelope {
            kind: P::TYPE.to_string(),
            id: None,
            // Serialising a plain struct of strings and numbers cannot fail.
            payload: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
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
    pub fn payload<P: DeserializeOwned>(&self) -> Result<P, WireError> {
        Ok(serde_json::from_value(self.payload.clone())?)
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
}
impl Message for JobFinished {
    const TYPE: &'static str = JOB_FINISHED;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_through_an_envelope() {
        let hello = Hello {
            agent_version: "v1".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: "web-1".into(),
            update: None,
        };
        let text = hello.envelope().to_text();
        assert!(text.contains(r#""type":"agent.hello""#));
        let env = Envelope::parse(&text).unwrap();
        assert_eq!(env.kind, AGENT_HELLO);
        assert_eq!(env.payload::<Hello>().unwrap(), hello);
    }

    #[test]
    fn unknown_type_parses_as_an_envelope() {
        let env = Envelope::parse(r#"{"type":"future.thing","payload":{"x":1}}"#).unwrap();
        assert_eq!(env.kind, "future.thing");
    }

    #[test]
    fn malformed_and_oversized_frames_are_refused() {
        assert!(matches!(
            Envelope::parse("{not json"),
            Err(WireError::Malformed(_))
        ));
        let big = "x".repeat(MAX_FRAME_BYTES + 1);
        assert!(matches!(Envelope::parse(&big), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn wrong_payload_shape_is_an_error_not_a_panic() {
        let env = Envelope::parse(r#"{"type":"agent.hello","payload":{"os":3}}"#).unwrap();
        assert!(env.payload::<Hello>().is_err());
    }
}
