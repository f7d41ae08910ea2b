//! Command line of the `restic-manager` server binary. Parses flags (each
//! with its `RM_` env twin) and calls into the library; nothing else.
use std::{io::Read, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use restic_manager::{
    config::{LogFormat, Settings, default_database_url},
    store::users::Role,
    version,
};

#[derive(Parser)]
#[command(
    name = "restic-manager",
    about = "Manage a fleet of restic-backed hosts",
    disable_version_flag = true
)]
struct Cli {
    /// Print version and exit.
    #[arg(long, short = 'V', action = clap::ArgAction::SetTrue)]
    version: bool,
    #[command(flatten)]
    db: DbArgs,
    /// Log format: human-readable text or JSON lines; one line per event either
    /// way (control characters in values are escaped).
    #[arg(
        long,
        env = "RM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// Directory for the SQLite database and staged agent binaries.
    #[arg(long, env = "RM_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,
    /// Database URL (sqlite://… or postgres://…). Default: SQLite in the data dir.
    #[arg(long, env = "RM_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Public base URL of this server, used in install commands shown to admins
    /// (default: taken from each request's Host header).
    #[arg(long, env = "RM_PUBLIC_URL")]
    public_url: Option<String>,
    /// Reverse proxies whose X-Forwarded-For is believed, as a comma-separated
    /// list of addresses or CIDR blocks (e.g. 10.0.0.0/8,::1). The client is
    /// the rightmost address not in the list; it is what login throttling
    /// and the audit log use. Default: none (the TCP peer is the client).
    #[arg(long, env = "RM_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    trusted_proxies: Vec<restic_manager::net::Cidr>,
    /// Mark the session cookie Secure and send HSTS even when --public-url is
    /// not https (on by itself when it is). Forwarded headers never decide it.
    #[arg(long, env = "RM_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Password for the `admin` user created on first start (default: random, printed once).
    #[arg(long, env = "RM_BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
    bootstrap_admin_password: Option<String>,
    /// Seconds an agent has to come back at the target version after an update.
    #[arg(long, env = "RM_UPDATE_TIMEOUT", default_value_t = 90)]
    update_timeout: u64,
    /// Seconds an updated agent must stay connected before its update counts as succeeded (0: on hello).
    #[arg(long, env = "RM_UPDATE_MIN_HEALTHY", default_value_t = 5)]
    update_min_healthy: u64,
    /// Seconds a host may be offline before a host_offline alert is raised.
    #[arg(long, env = "RM_OFFLINE_ALERT_AFTER", default_value_t = 300)]
    offline_alert_after: u64,
    /// Idle session lifetime in minutes.
    #[arg(long, env = "RM_SESSION_IDLE_MINUTES", default_value_t = 720)]
    session_idle_minutes: u64,
    /// Absolute session lifetime in hours.
    #[arg(long, env = "RM_SESSION_MAX_HOURS", default_value_t = 168)]
    session_max_hours: u64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "RM_WORKERS")]
    workers: Option<usize>,
    /// The 32-byte key that encrypts repository passwords and credentials at
    /// rest (default: <data-dir>/secret.key, created 0600 on first start).
    /// Back it up apart from the database: without it those secrets are lost.
    #[arg(long, env = "RM_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// IANA time zone for plan schedules that name none and for repository
    /// maintenance schedules (e.g. Europe/Berlin).
    #[arg(long, env = "RM_TIMEZONE", default_value = "UTC", value_parser = parse_timezone)]
    timezone: chrono_tz::Tz,
    /// Hours a covering plan may go without a successful backup before its
    /// host counts as stale (and a backup_stale alert is raised).
    #[arg(long, env = "RM_BACKUP_STALE_AFTER", default_value_t = 26, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    backup_stale_after: u64,
    /// Bearer token that may read /metrics without a session
    /// (`Authorization: Bearer <token>`). Without it only sessions can.
    #[arg(long, env = "RM_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// How many days records are kept before the daily purge removes them,
    /// as comma-separated what=days pairs: job-logs (log lines of finished
    /// jobs, default 90), jobs (finished jobs; each host's latest of each
    /// kind and plan stays, default 400), audit (audit log, default 400),
    /// alerts (resolved alerts and their webhook deliveries, default 90).
    /// Names not given keep their default; 0 keeps forever. Used or expired
    /// enrollment tokens always go after a day.
    /// Example: --retention-days job-logs=30,audit=0
    #[arg(long, env = "RM_RETENTION_DAYS", value_parser = parse_retention)]
    retention_days: Option<restic_manager::config::Retention>,
}

fn parse_retention(s: &str) -> Result<restic_manager::config::Retention, String> {
    s.parse()
}

fn parse_cidr(s: &str) -> Result<restic_manager::net::Cidr, String> {
    s.parse()
}

fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    restic_manager::restic::schedule::parse_tz(s)
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Manage the agent binaries the server hands out.
    #[command(subcommand, name = "agent-binary")]
    AgentBinary(AgentBinaryCmd),
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user (or reset an existing user's password and role).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from standard input (first line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Add a host; prints its id and a one-time enrollment token.
    Add { name: String },
}

#[derive(Subcommand)]
enum AgentBinaryCmd {
    /// Stage an agent binary for download by agents and install scripts.
    Add {
        path: PathBuf,
        #[arg(long, default_value = std::env::consts::OS)]
        os: String,
        #[arg(long, default_value = std::env::consts::ARCH)]
        arch: String,
        /// Version to record, for a binary that cannot run on this machine
        /// (default: what `PATH --version` prints).
        #[arg(long)]
        version: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("restic-manager {} ({})", version::VERSION, version::COMMIT);
        return std::process::ExitCode::SUCCESS;
    }
    restic_manager::telemetry::init(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Settings {
    let mut s = Settings::with_data_dir(cli.db.data_dir.clone());
    s.database_url = cli
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| default_database_url(&cli.db.data_dir));
    // `restic-manager serve --listen …` and `restic-manager --listen …` alike.
    let a = match &cli.cmd {
        Some(Cmd::Serve(args)) => args.as_ref(),
        _ => &cli.serve,
    };
    s.listen = a.listen;
    s.public_url = a.public_url.clone();
    s.trusted_proxies = a.trusted_proxies.clone();
    s.secure_cookies = a.secure_cookies;
    s.bootstrap_admin_password = a.bootstrap_admin_password.clone();
    s.update_timeout = Duration::from_secs(a.update_timeout);
    s.update_min_healthy = Duration::from_secs(a.update_min_healthy);
    s.offline_alert_after = Duration::from_secs(a.offline_alert_after);
    s.session_idle = Duration::from_secs(a.session_idle_minutes * 60);
    s.session_absolute = Duration::from_secs(a.session_max_hours * 3600);
    if let Some(w) = a.workers {
        s.workers = w.max(1);
    }
    if let Some(p) = &a.secret_key_file {
        s.secret_key_file = p.clone();
    }
    s.timezone = a.timezone;
    s.backup_stale_after = Duration::from_secs(a.backup_stale_after * 3600);
    s.metrics_token = a.metrics_token.clone().filter(|t| !t.is_empty());
    if let Some(r) = a.retention_days {
        s.retention = r;
    }
    s
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = settings(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.cmd {
        None | Some(Cmd::Serve(_)) => {
            drop(rt);
            // An actix System over a multi-threaded tokio runtime, so
            // background workers (the fleet update) get their own arbiter.
            actix_rt::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("starting the async runtime")
            })
            .block_on(restic_manager::serve(settings))
        }
        Some(Cmd::User(UserCmd::Add { name, role, .. })) => {
            let password = read_password_stdin()?;
            rt.block_on(async {
                let db = restic_manager::db::open(&settings).await?;
                let now = chrono::Utc::now().timestamp_millis();
                let user = restic_manager::provisioning::user_save(&db, &name, role, &password, now).await?;
                println!("user {} ({}) saved", user.username, user.role.as_str());
                Ok(())
            })
        }
        Some(Cmd::Host(HostCmd::Add { name })) => rt.block_on(async {
            let db = restic_manager::db::open(&settings).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let created = restic_manager::provisioning::host_add(&db, &name, now).await?;
            println!("host_id: {}", created.host_id);
            println!("enrollment_token: {}", created.enrollment_token);
            println!(
                "expires: {} (one use). On the host run:\n  restic-manager-agent enroll --server <URL> --token {}",
                restic_manager::clock::rfc3339(created.expires_at),
                created.enrollment_token
            );
            Ok(())
        }),
        Some(Cmd::AgentBinary(AgentBinaryCmd::Add {
            path,
            os,
            arch,
            version,
        })) => rt.block_on(async {
            let db = restic_manager::db::open(&settings).await?;
            let b = restic_manager::agent_binaries::stage_with_version(&db, &settings.data_dir, &path, &os, &arch, version)
                .await?;
            println!(
                "staged restic-manager-agent {} for {}/{} (sha256 {}, {} bytes)",
                b.version, b.os, b.arch, b.sha256, b.size
            );
            Ok(())
        }),
    }
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .context("reading the password from standard input")?;
    let pw = buf.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(
        !pw.is_empty(),
        "no password on standard input: pipe it in, e.g. `echo 'pw' | restic-manager user add NAME --role viewer --password-stdin`"
    );
    Ok(pw)
}
