//! What the benchmark checks before it believes a number: every agent
//! acknowledged, every HTTP answer a success, every viewer got every line,
//! every download complete, the fleet update one host at a time. Each check
//! returns an error that names what went wrong; the tool exits non-zero on
//! it rather than print a figure for work the server did not do.
use std::collections::HashSet;

use anyhow::{Result, bail, ensure};

/// A 2xx status, or an error quoting the start of the body.
pub fn expect_success(what: &str, status: u16, body: &str) -> Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(http_error(what, status, body))
}

/// The error for an unexpected HTTP status, quoting the start of the body.
pub fn http_error(what: &str, status: u16, body: &str) -> anyhow::Error {
    let snippet: String = body.chars().take(300).collect();
    anyhow::anyhow!("{what}: HTTP {status}: {snippet}")
}

/// Which agents said hello (and got `hello.ack`) in which round.
#[derive(Debug)]
pub struct AckTracker {
    acked: Vec<bool>,
    count: usize,
}

impl AckTracker {
    pub fn new(n: usize) -> Self {
        AckTracker {
            acked: vec![false; n],
            count: 0,
        }
    }

    /// Records agent `idx`; an ack from an agent outside the fleet is a bug.
    /// Returns whether it was new.
    pub fn ack(&mut self, idx: usize) -> Result<bool> {
        let Some(slot) = self.acked.get_mut(idx) else {
            bail!(
                "ack from agent #{idx}, but the fleet has {}",
                self.acked.len()
            );
        };
        let new = !*slot;
        *slot = true;
        self.count += usize::from(new);
        Ok(new)
    }

    pub fn complete(&self) -> bool {
        self.count == self.acked.len()
    }

    /// An error listing (the first few) agents that never got an ack.
    pub fn require_complete(&self, what: &str) -> Result<()> {
        if self.complete() {
            return Ok(());
        }
        let missing: Vec<String> = self
            .acked
            .iter()
            .enumerate()
            .filter(|(_, a)| !**a)
            .take(10)
            .map(|(i, _)| format!("#{i}"))
            .collect();
        bail!(
            "{what}: only {} of {} agents were acknowledged (missing e.g. {})",
            self.count,
            self.acked.len(),
            missing.join(", ")
        )
    }
}

/// A live-log viewer must see every line exactly once, in order: `seqs` are
/// the line numbers it received, `sent` how many the agent sent (1..=sent).
pub fn check_viewer_lines(viewer: usize, seqs: &[u64], sent: u64, ended: bool) -> Result<()> {
    check_viewer_seqs(viewer, "line", seqs, sent, ended)
}

/// A viewer must see every numbered `what` (a line, a progress report)
/// exactly once, in order, 1..=sent, and the stream's `end` event.
pub fn check_viewer_seqs(
    viewer: usize,
    what: &str,
    seqs: &[u64],
    sent: u64,
    ended: bool,
) -> Result<()> {
    for (expected, &s) in (1u64..).zip(seqs.iter()) {
        ensure!(
            s == expected,
            "viewer {viewer}: expected {what} {expected}, got {what} {s} ({} received, {sent} sent)",
            seqs.len()
        );
    }
    ensure!(
        seqs.len() as u64 == sent,
        "viewer {viewer}: received {} of the {sent} {what}s sent",
        seqs.len()
    );
    ensure!(
        ended,
        "viewer {viewer}: the stream never sent its `end` event"
    );
    Ok(())
}

/// A download must have the length the server promised.
pub fn check_download(i: usize, got: u64, expected: u64) -> Result<()> {
    ensure!(
        got == expected,
        "download {i}: received {got} bytes, expected {expected}"
    );
    Ok(())
}

/// One `command.update` seen by the simulated fleet: which host, when (ms
/// since an epoch), and when that host's agent sent its hello at the new
/// version and got it acknowledged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateStep {
    pub host: usize,
    pub command_at: f64,
    pub back: Option<Back>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Back {
    pub hello_at: f64,
    pub acked_at: f64,
}

/// Per-host overhead of a rolling update: from host k's success hello
/// being acknowledged (at the new version) to the next host's
/// `command.update`. Checks that all `n` hosts were updated, each exactly
/// once, one at a time: no host is dispatched before the previous one sent
/// its new hello. (The ack and the next command travel on two sockets, so
/// their arrival order here may differ from the server's by scheduling
/// jitter; such an overhead is a small negative number, kept as measured.)
pub fn rolling_overheads(steps: &[UpdateStep], n: usize) -> Result<Vec<f64>> {
    let mut seen = HashSet::new();
    for s in steps {
        ensure!(
            seen.insert(s.host),
            "host #{} received command.update more than once",
            s.host
        );
    }
    ensure!(
        steps.len() == n,
        "the fleet update sent command.update to {} of {n} hosts",
        steps.len()
    );
    let mut sorted = steps.to_vec();
    sorted.sort_by(|a, b| a.command_at.total_cmp(&b.command_at));
    let mut out = Vec::with_capacity(n.saturating_sub(1));
    for w in sorted.windows(2) {
        let (prev, next) = (w[0], w[1]);
        let Some(back) = prev.back else {
            bail!(
                "host #{} never came back at the new version but host #{} was dispatched",
                prev.host,
                next.host
            );
        };
        ensure!(
            next.command_at >= back.hello_at,
            "host #{} was dispatched {:.1} ms before host #{} said hello at the new version: not one at a time",
            next.host,
            back.hello_at - next.command_at,
            prev.host
        );
        out.push(next.command_at - back.acked_at);
    }
    if let Some(last) = sorted.last() {
        ensure!(
            last.back.is_some(),
            "the last host #{} never came back at the new version",
            last.host
        );
    }
    Ok(out)
}

/// One `command.restic` a simulated agent received in a scheduling wave:
/// which agent, which job, and when relative to the plan's due instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dispatch {
    pub host: usize,
    pub job_id: i64,
    pub after_due_ms: f64,
}

/// Clock slack allowed between the server's due instant and this tool's
/// (both read the same system clock; the tool maps it onto `Instant`).
pub const EARLY_SLACK_MS: f64 = 50.0;

/// A wave of `n` hosts must dispatch exactly one job to each, no job twice,
/// none before the due instant. Returns the last dispatch (ms after due).
pub fn check_wave(d: &[Dispatch], n: usize) -> Result<f64> {
    let mut hosts = HashSet::new();
    let mut jobs = HashSet::new();
    for x in d {
        ensure!(
            x.host < n,
            "a job went to agent #{}, outside the fleet of {n}",
            x.host
        );
        ensure!(
            hosts.insert(x.host),
            "agent #{} received more than one job in the wave",
            x.host
        );
        ensure!(
            jobs.insert(x.job_id),
            "job {} was dispatched to two agents",
            x.job_id
        );
        ensure!(
            x.after_due_ms >= -EARLY_SLACK_MS,
            "agent #{} received job {} {:.0} ms before the plan was due",
            x.host,
            x.job_id,
            -x.after_due_ms
        );
    }
    ensure!(d.len() == n, "the wave dispatched {} of {n} jobs", d.len());
    Ok(d.iter().map(|x| x.after_due_ms).fold(0.0, f64::max))
}

/// Runs per bucket of a splayed schedule.
#[derive(Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<usize>,
    pub busiest: usize,
    pub average: f64,
}

/// Buckets the stored next runs of one plan (ms) into `bucket`-wide slots
/// of the `window` starting at `t0`. Every one of the `n` hosts must have a
/// run, inside the window.
pub fn splay_histogram(
    runs: &[i64],
    t0: i64,
    window: i64,
    bucket: i64,
    n: usize,
) -> Result<Histogram> {
    ensure!(bucket > 0 && window >= bucket, "bad histogram shape");
    ensure!(
        runs.len() == n,
        "the scheduler stored {} runs for {n} hosts",
        runs.len()
    );
    let slots = (window / bucket) as usize;
    let mut buckets = vec![0usize; slots];
    for &r in runs {
        let off = r - t0;
        ensure!(
            (0..window).contains(&off),
            "a run is stored {:.1} s from the plan's time, outside its {} s splay",
            off as f64 / 1e3,
            window / 1000
        );
        buckets[((off / bucket) as usize).min(slots - 1)] += 1;
    }
    let busiest = buckets.iter().copied().max().unwrap_or(0);
    Ok(Histogram {
        average: n as f64 / slots as f64,
        busiest,
        buckets,
    })
}

/// The dashboard's health tiles as shown (text of each tile's value).
pub struct HealthCounts {
    pub stale: String,
    pub failing: String,
    pub unprotected: String,
}

/// The tiles must count what was seeded.
pub fn check_health_tiles(
    c: &HealthCounts,
    stale: i64,
    failing: i64,
    unprotected: i64,
) -> Result<()> {
    for (what, shown, want) in [
        ("stale", &c.stale, stale),
        ("failing", &c.failing, failing),
        ("unprotected", &c.unprotected, unprotected),
    ] {
        ensure!(
            shown.trim() == want.to_string(),
            "the {what} tile shows {shown:?}, {want} were seeded"
        );
    }
    Ok(())
}

/// A stripped ELF binary has no `.symtab` section (its name would sit in
/// the section-name table).
pub fn is_stripped(elf: &[u8]) -> bool {
    const NEEDLE: &[u8] = b".symtab\0";
    elf.starts_with(b"\x7fELF") && !elf.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_are_refused_with_the_body() {
        assert!(expect_success("x", 200, "").is_ok());
        assert!(expect_success("x", 204, "").is_ok());
        let e = expect_success("GET /", 500, "database is locked")
            .unwrap_err()
            .to_string();
        assert!(e.contains("500") && e.contains("database is locked"), "{e}");
        assert!(
            expect_success("x", 302, "").is_err(),
            "a redirect is not a page"
        );
        assert!(expect_success("x", 401, "").is_err());
    }

    #[test]
    fn ack_tracker_counts_each_agent_once_and_names_the_missing() {
        let mut t = AckTracker::new(3);
        assert!(t.ack(0).unwrap());
        assert!(!t.ack(0).unwrap(), "a second ack is not a new one");
        assert!(t.ack(2).unwrap());
        let e = t.require_complete("connect").unwrap_err().to_string();
        assert!(e.contains("2 of 3") && e.contains("#1"), "{e}");
        assert!(t.ack(7).is_err(), "unknown agent");
        t.ack(1).unwrap();
        assert!(t.require_complete("connect").is_ok());
    }

    #[test]
    fn a_viewer_missing_reordering_or_duplicating_lines_fails() {
        assert!(check_viewer_lines(0, &[1, 2, 3], 3, true).is_ok());
        let short = check_viewer_lines(4, &[1, 2], 3, true)
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("viewer 4") && short.contains("2 of the 3"),
            "{short}"
        );
        assert!(check_viewer_lines(0, &[1, 3, 2], 3, true).is_err());
        assert!(check_viewer_lines(0, &[1, 2, 2, 3], 3, true).is_err());
        assert!(check_viewer_lines(0, &[1, 2, 3, 4], 3, true).is_err());
        assert!(
            check_viewer_lines(0, &[1, 2, 3], 3, false).is_err(),
            "no end event"
        );
        let e = check_viewer_seqs(1, "progress report", &[1, 3], 3, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected progress report 2"), "{e}");
    }

    #[test]
    fn a_short_download_fails() {
        assert!(check_download(0, 10, 10).is_ok());
        assert!(
            check_download(3, 9, 10)
                .unwrap_err()
                .to_string()
                .contains("download 3")
        );
    }

    fn step(host: usize, command_at: f64, back_at: f64) -> UpdateStep {
        UpdateStep {
            host,
            command_at,
            back: Some(Back {
                hello_at: back_at - 0.5,
                acked_at: back_at,
            }),
        }
    }

    #[test]
    fn rolling_overheads_measure_success_to_next_dispatch() {
        let steps = [step(1, 10.0, 12.0), step(0, 0.0, 5.0), step(2, 20.0, 21.0)];
        assert_eq!(rolling_overheads(&steps, 3).unwrap(), vec![5.0, 8.0]);
        // The next command read a hair before the ack (two sockets): allowed,
        // as long as the hello went out first.
        let jitter = [step(0, 0.0, 5.0), step(1, 4.9, 6.0)];
        let o = rolling_overheads(&jitter, 2).unwrap();
        assert!((o[0] + 0.1).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn rolling_checks_refuse_a_bad_run() {
        // A host missing.
        let e = rolling_overheads(&[step(0, 0.0, 1.0)], 2).unwrap_err();
        assert!(e.to_string().contains("1 of 2"), "{e}");
        // Dispatched twice.
        assert!(rolling_overheads(&[step(0, 0.0, 1.0), step(0, 2.0, 3.0)], 2).is_err());
        // Overlap: the next host went before the previous said hello.
        assert!(rolling_overheads(&[step(0, 0.0, 5.0), step(1, 3.0, 6.0)], 2).is_err());
        // A host that never came back.
        let lost = UpdateStep {
            host: 1,
            command_at: 3.0,
            back: None,
        };
        assert!(rolling_overheads(&[step(0, 0.0, 1.0), lost], 2).is_err());
    }

    fn dispatch(host: usize, job_id: i64, after_due_ms: f64) -> Dispatch {
        Dispatch {
            host,
            job_id,
            after_due_ms,
        }
    }

    #[test]
    fn a_wave_dispatches_each_host_once_after_the_due_instant() {
        let ok = [
            dispatch(0, 10, 5.0),
            dispatch(2, 12, 900.0),
            dispatch(1, 11, -10.0),
        ];
        assert_eq!(check_wave(&ok, 3).unwrap(), 900.0);
        // A host left out.
        let e = check_wave(&ok[..2], 3).unwrap_err().to_string();
        assert!(e.contains("2 of 3"), "{e}");
        // A host served twice, a job sent twice, a job sent early.
        assert!(check_wave(&[dispatch(0, 1, 1.0), dispatch(0, 2, 1.0)], 2).is_err());
        assert!(check_wave(&[dispatch(0, 1, 1.0), dispatch(1, 1, 1.0)], 2).is_err());
        let early = check_wave(&[dispatch(0, 1, -500.0)], 1).unwrap_err();
        assert!(early.to_string().contains("before"), "{early}");
        assert!(
            check_wave(&[dispatch(5, 1, 1.0)], 1).is_err(),
            "unknown agent"
        );
    }

    #[test]
    fn splay_histograms_bucket_per_minute_and_refuse_missing_or_outside_runs() {
        let t0 = 1_000_000;
        // 4 hosts over a 3-minute window: two in the first minute.
        let runs = [t0, t0 + 59_999, t0 + 60_000, t0 + 179_999];
        let h = splay_histogram(&runs, t0, 180_000, 60_000, 4).unwrap();
        assert_eq!(h.buckets, vec![2, 1, 1]);
        assert_eq!(h.busiest, 2);
        assert!((h.average - 4.0 / 3.0).abs() < 1e-9);
        assert!(
            splay_histogram(&runs, t0, 180_000, 60_000, 5).is_err(),
            "a host without a run"
        );
        assert!(
            splay_histogram(&[t0 - 1], t0, 180_000, 60_000, 1).is_err(),
            "before the time"
        );
        assert!(
            splay_histogram(&[t0 + 180_000], t0, 180_000, 60_000, 1).is_err(),
            "after the window"
        );
    }

    #[test]
    fn health_tiles_must_show_the_seeded_counts() {
        let c = HealthCounts {
            stale: " 1000 ".into(),
            failing: "500".into(),
            unprotected: "0".into(),
        };
        assert!(check_health_tiles(&c, 1000, 500, 0).is_ok());
        let e = check_health_tiles(&c, 1000, 499, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("failing"), "{e}");
    }

    #[test]
    fn stripped_elf_detection() {
        let mut elf = b"\x7fELF....".to_vec();
        assert!(is_stripped(&elf));
        elf.extend_from_slice(b"\0.text\0.symtab\0.strtab\0");
        assert!(!is_stripped(&elf));
        assert!(!is_stripped(b"#!/bin/sh\n"), "not an ELF file");
    }
}
