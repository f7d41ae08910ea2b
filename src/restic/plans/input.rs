//! What an admin submits for a plan, checked field by field (each message
//! names the field) and applied to the stored row.
use agent::wire::Retention;
use chrono_tz::Tz;
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value};

use super::{MAX_SPLAY_SECS, PlanError, invalid};
use crate::restic::schedule;
use crate::store::{self, StoreError, plans::PlanRow};

/// `POST /api/plans` (every required field) and `PATCH` (any subset).
/// Absent: unchanged. For list fields and `retention`, `null` clears;
/// for `timezone`, `null` or `""` means the server's.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    pub name: Option<String>,
    pub repository_id: Option<i64>,
    pub paths: Option<Vec<String>>,
    pub excludes: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub splay_secs: Option<i64>,
    pub hosts: Option<Vec<i64>>,
    pub labels: Option<Vec<String>>,
    pub retention: Option<Retention>,
    pub forget_after_backup: Option<bool>,
    pub enabled: Option<bool>,
}

const FIELDS: &[&str] = &[
    "name",
    "repository_id",
    "paths",
    "excludes",
    "tags",
    "schedule",
    "timezone",
    "splay_secs",
    "hosts",
    "labels",
    "retention",
    "forget_after_backup",
    "enabled",
];
const RETENTION_FIELDS: &[&str] = &[
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
];

fn take<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
    nullable: bool,
) -> Result<Option<T>, PlanError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(None),
        Some(Value::Null) => Err(invalid(key, "must not be null")),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| invalid(key, crate::text::one_line(&e.to_string(), 200))),
    }
}

impl PlanInput {
    /// A JSON body; errors name the field.
    pub fn from_json(body: &[u8]) -> Result<PlanInput, PlanError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            PlanError::Invalid(format!(
                "the request body is not JSON: {}",
                crate::text::one_line(&e.to_string(), 200)
            ))
        })?;
        let Value::Object(map) = v else {
            return Err(PlanError::Invalid(
                "the request body must be a JSON object".into(),
            ));
        };
        if let Some(k) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(&crate::text::one_line(k, 64), "unknown field"));
        }
        let list = |key: &str| -> Result<Option<Vec<String>>, PlanError> {
            if map.get(key).is_some_and(Value::is_null) {
                return Ok(Some(vec![]));
            }
            take(&map, key, false)
        };
        let retention = match map.get("retention") {
            None => None,
            Some(Value::Null) => Some(Retention::default()),
            Some(Value::Object(r)) => {
                if let Some(k) = r.keys().find(|k| !RETENTION_FIELDS.contains(&k.as_str())) {
                    return Err(invalid(
                        &format!("retention.{}", crate::text::one_line(k, 64)),
                        "unknown field (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)",
                    ));
                }
                let mut out = Retention::default();
                for k in &RETENTION_FIELDS[..6] {
                    let n: Option<u32> = take(r, k, true)
                        .map_err(|_| invalid(&format!("retention.{k}"), "a whole number from 0"))?;
                    let slot = match *k {
                        "keep_last" => &mut out.keep_last,
                        "keep_hourly" => &mut out.keep_hourly,
                        "keep_daily" => &mut out.keep_daily,
                        "keep_weekly" => &mut out.keep_weekly,
                        "keep_monthly" => &mut out.keep_monthly,
                        _ => &mut out.keep_yearly,
                    };
                    *slot = n.filter(|n| *n > 0);
                }
                out.keep_within = take::<String>(r, "keep_within", true)
                    .map_err(|_| invalid("retention.keep_within", "a duration such as 30d"))?
                    .filter(|s| !s.trim().is_empty());
                Some(out)
            }
            Some(_) => {
                return Err(invalid(
                    "retention",
                    "must be an object such as {\"keep_last\": 7}",
                ));
            }
        };
        let timezone = match map.get("timezone") {
            Some(Value::Null) => Some(String::new()),
            _ => take(&map, "timezone", false)?,
        };
        let hosts = if map.get("hosts").is_some_and(Value::is_null) {
            Some(vec![])
        } else {
            take(&map, "hosts", false)?
        };
        Ok(PlanInput {
            name: take(&map, "name", false)?,
            repository_id: take(&map, "repository_id", false)?,
            paths: take(&map, "paths", false)?,
            excludes: list("excludes")?,
            tags: list("tags")?,
            schedule: take(&map, "schedule", false)?,
            timezone,
            splay_secs: take(&map, "splay_secs", false)?,
            hosts,
            labels: list("labels")?,
            retention,
            forget_after_backup: take(&map, "forget_after_backup", false)?,
            enabled: take(&map, "enabled", false)?,
        })
    }
}

fn check_name(name: &str) -> Result<String, PlanError> {
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

/// Absolute on the host: `/…`, or a Windows drive path `C:\…` / `C:/…`.
pub fn is_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

fn check_paths(paths: &[String]) -> Result<Vec<String>, PlanError> {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if paths.is_empty() {
        return Err(invalid(
            "paths",
            "give at least one absolute path to back up",
        ));
    }
    if paths.len() > 1000 {
        return Err(invalid("paths", "at most 1000 paths"));
    }
    for p in &paths {
        if p.len() > 4096 || p.chars().any(char::is_control) {
            return Err(invalid(
                "paths",
                "a path is too long or holds control characters",
            ));
        }
        if !is_absolute(p) {
            return Err(invalid(
                "paths",
                format!(
                    "{:?} is not absolute (start it with /)",
                    crate::text::one_line(p, 200)
                ),
            ));
        }
    }
    Ok(paths)
}

fn check_excludes(ex: &[String]) -> Result<Vec<String>, PlanError> {
    let ex: Vec<String> = ex
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if ex.len() > 1000
        || ex
            .iter()
            .any(|e| e.len() > 4096 || e.chars().any(char::is_control))
    {
        return Err(invalid(
            "excludes",
            "at most 1000 patterns, each one line of at most 4096 bytes",
        ));
    }
    Ok(ex)
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, PlanError> {
    let tags: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    for t in &tags {
        let ok = t.len() <= 128
            && !t.contains(',')
            && !t.chars().any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(invalid(
                "tags",
                format!(
                    "{:?}: a tag is up to 128 characters without spaces or commas",
                    crate::text::one_line(t, 64)
                ),
            ));
        }
        if t.starts_with("rm-plan:") {
            return Err(invalid("tags", "rm-plan: tags are restic-manager's own"));
        }
    }
    if tags.len() > 100 {
        return Err(invalid("tags", "at most 100 tags"));
    }
    Ok(tags)
}

/// Host labels (and a plan's): 1–64 characters of letters, digits, '.',
/// '-', '_' or ':'; duplicates dropped, order kept.
pub fn check_labels(field: &str, labels: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for l in labels {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let ok = l.len() <= 64
            && l.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !ok {
            return Err(format!(
                "{field}: {:?} is not a label (1–64 letters, digits, '.', '-', '_' or ':')",
                crate::text::one_line(l, 64)
            ));
        }
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    if out.len() > 100 {
        return Err(format!("{field}: at most 100 labels"));
    }
    Ok(out)
}

/// restic's `--keep-within` duration: `1y2m3d4h`-style.
fn check_within(v: &str) -> bool {
    let mut digits = false;
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if matches!(c, 'y' | 'm' | 'd' | 'h') && digits {
            digits = false;
        } else {
            return false;
        }
    }
    !v.is_empty() && !digits
}

async fn check_repository<C: ConnectionTrait>(db: &C, id: i64) -> Result<(), PlanError> {
    match store::repositories::get(db, id).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => Err(invalid(
            "repository_id",
            format!("there is no repository {id}"),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn check_hosts<C: ConnectionTrait>(db: &C, ids: &[i64]) -> Result<Vec<i64>, PlanError> {
    let mut out: Vec<i64> = Vec::new();
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    let names = store::hosts::names(db, &out).await?;
    if let Some(missing) = out.iter().find(|id| !names.contains_key(id)) {
        return Err(invalid("hosts", format!("there is no host {missing}")));
    }
    Ok(out)
}

/// Applies `input` to `row`, checking every given field.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    row: &mut PlanRow,
    input: PlanInput,
    server_tz: Tz,
) -> Result<(), PlanError> {
    if let Some(n) = &input.name {
        row.name = check_name(n)?;
    }
    if let Some(r) = input.repository_id {
        check_repository(db, r).await?;
        row.repository_id = r;
    }
    if let Some(p) = &input.paths {
        row.paths = check_paths(p)?;
    }
    if let Some(e) = &input.excludes {
        row.excludes = check_excludes(e)?;
    }
    if let Some(t) = &input.tags {
        row.tags = check_tags(t)?;
    }
    if let Some(s) = &input.schedule {
        schedule::parse(s).map_err(|e| invalid("schedule", e))?;
        row.schedule = s.trim().to_string();
    }
    if let Some(tz) = &input.timezone {
        row.timezone = if tz.trim().is_empty() {
            server_tz.name().to_string()
        } else {
            schedule::parse_tz(tz)
                .map_err(|e| invalid("timezone", e))?
                .name()
                .to_string()
        };
    }
    if let Some(s) = input.splay_secs {
        if !(0..=MAX_SPLAY_SECS).contains(&s) {
            return Err(invalid(
                "splay_secs",
                format!("0 to {MAX_SPLAY_SECS} seconds"),
            ));
        }
        row.splay_secs = s as i32;
    }
    if let Some(h) = &input.hosts {
        row.hosts = check_hosts(db, h).await?;
    }
    if let Some(l) = &input.labels {
        row.labels = check_labels("labels", l).map_err(PlanError::Invalid)?;
    }
    if let Some(r) = input.retention {
        if let Some(w) = &r.keep_within
            && !check_within(w)
        {
            return Err(invalid(
                "retention.keep_within",
                "a restic duration such as 30d, 12h or 1y6m",
            ));
        }
        row.retention = r;
    }
    if let Some(f) = input.forget_after_backup {
        row.forget_after_backup = f;
    }
    if let Some(e) = input.enabled {
        row.enabled = e;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_input_names_the_field() {
        let e = PlanInput::from_json(br#"{"splay_secs":"x"}"#).unwrap_err();
        assert!(e.to_string().starts_with("splay_secs:"), "{e}");
        let e = PlanInput::from_json(br#"{"retention":{"keep_last":-1}}"#).unwrap_err();
        assert!(e.to_string().starts_with("retention.keep_last:"), "{e}");
        let e = PlanInput::from_json(br#"{"retention":{"keep_all":1}}"#).unwrap_err();
        assert!(e.to_string().starts_with("retention.keep_all:"), "{e}");
        let e = PlanInput::from_json(br#"{"colour":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("colour:"), "{e}");
        let i =
            PlanInput::from_json(br#"{"tags":null,"timezone":null,"retention":{"keep_last":2}}"#)
                .unwrap();
        assert_eq!(i.tags, Some(vec![]));
        assert_eq!(i.timezone, Some(String::new()));
        assert_eq!(i.retention.unwrap().keep_last, Some(2));
    }

    #[test]
    fn paths_tags_labels_and_durations_are_checked() {
        assert!(check_paths(&["/srv".into(), "C:\\data".into()]).is_ok());
        assert!(
            check_paths(&["srv".into()])
                .unwrap_err()
                .to_string()
                .contains("not absolute")
        );
        assert!(check_paths(&[]).is_err());
        assert!(check_tags(&["a,b".into()]).is_err());
        assert!(check_tags(&["rm-plan:3".into()]).is_err());
        assert_eq!(
            check_labels("labels", &["db".into(), "db".into(), " eu ".into()]).unwrap(),
            vec!["db", "eu"]
        );
        assert!(check_labels("labels", &["a b".into()]).is_err());
        for ok in ["30d", "1y6m", "12h"] {
            assert!(check_within(ok), "{ok}");
        }
        for bad in ["", "d", "30", "3x"] {
            assert!(!check_within(bad), "{bad}");
        }
    }
}
