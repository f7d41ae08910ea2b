//! The agent's restic jobs against the real restic (Debian's 0.14 in CI),
//! driven through `ResticHandler` with a detached frame sender: no server.
//! restic (and rclone for the REST backend) must be installed; these tests
//! fail, never skip, when they are not.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use agent::client::{CommandHandler, FrameSender};
use agent::restic::{ResticHandler, ResticSettings};
use agent::wire::{
    self, BackupResult, CheckResult, CommandCancel, CommandRestic, Envelope, FinishedStatus,
    ForgetResult, JobFinished, JobKind, JobProgress, JobSnapshots, JobStarted, LogStream,
    LogStreamKind, LsResult, Message, ResticOptions, ResticRepository, RestoreResult, Retention,
    StatsResult,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const PASSWORD: &str = "correct-horse-battery-staple-42";
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The restic on PATH, or a failure that says how to get it.
fn restic_bin() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("restic"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("restic is not installed: these tests need it (apt-get install restic)")
    })
}

fn rclone_bin() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("rclone"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("rclone is not installed: the REST backend test needs it (apt-get install rclone)")
    })
}

static NEXT_JOB: AtomicI64 = AtomicI64::new(1);

struct Harness {
    root: tempfile::TempDir,
    handler: ResticHandler,
}

impl Harness {
    fn new() -> Self {
        Self::with(restic_bin(), Duration::from_secs(30))
    }

    fn with(restic_path: PathBuf, cancel_grace: Duration) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("secrets")).unwrap();
        let handler = ResticHandler::new(ResticSettings {
            restic_path,
            cache_dir: root.path().join("cache"),
            cancel_grace,
            secrets_dir: Some(root.path().join("secrets")),
        });
        Harness { root, handler }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// A local repository under the harness's directory.
    fn local_repo(&self, name: &str) -> ResticRepository {
        ResticRepository {
            url: self.path(name).to_string_lossy().into_owned(),
            password: PASSWORD.into(),
            env: BTreeMap::new(),
        }
    }

    fn secrets_left(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path("secrets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Starts a job; its frames arrive on the returned receiver.
    fn start(
        &self,
        kind: JobKind,
        repository: &ResticRepository,
        options: ResticOptions,
    ) -> (i64, mpsc::Receiver<String>) {
        let job_id = NEXT_JOB.fetch_add(1, Ordering::SeqCst);
        let (sender, rx) = FrameSender::detached(4096);
        let command = CommandRestic {
            job_id,
            kind,
            repository: repository.clone(),
            options,
        };
        self.handler.handle(command.envelope(), sender);
        (job_id, rx)
    }

    async fn run(
        &self,
        kind: JobKind,
        repository: &ResticRepository,
        options: ResticOptions,
    ) -> Frames {
        let (job_id, rx) = self.start(kind, repository, options);
        let frames = Frames::collect(job_id, rx).await;
        assert!(
            !frames.text().contains(PASSWORD),
            "the password leaked into a frame"
        );
        frames
    }

    fn cancel(&self, job_id: i64) {
        let (sender, _rx) = FrameSender::detached(1);
        self.handler
            .handle(CommandCancel { job_id }.envelope(), sender);
    }

    async fn init(&self, repository: &ResticRepository) {
        let frames = self
            .run(JobKind::Init, repository, ResticOptions::default())
            .await;
        frames.assert_succeeded();
    }
}

/// Every frame one job sent, up to and including its `job.finished`.
struct Frames {
    job_id: i64,
    frames: Vec<Envelope>,
    texts: Vec<String>,
}

impl Frames {
    async fn collect(job_id: i64, mut rx: mpsc::Receiver<String>) -> Frames {
        let mut frames = Frames {
            job_id,
            frames: Vec::new(),
            texts: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let text = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(text)) => text,
                Ok(None) => panic!("the sender closed before job.finished: {}", frames.log()),
                Err(_) => panic!("job {job_id} did not finish in time: {}", frames.log()),
            };
            assert!(text.len() <= wire::MAX_FRAME_BYTES);
            let envelope = Envelope::parse(&text).unwrap();
            let done = envelope.kind == wire::JOB_FINISHED;
            frames.texts.push(text);
            frames.frames.push(envelope);
            if done {
                return frames;
            }
        }
    }

    fn of<M: Message>(&self) -> Vec<M> {
        self.frames
            .iter()
            .filter(|f| f.kind == M::TYPE)
            .map(|f| f.payload().unwrap())
            .collect()
    }

    fn text(&self) -> String {
        self.texts.join("\n")
    }

    fn finished(&self) -> JobFinished {
        let finished: JobFinished = self.frames.last().unwrap().payload().unwrap();
        assert_eq!(finished.job_id, self.job_id);
        finished
    }

    fn log(&self) -> String {
        self.of::<LogStream>()
            .into_iter()
            .map(|l| l.data)
            .collect::<String>()
    }

    fn result<T: serde::de::DeserializeOwned>(&self) -> T {
        let finished = self.finished();
        serde_json::from_value(
            finished
                .result
                .clone()
                .unwrap_or_else(|| panic!("no result in {finished:?}; log:\n{}", self.log())),
        )
        .unwrap()
    }

    fn assert_succeeded(&self) {
        let finished = self.finished();
        assert_eq!(
            finished.status,
            FinishedStatus::Succeeded,
            "{finished:?}\nlog:\n{}",
            self.log()
        );
        // The protocol's order: started first, log seq from 1 without gaps.
        assert_eq!(self.frames[0].kind, wire::JOB_STARTED);
        let started: JobStarted = self.frames[0].payload().unwrap();
        assert_eq!(started.job_id, self.job_id);
        let seqs: Vec<i64> = self.of::<LogStream>().iter().map(|l| l.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    }
}

/// A tree with awkward names, nested directories and some bulk.
fn make_tree(root: &Path, bulk_bytes: usize) {
    std::fs::create_dir_all(root.join("a dir/nested")).unwrap();
    std::fs::create_dir_all(root.join("ünïcødé")).unwrap();
    std::fs::write(root.join("a dir/file with spaces.txt"), b"spaces\n").unwrap();
    std::fs::write(root.join("a dir/nested/deep.txt"), b"deep\n").unwrap();
    std::fs::write(root.join("ünïcødé/naïve café.txt"), "crème brûlée\n").unwrap();
    std::fs::write(root.join("top.txt"), b"top\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    // Pseudo-random, so restic cannot deduplicate it away.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bulk = vec![0u8; bulk_bytes];
    for chunk in bulk.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    for (i, part) in bulk.chunks(bulk_bytes.div_ceil(4).max(1)).enumerate() {
        std::fs::write(root.join(format!("bulk-{i}.bin")), part).unwrap();
    }
}

/// Relative path → sha256 of every regular file under `root`.
fn digest_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(base, &path, out);
            } else if meta.is_file() {
                let mut hasher = Sha256::new();
                let mut file = std::fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = file.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, hex::encode(hasher.finalize()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn backup_options(paths: Vec<String>) -> ResticOptions {
    ResticOptions {
        paths,
        tags: vec!["rm-plan:7".into(), "nightly".into()],
        host: Some("web-1".into()),
        excludes: vec!["*.skip".into()],
        ..ResticOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_browse_restore_forget_check_on_a_local_repository() {
    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;
    assert!(h.path("repo/config").is_file(), "init made no repository");
    assert!(h.secrets_left().is_empty(), "password file left behind");

    let src = h.path("src");
    make_tree(&src, 40 * 1024 * 1024);
    std::fs::write(src.join("ignored.skip"), b"excluded").unwrap();
    let src_str = src.to_string_lossy().into_owned();

    // Backup: progress while it runs, the summary as its result.
    let backup = h
        .run(
            JobKind::Backup,
            &repo,
            backup_options(vec![src_str.clone()]),
        )
        .await;
    backup.assert_succeeded();
    let progress: Vec<JobProgress> = backup.of();
    assert!(!progress.is_empty(), "no progress; log:\n{}", backup.log());
    for p in &progress {
        assert_eq!(p.job_id, backup.job_id);
        assert!((0.0..=100.0).contains(&p.percent), "{p:?}");
    }
    let result: BackupResult = backup.result();
    assert_eq!(result.files_new, 9, "{result:?}");
    assert!(
        result.total_bytes_processed >= 40 * 1024 * 1024,
        "{result:?}"
    );
    assert!(result.data_added > 0 && result.duration_secs > 0.0);
    assert_eq!(result.snapshot_id.len(), 64, "full id: {result:?}");
    let snapshot = result
        .snapshot
        .clone()
        .expect("snapshot info for the index");
    assert_eq!(snapshot.id, result.snapshot_id);
    assert_eq!(snapshot.hostname, "web-1");
    assert_eq!(snapshot.paths, std::slice::from_ref(&src_str));
    assert_eq!(snapshot.tags, ["rm-plan:7", "nightly"]);
    assert!(!backup.finished().warning);
    assert!(h.secrets_left().is_empty(), "password file left behind");

    // Snapshots: parts, the last one marked.
    let listing = h
        .run(
            JobKind::Snapshots,
            &repo,
            ResticOptions {
                host: Some("web-1".into()),
                tags: vec!["rm-plan:7".into()],
                ..ResticOptions::default()
            },
        )
        .await;
    listing.assert_succeeded();
    let parts: Vec<JobSnapshots> = listing.of();
    assert_eq!(parts.len(), 1);
    assert!(parts[0].last);
    assert_eq!(parts[0].snapshots, std::slice::from_ref(&snapshot));

    // ls: exactly the direct children of one directory.
    let ls = h
        .run(
            JobKind::Ls,
            &repo,
            ResticOptions {
                snapshot_id: Some(result.snapshot_id.clone()),
                path: Some(format!("{src_str}/a dir")),
                ..ResticOptions::default()
            },
        )
        .await;
    ls.assert_succeeded();
    let listed: LsResult = ls.result();
    let mut names: Vec<(String, String)> = listed
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.kind.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("file with spaces.txt".to_string(), "file".to_string()),
            ("nested".to_string(), "dir".to_string())
        ]
    );
    assert!(!listed.truncated);
    let top = h
        .run(
            JobKind::Ls,
            &repo,
            ResticOptions {
                snapshot_id: Some(snapshot.short_id.clone()),
                path: Some(src_str.clone()),
                ..ResticOptions::default()
            },
        )
        .await;
    let top: LsResult = top.result();
    let mut names: Vec<String> = top.entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "a dir",
            "bulk-0.bin",
            "bulk-1.bin",
            "bulk-2.bin",
            "bulk-3.bin",
            "empty",
            "top.txt",
            "ünïcødé"
        ]
    );

    // Restore into a new directory: file by file identical.
    let target = h.path("restored");
    let restore = h
        .run(
            JobKind::Restore,
            &repo,
            ResticOptions {
                snapshot_id: Some(result.snapshot_id.clone()),
                target: Some(target.to_string_lossy().into_owned()),
                ..ResticOptions::default()
            },
        )
        .await;
    restore.assert_succeeded();
    let restored_root = target.join(src_str.trim_start_matches('/'));
    let mut expected = digest_tree(&src);
    expected.remove("ignored.skip");
    assert_eq!(digest_tree(&restored_root), expected);
    let counted: RestoreResult = restore.result();
    assert_eq!(counted.files_restored, expected.len() as u64);
    assert!(counted.bytes_restored >= 40 * 1024 * 1024);

    // A partial restore: only the included path lands.
    let partial = h.path("partial");
    let include = format!("{src_str}/ünïcødé");
    let restore = h
        .run(
            JobKind::Restore,
            &repo,
            ResticOptions {
                snapshot_id: Some("latest".into()),
                target: Some(partial.to_string_lossy().into_owned()),
                include: vec![include.clone()],
                ..ResticOptions::default()
            },
        )
        .await;
    restore.assert_succeeded();
    let partial_tree = digest_tree(&partial.join(src_str.trim_start_matches('/')));
    assert_eq!(
        partial_tree.keys().collect::<Vec<_>>(),
        ["ünïcødé/naïve café.txt"]
    );
    assert_eq!(
        restore.result::<RestoreResult>(),
        RestoreResult {
            files_restored: 1,
            bytes_restored: "crème brûlée\n".len() as u64
        }
    );

    // Stats.
    let stats = h.run(JobKind::Stats, &repo, ResticOptions::default()).await;
    stats.assert_succeeded();
    let stats: StatsResult = stats.result();
    assert_eq!(stats.snapshots_count, 1);
    assert!(stats.total_size >= 40 * 1024 * 1024);

    // A second backup, then forget keeping the last one.
    std::fs::write(src.join("top.txt"), b"changed\n").unwrap();
    let second = h
        .run(
            JobKind::Backup,
            &repo,
            backup_options(vec![src_str.clone()]),
        )
        .await;
    second.assert_succeeded();
    let second: BackupResult = second.result();
    assert_eq!((second.files_changed, second.files_new), (1, 0));
    let forget = h
        .run(
            JobKind::Forget,
            &repo,
            ResticOptions {
                host: Some("web-1".into()),
                tags: vec!["rm-plan:7".into()],
                retention: Some(Retention {
                    keep_last: Some(1),
                    ..Retention::default()
                }),
                ..ResticOptions::default()
            },
        )
        .await;
    forget.assert_succeeded();
    assert_eq!(
        forget.result::<ForgetResult>(),
        ForgetResult {
            removed: vec![result.snapshot_id.clone()],
            kept: 1
        }
    );

    // Prune and check.
    let prune = h
        .run(
            JobKind::Prune,
            &repo,
            ResticOptions {
                max_unused: Some("5%".into()),
                ..ResticOptions::default()
            },
        )
        .await;
    prune.assert_succeeded();
    let check = h
        .run(
            JobKind::Check,
            &repo,
            ResticOptions {
                read_data_subset: Some("50%".into()),
                ..ResticOptions::default()
            },
        )
        .await;
    check.assert_succeeded();
    assert_eq!(check.result::<CheckResult>(), CheckResult { errors: 0 });
    assert!(
        check.log().contains("no errors were found"),
        "{}",
        check.log()
    );
    // restic's output is in the log, on the streams it used.
    assert!(
        check
            .of::<LogStream>()
            .iter()
            .any(|l| l.stream == LogStreamKind::Stdout)
    );
    assert!(h.secrets_left().is_empty(), "password file left behind");
    assert_eq!(h.handler.running_jobs(), Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_missing_repository_are_classified() {
    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;

    let mut wrong = repo.clone();
    wrong.password = "not-the-password".into();
    let frames = h
        .run(JobKind::Snapshots, &wrong, ResticOptions::default())
        .await;
    let finished = frames.finished();
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(
        finished.error_kind.as_deref(),
        Some(wire::ERROR_WRONG_PASSWORD)
    );
    let error = finished.error.unwrap();
    assert!(
        error.starts_with("wrong repository password: correct it on the repository page"),
        "{error}"
    );
    assert_eq!(finished.exit_code, Some(1));
    assert!(frames.log().contains("wrong password"), "{}", frames.log());
    assert!(frames.of::<JobSnapshots>().is_empty());

    let missing = h.local_repo("no-such-repo");
    let frames = h
        .run(
            JobKind::Backup,
            &missing,
            backup_options(vec!["/etc/hostname".into()]),
        )
        .await;
    let finished = frames.finished();
    assert_eq!(
        finished.error_kind.as_deref(),
        Some(wire::ERROR_REPOSITORY_NOT_FOUND),
        "{finished:?}"
    );
    assert!(
        finished
            .error
            .unwrap()
            .starts_with("the repository does not exist: run Init on it"),
    );
    assert!(h.secrets_left().is_empty(), "password file left behind");

    // restic trims its password file: a padded password is refused upfront.
    let mut padded = repo.clone();
    padded.password = format!(" {PASSWORD} ");
    let frames = h
        .run(JobKind::Snapshots, &padded, ResticOptions::default())
        .await;
    let finished = frames.finished();
    assert_eq!(
        finished.error_kind.as_deref(),
        Some(wire::ERROR_WRONG_PASSWORD)
    );
    assert!(finished.error.unwrap().contains("whitespace"));

    // Bad options fail at once, without restic.
    let frames = h
        .run(JobKind::Restore, &repo, ResticOptions::default())
        .await;
    assert_eq!(
        frames.finished().error_kind.as_deref(),
        Some(wire::ERROR_AGENT)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_restic_fails_at_once_and_the_hello_says_so() {
    let h = Harness::with(
        PathBuf::from("/nonexistent/bin/restic"),
        Duration::from_secs(1),
    );
    let status = h.handler.hello_status();
    assert_eq!(status.restic_version, None);
    assert_eq!(status.running_jobs, Some(vec![]));
    let repo = h.local_repo("repo");
    let frames = h.run(JobKind::Init, &repo, ResticOptions::default()).await;
    let finished = frames.finished();
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(
        finished.error_kind.as_deref(),
        Some(wire::ERROR_RESTIC_NOT_FOUND)
    );
    let error = finished.error.clone().unwrap();
    assert!(
        error.contains("install restic") && error.contains("restic_path"),
        "{error}"
    );
    // The finish is repeated in hellos for a while.
    let status = h.handler.hello_status();
    assert_eq!(status.recent_finished, std::slice::from_ref(&finished));
    // The same command again (the server missed the finish): the recorded
    // finish comes back, the job does not run a second time.
    let (sender, rx) = FrameSender::detached(16);
    let again = CommandRestic {
        job_id: finished.job_id,
        kind: JobKind::Init,
        repository: repo.clone(),
        options: ResticOptions::default(),
    };
    h.handler.handle(again.envelope(), sender);
    let repeated = Frames::collect(finished.job_id, rx).await;
    assert_eq!(repeated.frames.len(), 1, "no job.started, no log");
    assert_eq!(repeated.finished(), finished);

    // The real restic: its version.
    let real = Harness::new();
    let version = real.handler.hello_status().restic_version.unwrap();
    let printed = Command::new(restic_bin()).arg("version").output().unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.starts_with(&format!("restic {version} ")),
        "{version} vs {printed}"
    );
}

/// Ids of live processes whose command line contains `marker` (zombies
/// count as gone).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie {
            found.push(pid);
        }
    }
    found
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A big sparse file: restic takes a long while to read it, the disk holds
/// nothing.
fn sparse_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let file = std::fs::File::create(root.join("huge.img")).unwrap();
    file.set_len(200 * 1024 * 1024 * 1024).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lock_is_unlocked_and_the_job_retried_in_the_same_log() {
    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;

    // A backup killed mid-run leaves its lock behind.
    let pw = h.path("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut crashed = Command::new(restic_bin())
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "stream",
            "--no-cache",
        ])
        .env("RESTIC_REPOSITORY", &repo.url)
        .env("RESTIC_PASSWORD_FILE", &pw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let locks = h.path("repo/locks");
    // restic creates the lock file before writing it: kill only once it
    // has content, or the check sees no lock at all (a flake under load).
    wait_until("the lock", Duration::from_secs(30), || {
        std::fs::read_dir(&locks)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    })
    .await;
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 1);

    // check needs an exclusive lock: locked, unlocked, retried, fine.
    let check = h.run(JobKind::Check, &repo, ResticOptions::default()).await;
    check.assert_succeeded();
    let log = check.log();
    assert!(log.contains("repository is already locked"), "{log}");
    assert!(log.contains("running `restic unlock`"), "{log}");
    assert!(log.contains("successfully removed locks"), "{log}");
    assert!(log.contains("no errors were found"), "{log}");
    let system: Vec<LogStream> = check
        .of::<LogStream>()
        .into_iter()
        .filter(|l| l.stream == LogStreamKind::System && l.data.contains("restic unlock"))
        .collect();
    assert_eq!(system.len(), 1);
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_long_backup_and_leaves_no_restic() {
    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;
    let src = h.path("src");
    sparse_tree(&src);

    let (job_id, mut rx) = h.start(
        JobKind::Backup,
        &repo,
        backup_options(vec![src.to_string_lossy().into_owned()]),
    );
    // The cache directory names this harness: it finds our restic.
    let marker = h.path("cache").to_string_lossy().into_owned();
    wait_until("restic to run", Duration::from_secs(30), || {
        !processes_with(&marker).is_empty()
    })
    .await;
    assert_eq!(h.handler.running_jobs(), [job_id]);
    assert_eq!(h.handler.hello_status().running_jobs, Some(vec![job_id]));
    // While it runs, the password sits in a 0600 file in a 0700 directory.
    let secrets = h.secrets_left();
    assert_eq!(secrets.len(), 1);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secrets[0]), 0o700);
    assert_eq!(mode(&secrets[0].join("password")), 0o600);
    assert_eq!(
        std::fs::read_to_string(secrets[0].join("password")).unwrap(),
        PASSWORD
    );
    // Not on restic's command line.
    for pid in processes_with(&marker) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(PASSWORD));
    }

    // A duplicate command for the running job is ignored.
    let (dup_id, mut dup_rx) = {
        let (sender, rx) = FrameSender::detached(16);
        let command = CommandRestic {
            job_id,
            kind: JobKind::Backup,
            repository: repo.clone(),
            options: backup_options(vec![src.to_string_lossy().into_owned()]),
        };
        h.handler.handle(command.envelope(), sender);
        (job_id, rx)
    };
    assert_eq!(dup_id, job_id);

    // Wait for a progress frame: restic is well into the file.
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("progress in time")
            .unwrap();
        let envelope = Envelope::parse(&text).unwrap();
        let is_progress = envelope.kind == wire::JOB_PROGRESS;
        early.push(text);
        if is_progress {
            break;
        }
    }
    let started = Instant::now();
    h.cancel(job_id);
    let frames = Frames::collect(job_id, rx).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "SIGINT was enough"
    );
    let finished = frames.finished();
    assert_eq!(
        finished.status,
        FinishedStatus::Cancelled,
        "{}",
        frames.log()
    );
    assert!(frames.log().contains("cancelled"), "{}", frames.log());
    assert!(processes_with(&marker).is_empty(), "restic still running");
    assert!(h.secrets_left().is_empty(), "password file left behind");
    assert!(h.handler.running_jobs().is_empty());
    assert!(
        dup_rx.try_recv().is_err(),
        "the duplicate started a second run"
    );
    // A cancel for a job that is gone is ignored.
    h.cancel(job_id);
    h.cancel(987_654);
}

/// A stand-in restic that ignores SIGINT (and so does its child, which
/// inherits the ignored signal): only SIGKILL to the group ends them.
fn stubborn_restic(dir: &Path) -> PathBuf {
    let path = dir.join("stubborn-restic");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         if [ \"$1\" = version ]; then echo 'restic 0.14.0 compiled with go1.19.8 on linux/amd64'; exit 0; fi\n\
         trap '' INT\n\
         sleep 1000 &\n\
         wait\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The process group of `pid`, from /proc.
fn pgid_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn group_members(pgid: i32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str()) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_group_after_the_grace() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::with(stubborn_restic(scratch.path()), Duration::from_secs(1));
    let repo = h.local_repo("repo");
    let (job_id, rx) = h.start(JobKind::Init, &repo, ResticOptions::default());
    let marker = h.path("cache").to_string_lossy().into_owned();
    wait_until("the stand-in to run", Duration::from_secs(10), || {
        !processes_with(&marker).is_empty()
    })
    .await;
    let pid = processes_with(&marker)[0];
    let pgid = pgid_of(pid);
    // Its own group, not the test's.
    assert_eq!(pgid, pid as i32);
    assert_ne!(pgid, pgid_of(std::process::id()));
    wait_until("its child", Duration::from_secs(10), || {
        group_members(pgid).len() >= 2
    })
    .await;
    h.cancel(job_id);
    let frames = Frames::collect(job_id, rx).await;
    assert_eq!(frames.finished().status, FinishedStatus::Cancelled);
    assert!(frames.log().contains("killing it"), "{}", frames.log());
    wait_until("the group to die", Duration::from_secs(5), || {
        group_members(pgid).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_jobs_and_reports_them() {
    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;
    let src = h.path("src");
    sparse_tree(&src);
    let (job_id, rx) = h.start(
        JobKind::Backup,
        &repo,
        backup_options(vec![src.to_string_lossy().into_owned()]),
    );
    let marker = h.path("cache").to_string_lossy().into_owned();
    wait_until("restic to run", Duration::from_secs(30), || {
        !processes_with(&marker).is_empty()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), h.handler.shutdown())
        .await
        .unwrap();
    assert!(processes_with(&marker).is_empty());
    let frames = Frames::collect(job_id, rx).await;
    let finished = frames.finished();
    assert_eq!(finished.status, FinishedStatus::Failed);
    assert_eq!(finished.error_kind.as_deref(), Some(wire::ERROR_AGENT));
    assert!(finished.error.unwrap().contains("agent was stopped"));
}

/// Set in the child process of `killed_agent_leaves_no_restic`.
const KILL_CHILD_ENV: &str = "RM_TEST_KILLED_AGENT_DIR";

/// A stand-in restic that prints nothing while it runs, so no broken pipe
/// can end it: only PR_SET_PDEATHSIG can.
fn silent_restic(dir: &Path) -> PathBuf {
    let path = dir.join("silent-restic");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         if [ \"$1\" = version ]; then echo 'restic 0.14.0 compiled with go1.19.8 on linux/amd64'; exit 0; fi\n\
         exec sleep 1000\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Live children of `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The agent process is SIGKILLed mid-job: the restic processes it started
/// die with it. The test re-runs itself as the "agent": a child process
/// running a real restic backup and a silent stand-in through
/// `ResticHandler`. The real restic would also die of a broken pipe on its
/// next status line; the stand-in writes nothing, so only
/// `PR_SET_PDEATHSIG` (from the long-lived spawner thread) ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_leaves_no_restic() {
    if let Some(dir) = std::env::var_os(KILL_CHILD_ENV) {
        // The "agent": start both jobs, say so, and wait to be killed.
        let dir = PathBuf::from(dir);
        let settings = |restic_path| ResticSettings {
            restic_path,
            cache_dir: dir.join("cache"),
            cancel_grace: Duration::from_secs(30),
            secrets_dir: Some(dir.join("secrets")),
        };
        let real = ResticHandler::new(settings(restic_bin()));
        let silent = ResticHandler::new(settings(silent_restic(&dir)));
        let repo = ResticRepository {
            url: dir.join("repo").to_string_lossy().into_owned(),
            password: PASSWORD.into(),
            env: BTreeMap::new(),
        };
        let (sender, mut rx) = FrameSender::detached(4096);
        let backup = CommandRestic {
            job_id: 1,
            kind: JobKind::Backup,
            repository: repo.clone(),
            options: backup_options(vec![dir.join("src").to_string_lossy().into_owned()]),
        };
        real.handle(backup.envelope(), sender.clone());
        let init = CommandRestic {
            job_id: 2,
            kind: JobKind::Init,
            repository: repo,
            options: ResticOptions::default(),
        };
        silent.handle(init.envelope(), sender);
        // Bounded, should the parent die without killing us.
        let follow = async {
            while let Some(text) = rx.recv().await {
                if text.contains(wire::JOB_PROGRESS) {
                    println!("BACKUP RUNNING");
                    std::io::stdout().flush().unwrap();
                }
                assert!(!text.contains(wire::JOB_FINISHED), "a job ended: {text}");
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(120), follow).await;
        return;
    }

    let h = Harness::new();
    let repo = h.local_repo("repo");
    h.init(&repo).await;
    sparse_tree(&h.path("src"));
    let mut agent = Command::new(std::env::current_exe().unwrap())
        .args([
            "killed_agent_leaves_no_restic",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_ENV, h.root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = agent.stdout.take().unwrap();
    let (tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("BACKUP RUNNING") {
                let _ = tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the child agent started its backup");
    let marker = h.path("cache").to_string_lossy().into_owned();
    assert_eq!(processes_with(&marker).len(), 1, "one real restic running");
    let started = children_of(agent.id());
    wait_until("both restic processes", Duration::from_secs(10), || {
        children_of(agent.id()).len() >= 2
    })
    .await;
    let started: Vec<u32> = children_of(agent.id()).into_iter().chain(started).collect();
    agent.kill().unwrap(); // SIGKILL: no cleanup code runs in the agent.
    agent.wait().unwrap();
    wait_until(
        "restic (and the stand-in) to die with the agent",
        Duration::from_secs(10),
        || !started.iter().any(|&pid| alive(pid)),
    )
    .await;
    assert!(processes_with(&marker).is_empty());
}

/// A free port on 127.0.0.1 (bound, then released for rclone).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rclone(std::process::Child);

impl Drop for Rclone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_backend_through_rclone_with_credentials_in_the_url() {
    let h = Harness::new();
    let store = h.path("rclone-store");
    std::fs::create_dir(&store).unwrap();
    let port = free_port();
    let rest_password = "rclone-rest-secret-77";
    let _rclone = Rclone(
        Command::new(rclone_bin())
            .args(["serve", "restic"])
            .arg(&store)
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--user",
                "rmuser",
                "--pass",
                rest_password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("rclone to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let repo = ResticRepository {
        url: format!("rest:http://rmuser:{rest_password}@127.0.0.1:{port}/repo"),
        password: PASSWORD.into(),
        env: BTreeMap::new(),
    };
    let no_repo = h
        .run(JobKind::Snapshots, &repo, ResticOptions::default())
        .await;
    assert_eq!(
        no_repo.finished().error_kind.as_deref(),
        Some(wire::ERROR_REPOSITORY_NOT_FOUND),
        "{}",
        no_repo.log()
    );
    h.init(&repo).await;
    assert!(store.join("repo/config").is_file());
    let src = h.path("src");
    make_tree(&src, 256 * 1024);
    let backup = h
        .run(
            JobKind::Backup,
            &repo,
            backup_options(vec![src.to_string_lossy().into_owned()]),
        )
        .await;
    backup.assert_succeeded();
    let result: BackupResult = backup.result();
    let listing = h
        .run(JobKind::Snapshots, &repo, ResticOptions::default())
        .await;
    listing.assert_succeeded();
    let parts: Vec<JobSnapshots> = listing.of();
    assert_eq!(parts.len(), 1);
    assert!(parts[0].last);
    assert_eq!(parts[0].snapshots.len(), 1);
    assert_eq!(parts[0].snapshots[0].id, result.snapshot_id);
    // The URL's password never leaves the agent either.
    for frames in [&no_repo, &backup, &listing] {
        assert!(!frames.text().contains(rest_password), "{}", frames.text());
    }
}
