//! Repository rules: validation of what an admin submits, sealing secrets
//! on the way in and opening them only to build an agent command. Never
//! returns or logs a password, an `env` value or an unmasked URL.
use std::collections::BTreeMap;

use agent::wire::ResticRepository;
use sea_orm::ConnectionTrait;
use serde::Deserialize;

use super::{repo_url, schedule};
use crate::{
    secrets::SecretKey,
    store::{
        self, StoreError,
        repositories::{Repository, RepositoryRow},
    },
};

pub const DEFAULT_MAINTENANCE_SCHEDULE: &str = "0 3 * * *";
pub const DEFAULT_CHECK_EVERY_DAYS: i32 = 7;

// Fields bound into each sealed value (associated data).
const F_URL: &str = "repository.url";
const F_PASSWORD: &str = "repository.password";
const F_ENV: &str = "repository.env";

/// Variables the agent sets itself, or that would let a repository run
/// commands or load code on the host.
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_CACHE_DIR",
    "RESTIC_FROM_PASSWORD_COMMAND",
];

/// `POST /api/repositories` (every field) and `PATCH` (any subset).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub password: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub maintenance_host_id: Option<Option<i64>>,
    pub maintenance_schedule: Option<String>,
    pub prune: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    pub max_unused: Option<Option<String>>,
    pub check_every_days: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    pub check_read_data_subset: Option<Option<String>>,
    pub max_concurrent_backups: Option<i32>,
}

/// `null` → `Some(None)` (clear), absent → `None` (leave as is).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A rejected input: the field and why.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("repository secrets cannot be opened: {0}")]
    Secret(#[from] crate::secrets::SecretError),
}

fn invalid(field: &str, why: impl std::fmt::Display) -> RepoError {
    RepoError::Invalid(format!("{field}: {why}"))
}

fn check_name(name: &str) -> Result<String, RepoError> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(invalid(
            "name",
            "1–64 characters of letters, digits, spaces, '.', '-' or '_'",
        ))
    }
}

fn check_password(p: &str) -> Result<(), RepoError> {
    if p.is_empty() {
        return Err(invalid("password", "must not be empty"));
    }
    if p.len() > 4096 {
        return Err(invalid("password", "must be at most 4096 bytes"));
    }
    // restic reads the password file's first line, trimmed.
    if p.trim() != p {
        return Err(invalid(
            "password",
            "must not start or end with spaces (restic trims them, so it could never open the repository)",
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(invalid(
            "password",
            "must not contain line breaks or control characters",
        ));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), RepoError> {
    if env.len() > 64 {
        return Err(invalid("env", "at most 64 variables"));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 128
            && k.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(invalid(
                "env",
                format!(
                    "{:?} is not a variable name (letters, digits and '_', not starting with a digit)",
                    crate::text::one_line(k, 64)
                ),
            ));
        }
        let upper = k.to_ascii_uppercase();
        if RESERVED_ENV.contains(&upper.as_str())
            || upper.starts_with("LD_")
            || upper.starts_with("DYLD_")
        {
            return Err(invalid(
                "env",
                format!("{k} is set by restic-manager itself and cannot be given"),
            ));
        }
        if v.len() > 8192 || v.contains('\0') {
            return Err(invalid(
                "env",
                format!("the value of {k} must be at most 8192 bytes without NUL"),
            ));
        }
    }
    Ok(())
}

/// restic's `--max-unused`: `unlimited`, a percentage or a size.
fn check_max_unused(v: &str) -> Result<(), RepoError> {
    let ok = v == "unlimited" || is_percent(v) || is_size(v);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "max_unused",
            "a percentage such as 10%, a size such as 5G, or unlimited",
        ))
    }
}

/// restic's `--read-data-subset`: `n/t`, a percentage or a size.
fn check_subset(v: &str) -> Result<(), RepoError> {
    let fraction = v.split_once('/').is_some_and(
        |(n, t)| matches!((n.parse::<u32>(), t.parse::<u32>()), (Ok(n), Ok(t)) if n >= 1 && n <= t),
    );
    if fraction || is_percent(v) || is_size(v) {
        Ok(())
    } else {
        Err(invalid(
            "check_read_data_subset",
            "n/t (such as 1/5), a percentage such as 5%, or a size such as 500M",
        ))
    }
}

fn is_percent(v: &str) -> bool {
    v.strip_suffix('%')
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(|n| (0.0..=100.0).contains(&n) && n > 0.0)
}

fn is_size(v: &str) -> bool {
    let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    v.len() - digits.len() <= 1 && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

async fn check_host<C: ConnectionTrait>(db: &C, id: i64) -> Result<(), RepoError> {
    match store::hosts::get(db, id).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => Err(invalid(
            "maintenance_host_id",
            format!("there is no host {id}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Builds a new repository's row from a complete input.
pub async fn create<C: ConnectionTrait>(
    db: &C,
    key: &SecretKey,
    input: RepositoryInput,
    now: i64,
) -> Result<Repository, RepoError> {
    let name = check_name(
        input
            .name
            .as_deref()
            .ok_or_else(|| invalid("name", "is required"))?,
    )?;
    let url = input
        .url
        .as_deref()
        .ok_or_else(|| invalid("url", "is required"))?;
    repo_url::validate(url).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let password = input
        .password
        .as_deref()
        .ok_or_else(|| invalid("password", "is required"))?;
    check_password(password)?;
    let env = input.env.clone().unwrap_or_default();
    check_env(&env)?;
    let mut row = RepositoryRow {
        name,
        url_enc: key.seal(F_URL, url)?,
        url_masked: repo_url::masked(url),
        local: repo_url::is_local(url),
        password_enc: key.seal(F_PASSWORD, password)?,
        env_enc: None,
        env_keys: vec![],
        maintenance_host_id: None,
        maintenance_schedule: DEFAULT_MAINTENANCE_SCHEDULE.into(),
        prune: true,
        max_unused: None,
        check_every_days: DEFAULT_CHECK_EVERY_DAYS,
        check_read_data_subset: None,
        max_concurrent_backups: 0,
    };
    seal_env(key, &mut row, &env)?;
    apply_settings(db, &mut row, &input).await?;
    Ok(store::repositories::create(db, &row, now).await?)
}

/// Applies a partial input to an existing repository.
pub async fn update<C: ConnectionTrait>(
    db: &C,
    key: &SecretKey,
    id: i64,
    input: RepositoryInput,
    now: i64,
) -> Result<Repository, RepoError> {
    let (_, mut row) = store::repositories::get_row(db, id).await?;
    if let Some(name) = &input.name {
        row.name = check_name(name)?;
    }
    if let Some(url) = &input.url {
        repo_url::validate(url).map_err(|e| RepoError::Invalid(e.to_string()))?;
        row.url_enc = key.seal(F_URL, url)?;
        row.url_masked = repo_url::masked(url);
        row.local = repo_url::is_local(url);
    }
    if let Some(p) = &input.password {
        check_password(p)?;
        row.password_enc = key.seal(F_PASSWORD, p)?;
    }
    if let Some(env) = &input.env {
        check_env(env)?;
        seal_env(key, &mut row, env)?;
    }
    apply_settings(db, &mut row, &input).await?;
    Ok(store::repositories::update(db, id, &row, now).await?)
}

fn seal_env(
    key: &SecretKey,
    row: &mut RepositoryRow,
    env: &BTreeMap<String, String>,
) -> Result<(), RepoError> {
    row.env_keys = env.keys().cloned().collect();
    row.env_enc = if env.is_empty() {
        None
    } else {
        let json = serde_json::to_string(env).map_err(|e| RepoError::Invalid(e.to_string()))?;
        Some(key.seal(F_ENV, &json)?)
    };
    Ok(())
}

async fn apply_settings<C: ConnectionTrait>(
    db: &C,
    row: &mut RepositoryRow,
    input: &RepositoryInput,
) -> Result<(), RepoError> {
    if let Some(h) = input.maintenance_host_id {
        if let Some(id) = h {
            check_host(db, id).await?;
        }
        row.maintenance_host_id = h;
    }
    if let Some(s) = &input.maintenance_schedule {
        schedule::parse(s).map_err(|e| invalid("maintenance_schedule", e))?;
        row.maintenance_schedule = s.trim().to_string();
    }
    if let Some(p) = input.prune {
        row.prune = p;
    }
    if let Some(m) = &input.max_unused {
        if let Some(v) = m {
            check_max_unused(v)?;
        }
        row.max_unused = m.clone();
    }
    if let Some(d) = input.check_every_days {
        if !(0..=3650).contains(&d) {
            return Err(invalid("check_every_days", "0 (never) to 3650"));
        }
        row.check_every_days = d;
    }
    if let Some(s) = &input.check_read_data_subset {
        if let Some(v) = s {
            check_subset(v)?;
        }
        row.check_read_data_subset = s.clone();
    }
    if let Some(n) = input.max_concurrent_backups {
        if !(0..=100_000).contains(&n) {
            return Err(invalid("max_concurrent_backups", "0 (no limit) to 100000"));
        }
        row.max_concurrent_backups = n;
    }
    Ok(())
}

/// The repository as the agent needs it, secrets opened. Only for building
/// a `command.restic`; never log or store the result.
pub async fn open_for_agent<C: ConnectionTrait>(
    db: &C,
    key: &SecretKey,
    id: i64,
) -> Result<ResticRepository, RepoError> {
    let sealed = store::repositories::sealed(db, id).await?;
    let env = match &sealed.env {
        Some(e) => serde_json::from_str(&key.open(F_ENV, e)?)
            .map_err(|_| crate::secrets::SecretError::Tampered)?,
        None => BTreeMap::new(),
    };
    Ok(ResticRepository {
        url: key.open(F_URL, &sealed.url)?,
        password: key.open(F_PASSWORD, &sealed.password)?,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_that_would_take_over_the_run_are_refused() {
        for bad in [
            "RESTIC_PASSWORD_COMMAND",
            "restic_password",
            "LD_PRELOAD",
            "PATH",
            "1ABC",
            "A-B",
            "",
        ] {
            let env = BTreeMap::from([(bad.to_string(), "x".to_string())]);
            assert!(check_env(&env).is_err(), "{bad}");
        }
        let ok = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
            ("B2_ACCOUNT_KEY".to_string(), "k".to_string()),
        ]);
        assert!(check_env(&ok).is_ok());
        let nul = BTreeMap::from([("X".to_string(), "a\0b".to_string())]);
        assert!(check_env(&nul).is_err());
    }

    #[test]
    fn restic_sizes_and_subsets_are_checked() {
        for ok in ["10%", "5G", "unlimited", "0.5%", "100"] {
            assert!(check_max_unused(ok).is_ok(), "{ok}");
        }
        for bad in ["ten", "10%%", "-5G", "5GB", "", "200%"] {
            assert!(check_max_unused(bad).is_err(), "{bad}");
        }
        for ok in ["1/5", "5%", "500M"] {
            assert!(check_subset(ok).is_ok(), "{ok}");
        }
        for bad in ["0/5", "6/5", "x", "5%/"] {
            assert!(check_subset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_with_line_breaks_are_refused() {
        assert!(check_password("a\nb").is_err());
        assert!(check_password("").is_err());
        assert!(check_password("correct horse").is_ok());
    }
}
