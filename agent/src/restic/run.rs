//! Starting restic and following one run of it: a stripped environment, its
//! own process group, death with the agent, stdout and stderr read line by
//! line, the job log batched into `log.stream` frames, progress throttled,
//! and SIGINT-then-SIGKILL when the job is stopped.
//!
//! Must not: put a secret on a command line or in a log line. The password
//! reaches restic only as a file named in `RESTIC_PASSWORD_FILE`.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::client::FrameSender;
use crate::wire::{self, JobProgress, LogStream, LogStreamKind, Message};

use super::output::{Line, Output};

/// The only variables of the agent's own environment restic inherits.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "TMPDIR", "LANG"];

/// Largest stdout line kept whole: `snapshots --json` prints its whole
/// listing as one line. Longer lines are cut (and then fail to parse).
const MAX_STDOUT_LINE: usize = 64 * 1024 * 1024;

/// How often buffered log lines are sent while restic keeps printing.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Progress frames per job: at most one per this interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why a running job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `command.cancel`: the job ends `cancelled`.
    Cancel,
    /// The agent is shutting down cleanly.
    Shutdown,
}

/// `PATH`, `HOME`, `TMPDIR` and `LANG` as the agent has them (those set).
pub fn base_env() -> Vec<(OsString, OsString)> {
    INHERITED_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
        .collect()
}

/// What to start: the binary, its arguments and the variables added to
/// [`base_env`] (the repository's `env`, `RESTIC_REPOSITORY`,
/// `RESTIC_PASSWORD_FILE`).
pub struct Spawn<'a> {
    pub restic: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
}

/// Builds the command: stripped environment, piped output, own process
/// group, and (Linux) SIGKILL when the agent dies.
fn command(spec: &Spawn<'_>) -> Command {
    let mut command = Command::new(spec.restic);
    command
        .args(spec.args)
        .env_clear()
        .envs(base_env())
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A job future dropped without finishing (runtime shutdown) must
        // not leave restic behind either.
        .kill_on_drop(true);
    #[cfg(unix)]
    {
        // Its own group: cancel signals restic and anything it started
        // (an rclone or ssh backend) together, and a Ctrl-C aimed at the
        // agent's terminal does not hit restic behind our back.
        command.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
        let agent_pid = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The agent died between fork and prctl: nobody would kill us.
                if libc::getppid() != agent_pid {
                    return Err(io::Error::other("the agent exited while starting restic"));
                }
                Ok(())
            });
        }
    }
    #[cfg(windows)]
    {
        // CREATE_NEW_PROCESS_GROUP: a console Ctrl-C for the agent does not
        // reach restic; cancel kills the process. (A job object tying
        // restic's life to the agent's is left for the Windows port.)
        command.creation_flags(0x0000_0200);
    }
    command
}

struct SpawnRequest {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Every restic is forked from one dedicated thread that lives as long as
/// the agent. `PR_SET_PDEATHSIG` fires when the *thread* that forked the
/// child exits, not the process: forked from a tokio blocking-pool thread
/// (which exits after 10 s idle) restic would be SIGKILLed mid-backup, and
/// even a worker thread may retire through `block_in_place`. This thread
/// never returns, so the signal fires exactly when the agent process dies.
fn spawner() -> Option<&'static std::sync::mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<std::sync::mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
            let started = std::thread::Builder::new()
                .name("restic-spawner".into())
                .spawn(move || {
                    // The sender lives in the static: this loop never ends.
                    for request in rx {
                        let SpawnRequest {
                            mut command,
                            runtime,
                            reply,
                        } = request;
                        // The child's pipes and reaping belong to the job's
                        // runtime, whichever thread forks it.
                        let _entered = runtime.enter();
                        let _ = reply.send(command.spawn());
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    warn!(error = %e, "cannot start the restic spawner thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Starts restic. `Err` with `NotFound` means the binary is missing.
pub async fn spawn(spec: &Spawn<'_>) -> io::Result<Child> {
    let mut command = command(spec);
    let Some(spawner) = spawner() else {
        // No thread to fork from: the child still dies with its group on
        // cancel and shutdown, only not on SIGKILL of the agent.
        return command.spawn();
    };
    let (reply, answer) = oneshot::channel();
    let request = SpawnRequest {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    spawner
        .send(request)
        .map_err(|_| io::Error::other("the restic spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the restic spawner thread is gone"))?
}

/// Sends `signal` to the process group led by `pid` (restic and whatever
/// it started). Only call while the child is not yet reaped, so the id
/// cannot belong to someone else.
#[cfg(unix)]
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// SIGINT: restic stops, removes its lock and exits.
fn interrupt(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGINT);
    }
    #[cfg(not(unix))]
    let _ = child.start_kill();
}

/// SIGKILL to the whole group.
fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGKILL);
    }
    let _ = child.start_kill();
}

/// Replaces secrets with `***` in whatever leaves the agent. restic does not
/// print the password, but a backend error may echo a URL with credentials
/// or an `env` value.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Values shorter than 4 bytes are left alone: replacing every `a` in
    /// a log would hide nothing and garble everything.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// A job's log: lines batched into `log.stream` frames, `seq` from 1.
pub struct JobLog {
    job_id: i64,
    sender: FrameSender,
    redactor: Redactor,
    seq: i64,
    buffer: String,
    stream: LogStreamKind,
}

impl JobLog {
    pub fn new(job_id: i64, sender: FrameSender, redactor: Redactor) -> Self {
        JobLog {
            job_id,
            sender,
            redactor,
            seq: 0,
            buffer: String::new(),
            stream: LogStreamKind::System,
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Adds one line, sending the batch first when it would grow too big
    /// or the stream changes. Waits while the outgoing queue is full.
    pub async fn line(&mut self, stream: LogStreamKind, text: &str) {
        let mut line = self.redactor.apply(text.trim_end_matches(['\r', '\n']));
        // Room for the newline; a cut line says so.
        let limit = wire::MAX_LOG_CHUNK_BYTES - 16;
        if line.len() > limit {
            line.truncate(line.floor_char_boundary(limit));
            line.push_str(" [cut]");
        }
        if !self.buffer.is_empty()
            && (stream != self.stream
                || self.buffer.len() + line.len() + 1 > wire::MAX_LOG_CHUNK_BYTES)
        {
            self.flush().await;
        }
        self.stream = stream;
        self.buffer.push_str(&line);
        self.buffer.push('\n');
    }

    /// A line the agent writes about the job, sent at once.
    pub async fn system(&mut self, text: &str) {
        self.line(LogStreamKind::System, text).await;
        self.flush().await;
    }

    pub async fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        self.seq += 1;
        let chunk = LogStream {
            job_id: self.job_id,
            seq: self.seq,
            stream: self.stream,
            data: std::mem::take(&mut self.buffer),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        // Lines wait for room (back-pressure on restic); only a stopped
        // agent loses them.
        if let Err(e) = self.sender.send(&chunk.envelope()).await {
            warn!(job_id = self.job_id, error = %e, "could not queue a job log line");
        }
    }
}

/// Sends progress at most once a [`PROGRESS_EVERY`], never waiting: a full
/// queue drops progress, never lines or the finish.
pub struct ProgressGate {
    job_id: i64,
    sender: FrameSender,
    last: Option<Instant>,
}

impl ProgressGate {
    pub fn new(job_id: i64, sender: FrameSender) -> Self {
        ProgressGate {
            job_id,
            sender,
            last: None,
        }
    }

    pub fn offer(&mut self, mut progress: JobProgress) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < PROGRESS_EVERY)
        {
            return;
        }
        progress.job_id = self.job_id;
        if self.sender.try_send(&progress.envelope()).is_ok() {
            self.last = Some(now);
        }
    }
}

/// How one restic process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// Set when the job was told to stop while this process ran.
    pub stopped: Option<StopReason>,
}

/// Follows `child` to its end: stdout lines through `output` (JSON parsed,
/// the rest logged), stderr lines logged, progress offered, and the stop
/// signal turned into SIGINT then, after `grace`, SIGKILL.
pub async fn follow(
    mut child: Child,
    output: &mut Output,
    log: &mut JobLog,
    progress: &mut ProgressGate,
    stop: &mut watch::Receiver<Option<StopReason>>,
    grace: Duration,
) -> io::Result<Ended> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr pipe"))?;
    let mut stdout = BufReader::new(stdout);
    let mut stderr = BufReader::new(stderr);
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped: Option<StopReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut status = None;
    let mut stop_open = true;

    if let Some(reason) = *stop.borrow_and_update() {
        stopped = Some(reason);
        interrupt(&mut child);
        kill_at = Some(tokio::time::Instant::now() + grace);
    }

    while status.is_none() || out_open || err_open {
        let kill_deadline = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = read_line(&mut stdout, &mut out_buf, MAX_STDOUT_LINE), if out_open => {
                match line {
                    Some(text) => match output.stdout_line(&text) {
                        Line::Log(text) => log.line(LogStreamKind::Stdout, &text).await,
                        Line::Progress(p) => progress.offer(p),
                        Line::Quiet => {}
                    },
                    None => out_open = false,
                }
            }
            line = read_line(&mut stderr, &mut err_buf, wire::MAX_LOG_CHUNK_BYTES), if err_open => {
                match line {
                    Some(text) => {
                        if let Some(text) = output.stderr_line(&text) {
                            log.line(LogStreamKind::Stderr, &text).await;
                        }
                    }
                    None => err_open = false,
                }
            }
            result = child.wait(), if status.is_none() => {
                status = Some(result?);
            }
            changed = stop.changed(), if stopped.is_none() && stop_open => {
                match changed {
                    // Once restic has exited there is nothing left to stop.
                    Ok(()) => if let Some(reason) = *stop.borrow_and_update()
                        && status.is_none()
                    {
                        stopped = Some(reason);
                        interrupt(&mut child);
                        kill_at = Some(tokio::time::Instant::now() + grace);
                    },
                    // The job table dropped its handle: nobody can stop
                    // the run any more; keep following it.
                    Err(_) => stop_open = false,
                }
            }
            () = kill_deadline => {
                kill_at = None;
                if status.is_none() {
                    log.system(&format!(
                        "restic did not stop within {} s of SIGINT: killing it",
                        grace.as_secs()
                    )).await;
                    kill(&mut child);
                }
            }
            _ = tick.tick() => log.flush().await,
        }
    }
    log.flush().await;
    let status = status.ok_or_else(|| io::Error::other("restic's exit status is unknown"))?;
    Ok(Ended {
        exit_code: status.code(),
        stopped,
    })
}

/// Reads one line (without its newline), keeping at most `max` bytes of it.
/// `None` at the end of the stream or on a read error.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Option<String> {
    buf.clear();
    let mut seen_any = false;
    loop {
        let available = match reader.fill_buf().await {
            Ok(bytes) => bytes,
            Err(_) => return None,
        };
        if available.is_empty() {
            return seen_any.then(|| String::from_utf8_lossy(buf).into_owned());
        }
        seen_any = true;
        let (chunk, found, used) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true, i + 1),
            None => (available, false, available.len()),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if found {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Some(String::from_utf8_lossy(buf).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_hides_secrets_of_useful_length() {
        let r = Redactor::new(["hunter2-pw".to_string(), "ab".to_string()]);
        assert_eq!(
            r.apply("rest:http://u:hunter2-pw@h/ ab"),
            "rest:http://u:***@h/ ab"
        );
    }

    #[tokio::test]
    async fn read_line_cuts_long_lines_and_keeps_the_next() {
        let data: &[u8] = b"short\r\nabcdefghij\nlast";
        let mut reader = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 5).await.as_deref(),
            Some("short")
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, 5).await.as_deref(),
            Some("abcde")
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, 5).await.as_deref(),
            Some("last")
        );
        assert_eq!(read_line(&mut reader, &mut buf, 5).await, None);
    }

    #[tokio::test]
    async fn log_lines_are_batched_per_stream_with_increasing_seq() {
        let (sender, mut rx) = FrameSender::detached(16);
        let mut log = JobLog::new(5, sender, Redactor::new(["topsecret".to_string()]));
        log.line(LogStreamKind::Stdout, "a\n").await;
        log.line(LogStreamKind::Stdout, "b topsecret").await;
        log.line(LogStreamKind::Stderr, "c").await;
        log.flush().await;
        let frames: Vec<LogStream> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|t| wire::Envelope::parse(&t).unwrap().payload().unwrap())
            .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[0].seq, frames[0].stream),
            (1, LogStreamKind::Stdout)
        );
        assert_eq!(frames[0].data, "a\nb ***\n");
        assert_eq!((frames[1].seq, frames[1].data.as_str()), (2, "c\n"));
    }
}
