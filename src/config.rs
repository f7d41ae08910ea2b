//! Server settings, built once from the command line (each flag has an `RM_`
//! environment twin). Secrets are redacted in `Debug`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Full database URL; `sqlite://<data-dir>/restic-manager.db?mode=rwc` when unset.
    pub database_url: String,
    /// Base URL agents and install scripts use to reach this server
    /// (e.g. `https://backup.example.com`). When unset, taken from the request.
    pub public_url: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (the rightmost
    /// address not in these blocks is the client), for throttling and audit.
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// Mark the session cookie `Secure` (and send HSTS) even when
    /// `public_url` is not https (TLS ends at a proxy with another name).
    pub secure_cookies: bool,
    pub bootstrap_admin_password: Option<String>,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    pub update_timeout: Duration,
    pub update_min_healthy: Duration,
    pub offline_alert_after: Duration,
    /// How often the `host_offline` sweep runs.
    pub alert_sweep_interval: Duration,
    /// First webhook retry delay; doubles per failed attempt.
    pub notify_retry_base: Duration,
    /// Close an agent connection that answered nothing for this long.
    pub agent_ping_interval: Duration,
    pub agent_ping_timeout: Duration,
    /// Messages one agent connection may send per second, and in a burst;
    /// beyond that the server reads its socket more slowly.
    pub agent_messages_per_sec: u32,
    pub agent_messages_burst: u32,
    /// Requests per minute one client address may make to the agent
    /// endpoints (`/agent/*`), which answer before anyone is authenticated.
    pub agent_requests_per_min: u32,
    /// How often the hub writes `last_seen_at` for connected agents.
    pub presence_flush_interval: Duration,
    /// Per-job log limit; later lines are dropped after one notice.
    pub job_log_cap_bytes: i64,
    /// A live log stream sends a keepalive this often, and re-checks its
    /// viewer's session each time.
    pub sse_keepalive: Duration,
    pub workers: usize,
    /// Stage the agent binary that sits beside this executable at start.
    pub stage_sibling_agent: bool,
    /// The agent binary to stage at start; `restic-manager-agent` beside
    /// this executable when unset (tests point it elsewhere).
    pub sibling_agent: Option<PathBuf>,
    /// Key for repository secrets at rest (`secrets.rs`).
    pub secret_key_file: PathBuf,
    /// How long browsing a snapshot waits for the agent's `ls` before
    /// answering 504 `agent_timeout`.
    pub browse_timeout: Duration,
    /// Plans without a time zone and maintenance schedules run in this one.
    pub timezone: chrono_tz::Tz,
    /// A covering plan with no success for this long makes its host `stale`
    /// (and raises `backup_stale`).
    pub backup_stale_after: Duration,
    /// Bearer token that may read `/metrics` without a session.
    pub metrics_token: Option<String>,
    /// How long finished jobs, their logs, audit rows and resolved alerts
    /// are kept (`--retention-days`; the daily purge in `retention.rs`).
    pub retention: Retention,
    /// How often the retention purge runs, and how long after start the
    /// first one does.
    pub retention_interval: Duration,
    pub retention_first_delay: Duration,
}

/// Days each kind of record is kept before the daily purge removes it;
/// 0 keeps it forever. Parsed from `--retention-days`
/// (`job-logs=90,jobs=400,audit=400,alerts=90`; names not given keep their
/// default). Used or expired enrollment tokens always go after a day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Log lines of jobs that finished longer ago.
    pub job_logs: u32,
    /// Finished jobs (each host's latest of each kind, plan and outcome is
    /// kept whatever its age).
    pub jobs: u32,
    /// Audit log rows.
    pub audit: u32,
    /// Resolved alerts and their webhook deliveries.
    pub alerts: u32,
}

impl Retention {
    /// The names `--retention-days` takes, in the order pages list them.
    pub const NAMES: [&'static str; 4] = ["job-logs", "jobs", "audit", "alerts"];
    /// Longest period accepted (about 100 years).
    pub const MAX_DAYS: u32 = 36_500;

    /// Days kept for one of [`Self::NAMES`].
    pub fn days(&self, name: &str) -> Option<u32> {
        match name {
            "job-logs" => Some(self.job_logs),
            "jobs" => Some(self.jobs),
            "audit" => Some(self.audit),
            "alerts" => Some(self.alerts),
            _ => None,
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut u32> {
        match name {
            "job-logs" => Some(&mut self.job_logs),
            "jobs" => Some(&mut self.jobs),
            "audit" => Some(&mut self.audit),
            "alerts" => Some(&mut self.alerts),
            _ => None,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            job_logs: 90,
            jobs: 400,
            audit: 400,
            alerts: 90,
        }
    }
}

impl std::str::FromStr for Retention {
    type Err = String;

    /// `what=days` pairs separated by commas; an empty string is every default.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Retention::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, days)) = part.split_once('=') else {
                return Err(format!(
                    "`{part}` is not `what=days` (e.g. jobs=400; what is one of {})",
                    Self::NAMES.join(", ")
                ));
            };
            let name = name.trim();
            let Some(slot) = r.slot(name) else {
                return Err(format!(
                    "`{part}`: unknown kind `{name}` (known: {})",
                    Self::NAMES.join(", ")
                ));
            };
            *slot = days
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| *d <= Self::MAX_DAYS)
                .ok_or_else(|| {
                    format!(
                        "`{part}`: days must be a whole number from 0 to {} (0 keeps forever)",
                        Self::MAX_DAYS
                    )
                })?;
        }
        Ok(r)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job-logs={},jobs={},audit={},alerts={}",
            self.job_logs, self.jobs, self.audit, self.alerts
        )
    }
}

impl Settings {
    /// Settings for a server rooted at `data_dir` with every default.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let database_url = default_database_url(&data_dir);
        let secret_key_file = data_dir.join("secret.key");
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            database_url,
            public_url: None,
            trusted_proxies: Vec::new(),
            secure_cookies: false,
            bootstrap_admin_password: None,
            session_idle: Duration::from_secs(12 * 3600),
            session_absolute: Duration::from_secs(7 * 24 * 3600),
            update_timeout: Duration::from_secs(90),
            update_min_healthy: Duration::from_secs(5),
            offline_alert_after: Duration::from_secs(300),
            alert_sweep_interval: Duration::from_secs(15),
            notify_retry_base: Duration::from_secs(2),
            agent_ping_interval: Duration::from_secs(20),
            agent_ping_timeout: Duration::from_secs(60),
            agent_messages_per_sec: 1_000,
            agent_messages_burst: 5_000,
            agent_requests_per_min: 120,
            presence_flush_interval: Duration::from_secs(30),
            job_log_cap_bytes: crate::store::jobs::LOG_CAP_BYTES,
            sse_keepalive: Duration::from_secs(15),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            stage_sibling_agent: true,
            sibling_agent: None,
            secret_key_file,
            browse_timeout: Duration::from_secs(30),
            timezone: chrono_tz::Tz::UTC,
            backup_stale_after: Duration::from_secs(26 * 3600),
            metrics_token: None,
            retention: Retention::default(),
            retention_interval: Duration::from_secs(24 * 3600),
            retention_first_delay: Duration::from_secs(5 * 60),
        }
    }

    /// The backup-health cutoff at `now` (`--backup-stale-after` earlier).
    pub fn staleness(&self, now: i64) -> crate::store::health::Staleness {
        let after = i64::try_from(self.backup_stale_after.as_millis()).unwrap_or(i64::MAX);
        crate::store::health::Staleness::new(now, after)
    }

    /// Browsers reach this server over https: an `https` public URL or
    /// `--secure-cookies`. Then the session cookie is `Secure` and HSTS is sent.
    pub fn https(&self) -> bool {
        self.secure_cookies
            || self.public_url.as_deref().is_some_and(|u| {
                u.get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
            })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

/// Creates `path` and any missing parents with mode 0700: the data
/// directory holds the database, the secret key and staged binaries, none of
/// which other local users should list or read. An existing directory keeps
/// the mode its owner gave it.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

pub fn default_database_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}/restic-manager.db?mode=rwc", data_dir.display())
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("public_url", &self.public_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .field(
                "bootstrap_admin_password",
                &self.bootstrap_admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("update_timeout", &self.update_timeout)
            .field("update_min_healthy", &self.update_min_healthy)
            .field("offline_alert_after", &self.offline_alert_after)
            .field("timezone", &self.timezone)
            .field("backup_stale_after", &self.backup_stale_after)
            .field("retention", &self.retention.to_string())
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Hides a password in `scheme://user:password@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:<redacted>{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_days_parse_pairs_and_keep_defaults() {
        let r: Retention = "jobs=30, audit=0".parse().unwrap();
        assert_eq!(
            r,
            Retention {
                job_logs: 90,
                jobs: 30,
                audit: 0,
                alerts: 90
            }
        );
        assert_eq!("".parse::<Retention>().unwrap(), Retention::default());
        assert_eq!(
            r.to_string().parse::<Retention>().unwrap(),
            r,
            "Display round-trips"
        );
        for (bad, says) in [
            ("logs=3", "unknown kind `logs`"),
            ("jobs=-1", "`jobs=-1`: days must be a whole number"),
            ("jobs=abc", "`jobs=abc`"),
            ("jobs", "not `what=days`"),
            ("audit=99999999", "from 0 to 36500"),
        ] {
            let e = bad.parse::<Retention>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn database_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://rm:hunter2@db:5432/rm"),
            "postgres://rm:<redacted>@db:5432/rm"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        let mut s = Settings::with_data_dir("./d".into());
        s.bootstrap_admin_password = Some("secret-pw".into());
        s.metrics_token = Some("metrics-tok-9".into());
        s.database_url = "postgres://a:b@c/d".into();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("secret-pw") && !dbg.contains(":b@") && !dbg.contains("metrics-tok-9"),
            "{dbg}"
        );
    }
}
