//! The parser and classifier against recorded restic output: Debian's 0.14
//! as CI runs it, and newer restic (0.17/0.18) from its documented formats.

use super::*;

const V14: Option<ResticVersion> = Some(ResticVersion::new(0, 14, 0));
const V17: Option<ResticVersion> = Some(ResticVersion::new(0, 17, 1));
const V18: Option<ResticVersion> = Some(ResticVersion::new(0, 18, 0));

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../fixtures/", $name))
    };
}

fn feed_stdout(output: &mut Output, text: &str) -> Vec<Line> {
    text.lines().map(|l| output.stdout_line(l)).collect()
}

fn feed_stderr(output: &mut Output, text: &str) -> Vec<String> {
    text.lines().filter_map(|l| output.stderr_line(l)).collect()
}

#[test]
fn backup_status_and_summary_of_newer_restic() {
    let mut out = Output::new(JobKind::Backup, "/".into());
    let lines = feed_stdout(&mut out, fixture!("backup_0_17.stdout"));
    let progress: Vec<&JobProgress> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Progress(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 2);
    assert_eq!(
        *progress[1],
        JobProgress {
            job_id: 0,
            percent: 25.0,
            bytes_done: 131_072_000,
            total_bytes: 524_288_000,
            files_done: 300,
            total_files: 1200,
            seconds_remaining: Some(9),
        }
    );
    // The verbose line is dropped, the plain text line goes to the log.
    let logged: Vec<&Line> = lines.iter().filter(|l| matches!(l, Line::Log(_))).collect();
    assert_eq!(
        logged,
        [&Line::Log(
            "some text restic printed that is not JSON".into()
        )]
    );
    let result = out.backup.expect("summary parsed");
    assert_eq!(
        result,
        BackupResult {
            snapshot_id: "4b8c0f7a1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccd".into(),
            files_new: 1180,
            files_changed: 15,
            files_unmodified: 4,
            data_added: 498_073_600,
            total_bytes_processed: 524_288_000,
            duration_secs: 12.5,
            snapshot: None,
        }
    );
}

#[test]
fn backup_of_restic_0_14() {
    let mut out = Output::new(JobKind::Backup, "/".into());
    let lines = feed_stdout(&mut out, fixture!("backup_0_14.stdout"));
    assert!(matches!(&lines[1], Line::Progress(p) if p.percent == 69.7 && p.files_done == 2));
    let result = out.backup.unwrap();
    assert_eq!(result.snapshot_id, "76b263ba");
    assert_eq!(result.files_new, 3);
    assert_eq!(result.data_added, 3_148_049);
    assert!((result.duration_secs - 0.3026).abs() < 0.001);
}

#[test]
fn backup_errors_on_stderr_become_readable_log_lines() {
    let mut out = Output::new(JobKind::Backup, "/".into());
    let logged = feed_stderr(&mut out, fixture!("backup_0_17_exit3.stderr"));
    assert_eq!(
        logged[0],
        "error during archival on /srv/data/private.key: open /srv/data/private.key: permission denied"
    );
    let logged = feed_stderr(&mut out, fixture!("backup_0_14_error.stderr"));
    assert_eq!(logged[0], "error during archival on /srv/data/private.key");
}

#[test]
fn exit_codes_classify_newer_restic() {
    let case = |file: &str, code: i32, version: Option<ResticVersion>| {
        let mut out = Output::new(JobKind::Snapshots, "/".into());
        feed_stderr(&mut out, file);
        classify(version, Some(code), &out.stderr_tail())
    };
    let not_found = case(fixture!("exit_10_0_17.stderr"), 10, V17);
    assert_eq!(not_found.kind, wire::ERROR_REPOSITORY_NOT_FOUND);
    assert!(
        not_found
            .message
            .starts_with("the repository does not exist: run Init on it"),
        "{}",
        not_found.message
    );
    assert!(
        not_found
            .message
            .contains("(restic: repository does not exist: unable to open config file"),
        "{}",
        not_found.message
    );
    let locked = case(fixture!("exit_11_0_17.stderr"), 11, V17);
    assert_eq!(locked.kind, wire::ERROR_REPOSITORY_LOCKED);
    let wrong = case(fixture!("exit_12_0_17.stderr"), 12, V17);
    assert_eq!(wrong.kind, wire::ERROR_WRONG_PASSWORD);
    assert!(wrong.message.contains("correct it on the repository page"));
    assert!(
        wrong
            .message
            .ends_with("(restic: wrong password or no key found)"),
        "{}",
        wrong.message
    );

    // The code alone decides on new restic, whatever the words say...
    for (code, kind) in [
        (10, wire::ERROR_REPOSITORY_NOT_FOUND),
        (11, wire::ERROR_REPOSITORY_LOCKED),
        (12, wire::ERROR_WRONG_PASSWORD),
    ] {
        assert_eq!(
            classify(V18, Some(code), &["Fatal: something".into()]).kind,
            kind
        );
        // ...and means nothing on restic before 0.17.
        assert_eq!(
            classify(V14, Some(code), &["Fatal: something".into()]).kind,
            wire::ERROR_RESTIC_FAILED
        );
    }
    let other = classify(V18, Some(1), &["Fatal: something else".into()]);
    assert_eq!(other.kind, wire::ERROR_RESTIC_FAILED);
    assert_eq!(
        other.message,
        "restic failed with exit code 1 (restic: something else)"
    );
}

#[test]
fn messages_classify_restic_0_14() {
    let case = |file: &str| {
        let mut out = Output::new(JobKind::Check, "/".into());
        feed_stderr(&mut out, file);
        classify(V14, Some(1), &out.stderr_tail())
    };
    assert_eq!(
        case(fixture!("missing_0_14.stderr")).kind,
        wire::ERROR_REPOSITORY_NOT_FOUND
    );
    let wrong = case(fixture!("wrong_password_0_14.stderr"));
    assert_eq!(wrong.kind, wire::ERROR_WRONG_PASSWORD);
    let locked = case(fixture!("locked_0_14.stderr"));
    assert_eq!(locked.kind, wire::ERROR_REPOSITORY_LOCKED);
    assert!(locked.message.contains("run Unlock"), "{}", locked.message);
    let full = classify(
        V14,
        Some(1),
        &[
            "Fatal: unable to save snapshot: write /repo/data/ab/abcd: no space left on device"
                .into(),
        ],
    );
    assert_eq!(full.kind, wire::ERROR_NO_SPACE);
    let killed = classify(V14, None, &[]);
    assert_eq!(
        (killed.kind, killed.message.as_str()),
        (wire::ERROR_RESTIC_FAILED, "restic was killed by a signal")
    );
}

#[test]
fn restore_json_summary_and_progress() {
    let mut out = Output::new(JobKind::Restore, "/".into());
    let lines = feed_stdout(&mut out, fixture!("restore_0_18.stdout"));
    assert!(matches!(&lines[0], Line::Progress(p)
        if p.percent == 50.0 && p.bytes_done == 1024 && p.files_done == 5 && p.total_files == 10));
    assert_eq!(lines[1], Line::Quiet);
    assert_eq!(
        out.restore,
        Some(RestoreResult {
            files_restored: 10,
            bytes_restored: 2048
        })
    );
}

#[test]
fn check_counts_errors_from_json_or_text() {
    let mut out = Output::new(JobKind::Check, "/".into());
    feed_stdout(&mut out, fixture!("check_0_18_errors.stdout"));
    let logged = feed_stderr(&mut out, fixture!("check_0_18_errors.stderr"));
    assert_eq!(logged[0], "error: pack 9f3a5c: not referenced in any index");
    assert_eq!(out.check_result(false), CheckResult { errors: 2 });

    let mut old = Output::new(JobKind::Check, "/".into());
    feed_stderr(&mut old, fixture!("check_0_14_errors.stderr"));
    assert_eq!(old.check_result(false), CheckResult { errors: 2 });
    assert_eq!(
        Output::new(JobKind::Check, "/".into()).check_result(true),
        CheckResult { errors: 0 }
    );
    // A failure without any error line still counts as one.
    let mut bare = Output::new(JobKind::Check, "/".into());
    bare.stderr_line("Fatal: repository contains errors");
    assert_eq!(bare.check_result(false), CheckResult { errors: 1 });
}

#[test]
fn forget_removed_and_kept() {
    let mut out = Output::new(JobKind::Forget, "/".into());
    let lines = feed_stdout(&mut out, fixture!("forget_0_14.stdout"));
    assert_eq!(lines, [Line::Quiet]);
    // `forget --prune` goes on in text: logged.
    assert!(matches!(
        out.stdout_line("loading indexes..."),
        Line::Log(_)
    ));
    assert_eq!(
        out.forget,
        Some(ForgetResult {
            removed: vec![
                "76b263baf27cc73ffd5240cce0a49539af96407c6fee5de712e339786bac19b2".into()
            ],
            kept: 1
        })
    );
}

#[test]
fn snapshots_listing_tolerates_missing_tags() {
    let mut out = Output::new(JobKind::Snapshots, "/".into());
    feed_stdout(&mut out, fixture!("snapshots_0_14.stdout"));
    let list = out.snapshots.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].short_id, "76b263ba");
    assert_eq!(list[0].tags, ["rm-plan:1"]);
    assert_eq!(list[0].paths, ["/tmp/rx/src"]);
    assert_eq!(list[0].hostname, "h1");
    assert!(list[1].tags.is_empty());
    assert_eq!(
        parse_snapshots(fixture!("snapshots_0_14.stdout")).unwrap(),
        list
    );
}

#[test]
fn ls_keeps_only_the_direct_children() {
    let mut out = Output::new(JobKind::Ls, "/src".into());
    let lines = feed_stdout(&mut out, fixture!("ls_0_14.stdout"));
    assert!(lines.iter().all(|l| *l == Line::Quiet));
    let names: Vec<&str> = out.ls.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a dir", "big", "sub"]);
    assert_eq!(out.ls.entries[1].size, 3_145_728);
    assert_eq!(out.ls.entries[0].kind, "dir");
    assert_eq!(out.ls.path, "/src");

    let mut newer = Output::new(JobKind::Ls, "/srv".into());
    feed_stdout(&mut newer, fixture!("ls_0_17.stdout"));
    let names: Vec<(&str, &str)> = newer
        .ls
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(names, [("a.txt", "file"), ("link", "symlink")]);

    let mut root = Output::new(JobKind::Ls, "/".into());
    feed_stdout(&mut root, fixture!("ls_0_17.stdout"));
    assert_eq!(root.ls.entries.len(), 1);
    assert_eq!(root.ls.entries[0].name, "srv");
}

#[test]
fn ls_is_capped() {
    let mut out = Output::new(JobKind::Ls, "/d".into());
    for i in 0..LS_MAX_ENTRIES + 5 {
        out.stdout_line(&format!(
            r#"{{"name":"f{i}","type":"file","path":"/d/f{i}","size":1,"struct_type":"node"}}"#
        ));
    }
    assert_eq!(out.ls.entries.len(), LS_MAX_ENTRIES);
    assert!(out.ls.truncated);
}

#[test]
fn stats_result() {
    let mut out = Output::new(JobKind::Stats, "/".into());
    out.stdout_line(r#"{"total_size":3145734,"total_file_count":6,"snapshots_count":1}"#);
    assert_eq!(
        out.stats,
        Some(StatsResult {
            total_size: 3_145_734,
            total_file_count: 6,
            snapshots_count: 1
        })
    );
}

#[test]
fn parent_dirs() {
    assert_eq!(parent_dir("/a/b"), "/a");
    assert_eq!(parent_dir("/a"), "/");
    assert_eq!(parent_dir("/a/b c/d"), "/a/b c");
}
