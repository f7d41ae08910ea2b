//! Agents that obey `command.update` the way a real one would look from the
//! server (restart at the target version, or refuse), and job fixtures.
//! Shared by the update, fleet, jobs and browser tests.
use std::{sync::Arc, time::Duration};

use agent::{
    client::{AgentHandle, FrameSender, Identity, RunOptions},
    config::AgentConfig,
    wire::{
        self, CommandUpdate, Envelope, FinishedStatus, JobFinished, JobStarted, LogStream,
        LogStreamKind, UpdateOutcome, UpdateReport,
    },
};
use restic_manager::store::jobs::{ActorKind, JobKind, NewJob};
use tokio::sync::{mpsc, watch};

use super::TestApp;

/// The version simulated agents start at (the server is newer).
pub const OLD: &str = "v0.0.1-old";

/// The options `TestApp::agent` uses: quick reconnects, fixed identity.
pub fn agent_options(cfg: &AgentConfig, version: &str) -> RunOptions {
    RunOptions {
        identity: Identity {
            agent_version: version.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: format!("host-{}", cfg.host_id),
        },
        backoff_initial: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(15),
        ..RunOptions::default()
    }
}

pub type Commands = mpsc::UnboundedReceiver<(CommandUpdate, FrameSender)>;

/// An agent whose handler hands `command.update` frames to the test.
pub fn catching_updates(
    cfg: &AgentConfig,
    version: &str,
    report: Option<UpdateReport>,
) -> (AgentHandle, Commands) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = agent_options(cfg, version);
    opts.update_report = report;
    opts.handler = Arc::new(move |env: Envelope, sender: FrameSender| {
        if env.kind == wire::COMMAND_UPDATE
            && let Ok(cmd) = env.payload::<CommandUpdate>()
        {
            let _ = tx.send((cmd, sender));
        }
    });
    (agent::client::spawn(cfg.clone(), opts), rx)
}

/// Stages a stand-in agent binary for linux/x86_64 recorded as `version`;
/// returns its SHA-256 and size.
pub async fn stage_binary(app: &TestApp, version: &str) -> (String, u64) {
    let src = app.dir.path().join("fake-agent");
    std::fs::write(
        &src,
        format!("#!/bin/sh\necho restic-manager-agent {version}\n"),
    )
    .unwrap();
    let b = restic_manager::agent_binaries::stage_with_version(
        app.db(),
        &app.settings.data_dir,
        &src,
        "linux",
        "x86_64",
        Some(version.into()),
    )
    .await
    .unwrap();
    (b.sha256, b.size as u64)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Plan {
    /// Restart at once at the target version.
    Update,
    /// Refuse, as after a checksum mismatch, and keep running.
    Fail,
    /// Start, then wait until the plan changes.
    Hold,
    /// Report the job cancelled (no error text) and keep running.
    Cancel,
}

/// A host whose agent follows a plan that the test may change meanwhile.
pub struct Sim {
    pub plan: watch::Sender<Plan>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn simulate(cfg: AgentConfig, from_version: &str, plan: Plan) -> Sim {
    let (plan_tx, mut plan_rx) = watch::channel(plan);
    let mut version = from_version.to_string();
    let task = tokio::spawn(async move {
        let mut report = None;
        loop {
            let (agent, mut cmds) = catching_updates(&cfg, &version, report.take());
            let Some((cmd, sender)) = cmds.recv().await else {
                return;
            };
            let started = JobStarted {
                job_id: cmd.job_id,
                kind: Some(wire::JobKind::Update),
            };
            sender.send_message(&started).await.ok();
            loop {
                let p = *plan_rx.borrow_and_update();
                match p {
                    Plan::Hold => {
                        if plan_rx.changed().await.is_err() {
                            return;
                        }
                    }
                    Plan::Fail | Plan::Cancel => {
                        let failed = if p == Plan::Fail {
                            JobFinished {
                                job_id: cmd.job_id,
                                status: FinishedStatus::Failed,
                                error: Some("checksum mismatch: expected 3f2a…, got 9b01…".into()),
                                exit_code: None,
                                warning: false,
                                error_kind: None,
                                result: None,
                            }
                        } else {
                            JobFinished {
                                job_id: cmd.job_id,
                                status: FinishedStatus::Cancelled,
                                error: None,
                                exit_code: None,
                                warning: false,
                                error_kind: None,
                                result: None,
                            }
                        };
                        sender.send_message(&failed).await.ok();
                        // Keeps running the old version until the test ends.
                        let _ = cmds.recv().await;
                        agent.shutdown().await;
                        return;
                    }
                    Plan::Update => break,
                }
            }
            agent.shutdown().await;
            report = Some(UpdateReport {
                job_id: cmd.job_id,
                from_version: version.clone(),
                to_version: cmd.target_version.clone(),
                outcome: UpdateOutcome::Updated,
                reason: None,
            });
            version = cmd.target_version;
        }
    });
    Sim {
        plan: plan_tx,
        task,
    }
}

/// A queued backup job for `host_id`, created straight in the store (and
/// marked, as the services that create jobs do, for the host's next hello).
pub async fn new_job(app: &TestApp, host_id: i64) -> i64 {
    app.state()
        .marks
        .mark(restic_manager::agents::marks::Mark::Jobs, host_id);
    let j = NewJob {
        host_id,
        kind: JobKind::Backup,
        actor_kind: ActorKind::User,
        actor_id: None,
        actor_name: "admin".into(),
        target_version: None,
        deadline_at: None,
    };
    restic_manager::store::jobs::create(app.db(), &j, app.clock.now_ms())
        .await
        .unwrap()
        .id
}

/// One stdout log line as an agent sends it.
pub fn log_line(job_id: i64, seq: i64, data: &str) -> LogStream {
    LogStream {
        job_id,
        seq,
        stream: LogStreamKind::Stdout,
        data: data.into(),
        at: "2026-11-28T10:00:00Z".into(),
    }
}
