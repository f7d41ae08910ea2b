//! The agent's config file (server URL, host id, per-host secret) and the
//! rules for what a server URL may be. Owns reading and atomically writing
//! the file; it never logs or displays the secret.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{parent_dir, sync_dir};
use url::Url;

/// Where `enroll` writes and `run` reads the config unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/restic-manager-agent/config.toml";

/// Environment twin of `--config`.
pub const CONFIG_ENV: &str = "RM_AGENT_CONFIG";

/// restic's cache directory unless `restic_cache_dir` says otherwise. The
/// agent owns it (restic's own default would be the service user's home).
#[cfg(not(windows))]
pub const DEFAULT_RESTIC_CACHE_DIR: &str = "/var/cache/restic-manager-agent/restic";
#[cfg(windows)]
pub const DEFAULT_RESTIC_CACHE_DIR: &str = r"C:\ProgramData\restic-manager-agent\cache\restic";

/// The restic binary unless `restic_path` says otherwise: found on `PATH`.
pub const DEFAULT_RESTIC_PATH: &str = "restic";

/// What `restic-manager-agent enroll` writes and `run` needs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentConfig {
    /// Base URL of the server, `http(s)://host[:port][/prefix]`.
    pub server_url: String,
    pub host_id: i64,
    /// Per-host secret sent as `Authorization: Bearer …` on `/agent/ws`.
    pub secret: String,
    /// The restic binary to run; absent: `restic` found on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic_path: Option<PathBuf>,
    /// restic's `--cache-dir`; absent: [`DEFAULT_RESTIC_CACHE_DIR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic_cache_dir: Option<PathBuf>,
}

// Hand-written so the secret can never end up in a log line or a panic
// message by way of `{:?}`.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server_url", &self.server_url)
            .field("host_id", &self.host_id)
            .field("secret", &"[redacted]")
            .field("restic_path", &self.restic_path)
            .field("restic_cache_dir", &self.restic_cache_dir)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only where and what: the parser's own message quotes the line, which
    /// may be the secret's, and this goes to the journal on every restart.
    #[error("agent config {} is not valid TOML (line {line}, column {column}): {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("agent config {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write agent config {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode agent config for {}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
}

/// Why a server URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUrlError {
    #[error("server URL {url:?} is not a valid URL: {reason}")]
    Parse { url: String, reason: String },
    #[error("server URL {url:?} must start with http:// or https://")]
    Scheme { url: String },
    #[error("server URL {url:?} must not carry a query, fragment or credentials")]
    Extras { url: String },
}

/// Checks a server base URL and returns it parsed. Only `http` and `https`
/// are accepted: the agent derives `ws`/`wss` itself, and anything else is a
/// typo that would otherwise surface as a confusing connection error later.
pub fn parse_server_url(raw: &str) -> Result<Url, ServerUrlError> {
    let trimmed = raw.trim();
    let url = Url::parse(trimmed).map_err(|e| ServerUrlError::Parse {
        url: trimmed.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ServerUrlError::Scheme {
            url: trimmed.to_string(),
        });
    }
    // A query or fragment would be silently dropped when endpoints are
    // appended, and credentials have no business in a config file's URL.
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(ServerUrlError::Extras {
            url: trimmed.to_string(),
        });
    }
    Ok(url)
}

/// Joins an endpoint path onto the server base URL, keeping any path prefix
/// (`https://x/rm/` + `agent/ws` → `https://x/rm/agent/ws`) and never
/// producing a doubled or missing slash.
pub fn endpoint_url(server_url: &str, endpoint: &str) -> Result<Url, ServerUrlError> {
    let mut url = parse_server_url(server_url)?;
    let path = format!(
        "{}/{}",
        url.path().trim_end_matches('/'),
        endpoint.trim_start_matches('/')
    );
    url.set_path(&path);
    Ok(url)
}

/// The form of a server URL worth storing: trimmed, without trailing slash.
pub fn normalize_server_url(raw: &str) -> Result<String, ServerUrlError> {
    parse_server_url(raw)?;
    Ok(raw.trim().trim_end_matches('/').to_string())
}

impl AgentConfig {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..text.floor_char_boundary(at)];
            ConfigError::Parse {
                path: path.to_path_buf(),
                line: before.matches('\n').count() + 1,
                column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
                // serde's messages may quote a value too ("invalid type:
                // string \"…\""): keep its first words only.
                message: e
                    .message()
                    .split(['"', '`', '\''])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            }
        })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        warn_if_readable_by_others(path);
        Ok(config)
    }

    /// Writes the config atomically: a temp file in the same directory,
    /// fsynced, then renamed over `path`, so a crash never leaves a torn file
    /// and the secret is never readable by others, not even briefly (the temp
    /// file is created 0600 and a missing parent directory 0700).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_err = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        self.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        let text = toml::to_string(self).map_err(|source| ConfigError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = parent_dir(path);
        create_private_dir(dir).map_err(write_err)?;
        let tmp = temp_path(path).map_err(write_err)?;
        let result = write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| sync_dir(dir));
        if result.is_err() {
            // Best effort: a stray temp file would hold the secret.
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// The restic binary this agent runs.
    pub fn restic_path(&self) -> PathBuf {
        self.restic_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESTIC_PATH))
    }

    /// The cache directory restic is given.
    pub fn restic_cache_dir(&self) -> PathBuf {
        self.restic_cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESTIC_CACHE_DIR))
    }

    /// The checks that make a config usable; `Err` carries a readable reason.
    pub fn validate(&self) -> Result<(), String> {
        parse_server_url(&self.server_url).map_err(|e| e.to_string())?;
        if self.host_id <= 0 {
            return Err(format!("host_id must be positive, got {}", self.host_id));
        }
        if self.secret.is_empty() {
            return Err("secret is empty".into());
        }
        // The secret travels in an HTTP header, so it must be printable ASCII.
        if !self.secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("secret contains characters that cannot travel in a header".into());
        }
        Ok(())
    }
}

/// Checks, before a one-time enrollment token is spent, that the config
/// can be written to `path` afterwards (directory creatable, file writable).
pub fn check_writable(path: &Path) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    create_private_dir(parent_dir(path)).map_err(write_err)?;
    let tmp = temp_path(path).map_err(write_err)?;
    write_private(&tmp, b"").map_err(write_err)?;
    std::fs::remove_file(&tmp).map_err(write_err)
}

/// A sibling of `path` with a random suffix, so concurrent writers and
/// leftovers from a crash never collide.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    Ok(parent_dir(path).join(format!(".{name}.{}.tmp", hex::encode(suffix))))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "agent config holds a secret but is accessible to other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            server_url: "https://rm.example.com".into(),
            host_id: 7,
            secret: "s3cr3t-value".into(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn restic_settings_are_optional_and_round_trip() {
        let dir = temp_dir();
        // A config written before the restic core still loads, with defaults.
        let old = dir.join("old.toml");
        std::fs::write(
            &old,
            "server_url = \"http://a\"\nhost_id = 1\nsecret = \"s\"\n",
        )
        .unwrap();
        let loaded = AgentConfig::load(&old).unwrap();
        assert_eq!(loaded.restic_path, None);
        assert_eq!(loaded.restic_path(), PathBuf::from(DEFAULT_RESTIC_PATH));
        assert_eq!(
            loaded.restic_cache_dir(),
            PathBuf::from(DEFAULT_RESTIC_CACHE_DIR)
        );
        let mut set = sample();
        set.restic_path = Some("/opt/restic/bin/restic".into());
        set.restic_cache_dir = Some("/srv/cache".into());
        let path = dir.join("set.toml");
        set.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("restic_path = \"/opt/restic/bin/restic\""),
            "{text}"
        );
        assert_eq!(AgentConfig::load(&path).unwrap(), set);
        assert_eq!(set.restic_cache_dir(), PathBuf::from("/srv/cache"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn temp_dir() -> PathBuf {
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).unwrap();
        let dir = std::env::temp_dir().join(format!("rm-agent-test-{}", hex::encode(name)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = temp_dir();
        let path = dir.join("nested/dir/config.toml");
        sample().save(&path).unwrap();
        assert_eq!(AgentConfig::load(&path).unwrap(), sample());
        // Saving again replaces the file rather than failing on it.
        let mut changed = sample();
        changed.host_id = 8;
        changed.save(&path).unwrap();
        assert_eq!(AgentConfig::load(&path).unwrap(), changed);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.toml")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn file_is_0600_and_new_parent_dir_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let path = dir.join("private/config.toml");
        sample().save(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_redacts_the_secret() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[redacted]"));
        assert!(shown.contains("rm.example.com"));
    }

    #[test]
    fn errors_name_the_path() {
        let dir = temp_dir();
        let missing = dir.join("missing.toml");
        let err = AgentConfig::load(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let garbage = dir.join("garbage.toml");
        std::fs::write(&garbage, "server_url = ").unwrap();
        let err = AgentConfig::load(&garbage).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("garbage.toml"), "{err}");

        // A broken secret line: where it is, never what it says.
        let leaky = dir.join("leaky.toml");
        std::fs::write(
            &leaky,
            "server_url = \"http://a\"\nhost_id = 1\nsecret = \"hunter2-very-secret\n",
        )
        .unwrap();
        let err = AgentConfig::load(&leaky).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert!(shown.contains("line 3"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let typed = dir.join("typed.toml");
        std::fs::write(
            &typed,
            "server_url = \"http://a\"\nhost_id = \"hunter2-as-id\"\nsecret = \"s\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&typed).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert!(
            shown.contains("line 2") && !shown.contains("hunter2"),
            "{shown}"
        );

        let invalid = dir.join("invalid.toml");
        std::fs::write(
            &invalid,
            "server_url = \"ftp://x\"\nhost_id = 1\nsecret = \"a\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&invalid).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn server_urls_are_checked_and_joined() {
        assert!(parse_server_url("ftp://x").is_err());
        assert!(parse_server_url("not a url").is_err());
        assert!(parse_server_url("https://x/?a=1").is_err());
        assert!(parse_server_url("https://user:pw@x/").is_err());
        for base in ["http://x:8080", "http://x:8080/", " http://x:8080// "] {
            assert_eq!(
                endpoint_url(base, "agent/enroll").unwrap().as_str(),
                "http://x:8080/agent/enroll"
            );
        }
        assert_eq!(
            endpoint_url("https://x/rm/", "/agent/enroll")
                .unwrap()
                .as_str(),
            "https://x/rm/agent/enroll"
        );
        assert_eq!(
            normalize_server_url(" https://x/rm/ ").unwrap(),
            "https://x/rm"
        );
    }

    #[test]
    fn check_writable_leaves_nothing_behind() {
        let dir = temp_dir();
        let path = dir.join("sub/config.toml");
        check_writable(&path).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
