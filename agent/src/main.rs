//! `restic-manager-agent`: the command line over the agent library. Parses
//! arguments, sets up logging and signals, wires the self-updater's exits,
//! and turns errors into `error: …` with exit code 1. Nothing else lives here.
//!
//! Exit codes of `run`: 0 after SIGTERM/SIGINT or after a self-update swapped
//! the binary (the supervisor starts the new one); 1 on an error or after the
//! boot watchdog rolled back to the previous binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use agent::client::{self, RunOptions};
use agent::config::{self, AgentConfig, ConfigError, DEFAULT_CONFIG_PATH};
use agent::handler::AgentHandler;
use agent::restic::{ResticHandler, ResticSettings};
use agent::updater::watchdog::{self, BootDecision, ROLLBACK_EXIT_CODE, WatchEnd};
use agent::updater::{self, UpdateHandler};
use agent::{enroll, version};

#[derive(Debug, Parser)]
#[command(
    name = "restic-manager-agent",
    about = "Connects this host to a restic-manager server and runs what it sends",
    // `--version` is our own flag: its first line is a contract the
    // self-updater checks byte for byte, so clap must not format it.
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
struct Cli {
    /// Print `restic-manager-agent <version>` (and the commit) and exit.
    #[arg(short = 'V', long = "version")]
    version: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trade a one-time enrollment token for this host's secret and write the config (mode 0600).
    Enroll(EnrollArgs),
    /// Connect to the server and run until SIGTERM/SIGINT; reconnects on its own.
    ///
    /// Exits 0 when stopped or after a self-update put a new binary in place
    /// (run it under a supervisor that always restarts it), and 1 after the
    /// boot watchdog rolled a failed update back to the previous binary.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct ConfigPath {
    /// Agent config file.
    #[arg(long = "config", env = config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
    path: PathBuf,
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// Server base URL, e.g. https://rm.example.com
    #[arg(long, env = "RM_AGENT_SERVER")]
    server: String,
    /// One-time enrollment token from `restic-manager host add` or the dashboard.
    /// Prefer the env twin: a flag shows up in the process list.
    // Tokens issued before the `rme_` prefix begin with `-` one time in 64:
    // `--token -xQ…` must take that as the value, not as an option.
    #[arg(
        long,
        env = "RM_AGENT_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: String,
    /// Name this host reports (default: the system hostname).
    #[arg(long, env = "RM_AGENT_HOSTNAME")]
    hostname: Option<String>,
    #[command(flatten)]
    config: ConfigPath,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigPath,
}

/// What the boot watchdog decided for this start of `run`, with the path of
/// this executable.
struct Boot {
    binary: Result<PathBuf, String>,
    report: Option<agent::wire::UpdateReport>,
    probation: bool,
}

/// Counts this start against a new binary on probation, or rolls it back.
/// Runs before the arguments and the config are read: a new build that
/// fails on either must still be caught by the watchdog.
fn boot() -> Result<Boot, String> {
    // First, before any update can swap the binary: afterwards
    // /proc/self/exe names a deleted file.
    let binary = updater::resolve_own_binary().map_err(|e| e.to_string());
    let (report, probation) = match &binary {
        Ok(bin) => match watchdog::on_boot(bin, version::VERSION) {
            BootDecision::Run { report, probation } => (report, probation),
            BootDecision::RolledBack { reason } => return Err(reason),
        },
        Err(e) => {
            tracing::warn!(error = %e, "self-update and the boot watchdog are off");
            (None, false)
        }
    };
    Ok(Boot {
        binary,
        report,
        probation,
    })
}

fn main() -> ExitCode {
    // Logs go to stderr: `--version` and `enroll` keep stdout to themselves.
    init_logging();
    let boot = if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        match boot() {
            Ok(b) => Some(b),
            Err(reason) => {
                tracing::error!("{reason}; exiting so the previous binary starts");
                return ExitCode::from(ROLLBACK_EXIT_CODE);
            }
        }
    } else {
        None
    };
    let cli = Cli::parse();
    if cli.version {
        println!("{}{}", version::VERSION_PREFIX, version::VERSION);
        println!("commit {}", version::COMMIT);
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        // Unreachable thanks to arg_required_else_help, but never panic.
        eprintln!("error: a subcommand is required (try --help)");
        return ExitCode::from(2);
    };
    agent::install_crypto_provider();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Enroll(args) => enroll_cmd(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => match boot {
                Some(boot) => run_cmd(args, boot).await,
                // Only when `run` came after other arguments; count it now.
                None => match self::boot() {
                    Ok(boot) => run_cmd(args, boot).await,
                    Err(reason) => {
                        tracing::error!("{reason}; exiting so the previous binary starts");
                        Ok(ExitCode::from(ROLLBACK_EXIT_CODE))
                    }
                },
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so stdout stays clean for `--version` and `enroll`'s
/// one-line answer. `RUST_LOG` filters; the default is `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person watching; journald and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn enroll_cmd(args: EnrollArgs) -> anyhow::Result<()> {
    let path = args.config.path;
    // The token is single-use: make sure the result can be saved before
    // spending it.
    config::check_writable(&path)?;
    let hostname = args
        .hostname
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(client::local_hostname);
    let config = enroll::enroll(&args.server, &args.token, &hostname).await?;
    config.save(&path).with_context(|| {
        format!(
            "enrolled as host {} but could not save the secret; enroll again with a new token",
            config.host_id
        )
    })?;
    println!(
        "enrolled as host {}; config written to {}",
        config.host_id,
        path.display()
    );
    Ok(())
}

async fn run_cmd(args: RunArgs, boot: Boot) -> anyhow::Result<ExitCode> {
    let Boot {
        binary,
        report,
        probation,
    } = boot;
    let path = args.config.path;
    let config = match AgentConfig::load(&path) {
        Ok(config) => config,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "no agent config at {0}: enroll this host first with \
                 `restic-manager-agent enroll --server URL --token TOKEN --config {0}`",
                path.display()
            )
        }
        Err(e) => return Err(e.into()),
    };

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel(1);
    let updater = UpdateHandler::new(&config, binary.clone(), version::VERSION, exit_tx);
    let restic = ResticHandler::new(ResticSettings::from_config(&config));
    let opts = RunOptions {
        update_report: report.clone(),
        handler: Arc::new(AgentHandler::new(Arc::new(updater), restic.clone())),
        ..RunOptions::default()
    };
    let agent = client::spawn(config, opts);
    let mut state = agent.state();
    let watch_state = agent.state();
    let watch = async {
        match &binary {
            Ok(bin) => {
                watchdog::watch_connection(
                    bin,
                    report.as_ref(),
                    probation,
                    watch_state,
                    watchdog::HEALTHY_AFTER_ACK,
                )
                .await
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(watch);
    let signal = agent::shutdown_signal();
    tokio::pin!(signal);

    let mut watching = true;
    let code = loop {
        tokio::select! {
            () = &mut signal => {
                if let Ok(bin) = &binary {
                    watchdog::on_clean_stop(bin, version::VERSION);
                }
                break ExitCode::SUCCESS;
            }
            Some(request) = exit_rx.recv() => {
                tracing::info!(
                    job_id = request.job_id,
                    "binary swapped; exiting so the supervisor starts {}",
                    request.to_version
                );
                break ExitCode::SUCCESS;
            }
            end = &mut watch, if watching => match end {
                WatchEnd::RolledBack(reason) => {
                    tracing::error!("{reason}; exiting so the previous binary starts");
                    break ExitCode::from(ROLLBACK_EXIT_CODE);
                }
                WatchEnd::Acknowledged | WatchEnd::Stopped => watching = false,
            },
            // The loop ends by itself only for a config it cannot use.
            _ = state.wait_for(|s| s.stopped) => break ExitCode::FAILURE,
        }
    };
    // restic jobs stop first (SIGINT, then SIGKILL to their process
    // groups) so their finish is queued before the connection closes.
    restic.shutdown().await;
    // Closes the connection cleanly, sending queued frames first.
    agent.stop().await?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn token_of(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Some(Command::Enroll(a)) => a.token,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn enroll_token_may_begin_with_a_hyphen() {
        // Bare base64url tokens (before the `rme_` prefix) begin with `-`
        // one time in 64, and with `--` one time in 4096.
        for (args, want) in [
            (
                &["a", "enroll", "--server", "http://s", "--token", "-xQ_9-a"][..],
                "-xQ_9-a",
            ),
            (
                &["a", "enroll", "--token", "-xQ_9-a", "--server", "http://s"],
                "-xQ_9-a",
            ),
            (
                &["a", "enroll", "--server", "http://s", "--token=-xQ_9-a"],
                "-xQ_9-a",
            ),
            (
                &["a", "enroll", "--token", "--xQ_9-a", "--server", "http://s"],
                "--xQ_9-a",
            ),
        ] {
            assert_eq!(token_of(args), want, "{args:?}");
        }
        // The options after the token are still read as options.
        let cli = Cli::try_parse_from([
            "a", "enroll", "--token", "-x", "--server", "http://s", "--config", "/c",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Enroll(a)) => {
                assert_eq!(a.server, "http://s");
                assert_eq!(a.config.path, std::path::PathBuf::from("/c"));
            }
            other => panic!("{other:?}"),
        }
    }
}
