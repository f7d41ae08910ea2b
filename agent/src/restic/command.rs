//! The restic command line of each job kind, from the server's options and
//! the detected restic version. Pure: no I/O. Secrets never appear here —
//! the repository and its password reach restic through the environment.
//!
//! Every option is passed as `--flag=value` and every positional argument
//! after `--`, so a value starting with `-` can never turn into a flag.

use crate::wire::{JobKind, ResticOptions, Retention};

use super::version::ResticVersion;

/// How long restic ≥ 0.16 waits for another process's lock before failing
/// (`--retry-lock`); older restic fails at once and the agent's own
/// unlock-and-retry takes over.
pub const RETRY_LOCK: &str = "1m";

/// The arguments after restic's global flags, or why the job cannot run.
pub fn args(
    kind: JobKind,
    options: &ResticOptions,
    version: ResticVersion,
) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    let flag = |args: &mut Vec<String>, name: &str, value: &str| {
        args.push(format!("--{name}={value}"));
    };
    match kind {
        JobKind::Init => args.push("init".into()),
        JobKind::Backup => {
            if options.paths.is_empty() {
                return Err("a backup needs at least one path".into());
            }
            args.extend(["backup".into(), "--json".into()]);
            if let Some(host) = non_empty(&options.host) {
                flag(&mut args, "host", host);
            }
            for tag in &options.tags {
                flag(&mut args, "tag", tag);
            }
            for exclude in &options.excludes {
                flag(&mut args, "exclude", exclude);
            }
            args.push("--".into());
            args.extend(options.paths.iter().cloned());
        }
        JobKind::Forget => {
            args.extend(["forget".into(), "--json".into()]);
            if let Some(host) = non_empty(&options.host) {
                flag(&mut args, "host", host);
            }
            for tag in &options.tags {
                flag(&mut args, "tag", tag);
            }
            let group_by = non_empty(&options.group_by).unwrap_or("host,paths");
            flag(&mut args, "group-by", group_by);
            // An empty policy keeps everything: restic says so and removes
            // nothing, which is what an empty retention means.
            let retention = options.retention.clone().unwrap_or_default();
            retention_flags(&mut args, &retention);
            if options.prune {
                args.push("--prune".into());
                if let Some(max_unused) = non_empty(&options.max_unused) {
                    flag(&mut args, "max-unused", max_unused);
                }
            }
        }
        JobKind::Prune => {
            args.push("prune".into());
            if let Some(max_unused) = non_empty(&options.max_unused) {
                flag(&mut args, "max-unused", max_unused);
            }
        }
        JobKind::Check => {
            args.push("check".into());
            if version.has_check_json() {
                args.push("--json".into());
            }
            if let Some(subset) = non_empty(&options.read_data_subset) {
                flag(&mut args, "read-data-subset", subset);
            }
        }
        JobKind::Unlock => {
            args.push("unlock".into());
            if options.remove_all {
                args.push("--remove-all".into());
            }
        }
        JobKind::Snapshots => {
            args.extend(["snapshots".into(), "--json".into()]);
            if let Some(host) = non_empty(&options.host) {
                flag(&mut args, "host", host);
            }
            for tag in &options.tags {
                flag(&mut args, "tag", tag);
            }
        }
        JobKind::Restore => {
            let snapshot = snapshot_id(options)?;
            let target = non_empty(&options.target).ok_or("a restore needs a target directory")?;
            args.push("restore".into());
            if version.has_restore_json() {
                args.push("--json".into());
            }
            flag(&mut args, "target", target);
            for include in &options.include {
                flag(&mut args, "include", include);
            }
            args.extend(["--".into(), snapshot.into()]);
        }
        JobKind::Ls => {
            let snapshot = snapshot_id(options)?;
            args.extend([
                "ls".into(),
                "--json".into(),
                "--".into(),
                snapshot.into(),
                ls_dir(options),
            ]);
        }
        JobKind::Stats => {
            args.extend(["stats".into(), "--json".into()]);
            if let Some(snapshot) = non_empty(&options.snapshot_id) {
                check_snapshot_id(snapshot)?;
                args.extend(["--".into(), snapshot.into()]);
            }
        }
        JobKind::Diff => return Err("diff is not supported by this agent yet".into()),
        JobKind::Update => return Err("update is not a restic job".into()),
    }
    Ok(args)
}

/// The directory an `ls` job lists: absolute, without a trailing slash
/// (`/` for the root).
pub fn ls_dir(options: &ResticOptions) -> String {
    let raw = non_empty(&options.path).unwrap_or("/");
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}")
    }
}

/// The arguments of a `restic snapshots` listing one snapshot (the one a
/// backup just wrote), to fill the backup result's snapshot. Without a
/// lock: it only reads a snapshot nothing else can remove yet, and taking
/// and dropping a lock was a third of the lookup's time (0.2–0.3 s of
/// 0.5–0.7 s on a local repository), which every backup waits for.
pub fn snapshot_lookup(snapshot_id: &str) -> Vec<String> {
    vec![
        "--no-lock".into(),
        "snapshots".into(),
        "--json".into(),
        "--".into(),
        snapshot_id.into(),
    ]
}

fn retention_flags(args: &mut Vec<String>, retention: &Retention) {
    let counts = [
        ("keep-last", retention.keep_last),
        ("keep-hourly", retention.keep_hourly),
        ("keep-daily", retention.keep_daily),
        ("keep-weekly", retention.keep_weekly),
        ("keep-monthly", retention.keep_monthly),
        ("keep-yearly", retention.keep_yearly),
    ];
    for (name, value) in counts {
        if let Some(n) = value {
            args.push(format!("--{name}={n}"));
        }
    }
    if let Some(within) = non_empty(&retention.keep_within) {
        args.push(format!("--keep-within={within}"));
    }
}

fn snapshot_id(options: &ResticOptions) -> Result<&str, String> {
    let id = non_empty(&options.snapshot_id).ok_or("no snapshot id given")?;
    check_snapshot_id(id)?;
    Ok(id)
}

/// A snapshot id is hex (full or a prefix) or `latest`; anything else is a
/// mistake better reported by the agent than by restic.
fn check_snapshot_id(id: &str) -> Result<(), String> {
    if id == "latest" || (id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(())
    } else {
        Err(format!("{id:?} is not a snapshot id"))
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V14: ResticVersion = ResticVersion::new(0, 14, 0);
    const V18: ResticVersion = ResticVersion::new(0, 18, 0);

    fn opts() -> ResticOptions {
        ResticOptions::default()
    }

    #[test]
    fn backup_passes_host_tags_excludes_and_paths_after_a_separator() {
        let o = ResticOptions {
            paths: vec!["/srv/data".into(), "-weird".into()],
            excludes: vec!["*.tmp".into()],
            tags: vec!["rm-plan:3".into(), "nightly".into()],
            host: Some("web-1".into()),
            ..opts()
        };
        assert_eq!(
            args(JobKind::Backup, &o, V14).unwrap(),
            [
                "backup",
                "--json",
                "--host=web-1",
                "--tag=rm-plan:3",
                "--tag=nightly",
                "--exclude=*.tmp",
                "--",
                "/srv/data",
                "-weird"
            ]
        );
        assert!(args(JobKind::Backup, &opts(), V14).is_err());
    }

    #[test]
    fn forget_carries_the_policy_and_filters() {
        let o = ResticOptions {
            tags: vec!["rm-plan:3".into()],
            host: Some("web-1".into()),
            retention: Some(Retention {
                keep_last: Some(3),
                keep_daily: Some(7),
                keep_within: Some("30d".into()),
                ..Retention::default()
            }),
            prune: true,
            max_unused: Some("10%".into()),
            ..opts()
        };
        assert_eq!(
            args(JobKind::Forget, &o, V14).unwrap(),
            [
                "forget",
                "--json",
                "--host=web-1",
                "--tag=rm-plan:3",
                "--group-by=host,paths",
                "--keep-last=3",
                "--keep-daily=7",
                "--keep-within=30d",
                "--prune",
                "--max-unused=10%"
            ]
        );
        assert_eq!(
            args(JobKind::Forget, &opts(), V14).unwrap(),
            ["forget", "--json", "--group-by=host,paths"]
        );
    }

    #[test]
    fn version_dependent_flags() {
        let check = ResticOptions {
            read_data_subset: Some("5%".into()),
            ..opts()
        };
        assert_eq!(
            args(JobKind::Check, &check, V14).unwrap(),
            ["check", "--read-data-subset=5%"]
        );
        assert_eq!(
            args(JobKind::Check, &check, V18).unwrap(),
            ["check", "--json", "--read-data-subset=5%"]
        );
        let restore = ResticOptions {
            snapshot_id: Some("abc123".into()),
            target: Some("/restore here".into()),
            include: vec!["/etc".into()],
            ..opts()
        };
        assert_eq!(
            args(JobKind::Restore, &restore, V14).unwrap(),
            [
                "restore",
                "--target=/restore here",
                "--include=/etc",
                "--",
                "abc123"
            ]
        );
        assert_eq!(args(JobKind::Restore, &restore, V18).unwrap()[1], "--json");
    }

    #[test]
    fn snapshot_ids_and_ls_paths_are_checked() {
        let ls = |id: &str, path: Option<&str>| ResticOptions {
            snapshot_id: Some(id.into()),
            path: path.map(Into::into),
            ..opts()
        };
        assert_eq!(
            args(JobKind::Ls, &ls("deadbeef", Some("/srv/a dir/")), V14).unwrap(),
            ["ls", "--json", "--", "deadbeef", "/srv/a dir"]
        );
        assert_eq!(ls_dir(&ls("latest", None)), "/");
        assert_eq!(ls_dir(&ls("latest", Some("///"))), "/");
        assert_eq!(ls_dir(&ls("latest", Some("etc"))), "/etc");
        assert!(args(JobKind::Ls, &ls("--remove-all", None), V14).is_err());
        assert!(args(JobKind::Restore, &ls("deadbeef", None), V14).is_err());
        assert!(args(JobKind::Diff, &opts(), V14).is_err());
        assert_eq!(
            args(JobKind::Stats, &opts(), V14).unwrap(),
            ["stats", "--json"]
        );
        assert_eq!(
            args(
                JobKind::Unlock,
                &ResticOptions {
                    remove_all: true,
                    ..opts()
                },
                V14
            )
            .unwrap(),
            ["unlock", "--remove-all"]
        );
    }
}
