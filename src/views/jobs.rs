//! Job pages: the jobs list, the live job page (log streamed over SSE) and
//! the pieces the stream sends (log lines, the status block).
use maud::{Markup, html};

use super::{Nav, components::pagination, page};
use crate::{
    clock, routes,
    store::{
        hosts::Host,
        jobs::{Job, JobKind, JobStatus, LogLine},
        users::User,
    },
};

pub fn status_pill(s: JobStatus) -> Markup {
    let cls = match s {
        JobStatus::Queued => "pill-queued",
        JobStatus::Running => "pill-running",
        JobStatus::Succeeded => "pill-succeeded",
        JobStatus::Failed => "pill-failed",
        JobStatus::Cancelled => "pill-cancelled",
        JobStatus::Skipped => "pill-skipped",
    };
    super::components::pill(cls, "job-status", s.as_str())
}

fn when(ms: Option<i64>) -> Markup {
    html! {
        @match ms {
            Some(t) => time datetime=(clock::rfc3339(t)) { (clock::rfc3339(t)) },
            None => span class="text-gray-400" { "—" },
        }
    }
}

fn duration(job: &Job, now_ms: i64) -> String {
    match job.started_at {
        None => "—".into(),
        Some(s) => {
            let secs = (job.finished_at.unwrap_or(now_ms) - s).max(0) / 1000;
            if secs < 60 {
                format!("{secs} s")
            } else {
                format!("{} min {} s", secs / 60, secs % 60)
            }
        }
    }
}

fn actor(job: &Job) -> String {
    if job.actor_name.is_empty() {
        job.actor_kind.as_str().to_string()
    } else {
        format!("{} ({})", job.actor_name, job.actor_kind)
    }
}

/// Bytes as people read them (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A running restic job's progress bar (bytes, files, time left); swapped
/// in live by the job page's stream.
pub fn progress_bar(p: Option<&agent::wire::JobProgress>) -> Markup {
    html! {
        div data-testid="job-progress" {
            @match p {
                None => p class="text-sm text-gray-500" { "Waiting for the first progress report…" },
                Some(p) => {
                    @let pct = p.percent.clamp(0.0, 100.0);
                    // A <progress> element: the page's CSP allows no inline style.
                    progress class="job-progress w-full h-3" max="100" value=(format!("{pct:.1}")) data-testid="job-progress-fill" { (format!("{pct:.0}%")) }
                    p class="text-sm text-gray-600 mt-2" data-testid="job-progress-text" {
                        (format!("{pct:.1}%")) " · " (bytes(p.bytes_done)) " of " (bytes(p.total_bytes))
                        " · " (p.files_done) " of " (p.total_files) " files"
                        @if let Some(s) = p.seconds_remaining { " · about " (eta(s)) " left" }
                    }
                }
            }
        }
    }
}

fn eta(secs: u64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs.div_ceil(60))
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

/// What a finished restic job produced, in words.
fn result_summary(job: &Job) -> Option<Markup> {
    let r = job.result.as_ref()?;
    let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let text = match job.kind {
        JobKind::Backup => format!(
            "snapshot {} · {} new, {} changed, {} unchanged files · {} added of {} processed",
            r.get("snapshot_id")
                .and_then(|v| v.as_str())
                .map(|s| &s[..s.len().min(8)])
                .unwrap_or("?"),
            n("files_new"),
            n("files_changed"),
            n("files_unmodified"),
            bytes(n("data_added")),
            bytes(n("total_bytes_processed")),
        ),
        JobKind::Forget => format!(
            "{} snapshots removed, {} kept",
            r.get("removed")
                .and_then(|v| v.as_array())
                .map_or(0, |a| a.len()),
            n("kept")
        ),
        JobKind::Check => format!("{} errors", n("errors")),
        JobKind::Restore => format!(
            "{} files, {} restored",
            n("files_restored"),
            bytes(n("bytes_restored"))
        ),
        JobKind::Stats => format!(
            "{} in {} files",
            bytes(n("total_size")),
            n("total_file_count")
        ),
        _ => return None,
    };
    Some(html! { p class="mt-4 text-sm" data-testid="job-result" { (text) } })
}

/// Status, timings and error: rendered in the page and re-sent live.
pub fn job_summary(job: &Job, now_ms: i64) -> Markup {
    html! {
        dl class="grid grid-cols-2 md:grid-cols-4 gap-4" {
            div { dt class="label" { "Status" } dd {
                (status_pill(job.status))
                @if job.warning { " " span class="pill-pending" data-testid="job-warning" title="restic could not read some files; the snapshot was written. See the log." { "warning" } }
            } }
            div { dt class="label" { "Started" } dd { (when(job.started_at)) } }
            div { dt class="label" { "Finished" } dd { (when(job.finished_at)) } }
            div { dt class="label" { "Duration" } dd { (duration(job, now_ms)) } }
        }
        @if let Some(e) = &job.error {
            div class="banner-error mt-4" role="alert" data-testid="job-error" { (e) }
        }
        @if let Some(r) = result_summary(job) { (r) }
    }
}

pub fn log_line(l: &LogLine) -> Markup {
    let cls = match l.stream.as_str() {
        "stderr" => "text-red-300",
        "system" => "text-sky-300",
        _ => "text-slate-100",
    };
    html! {
        div class=(format!("log-line whitespace-pre-wrap break-all {cls}")) data-pos=(l.pos) data-seq=(l.seq) {
            span class="text-slate-500 select-none mr-2" { (clock::rfc3339(l.ts).get(11..19).unwrap_or("")) }
            (l.data.trim_end_matches('\n'))
        }
    }
}

pub fn job_page(
    user: &User,
    job: &Job,
    host: Option<&Host>,
    lines: &[LogLine],
    progress: Option<&agent::wire::JobProgress>,
    now_ms: i64,
) -> Markup {
    let last = lines.last().map(|l| l.pos).unwrap_or(0);
    let live = !job.status.is_terminal();
    page(
        &format!("Job {}", job.id),
        user,
        Nav::Jobs,
        html! {
            div class="flex flex-wrap items-baseline gap-3 mb-4" {
                h1 class="text-2xl font-semibold" { "Job " (job.id) " · " (job.kind.as_str()) }
                @if let Some(h) = host { a class="link" href=(routes::host(h.id)) { (h.name) } }
                span class="text-sm text-gray-500" { "by " (actor(job)) " · created " (clock::rfc3339(job.created_at)) }
                @if live && job.kind.is_restic() && user.role >= crate::store::users::Role::Operator {
                    form method="post" action=(routes::job_cancel(job.id)) class="ml-auto" {
                        button class="btn btn-danger" type="submit" data-testid="job-cancel" { "Cancel" }
                    }
                }
            }
            div hx-ext="sse" sse-connect=[live.then(|| routes::job_events_after(job.id, last))] sse-close="end" {
                section class="card mb-4" id="job-summary" sse-swap="status" { (job_summary(job, now_ms)) }
                @if live && job.kind.is_restic() {
                    section class="card mb-4" id="job-progress" sse-swap="progress" { (progress_bar(progress)) }
                }
                section class="card p-0" {
                    div class="flex items-center justify-between px-4 py-2 border-b text-sm text-gray-600" {
                        span { "Log" }
                        @if live { span data-testid="live-indicator" { "● live" } }
                    }
                    div id="job-log" class="bg-slate-900 font-mono text-xs p-3 h-[32rem] overflow-y-auto rounded-b" sse-swap="line" hx-swap="beforeend" data-autoscroll="true" {
                        @for l in lines { (log_line(l)) }
                        @if lines.is_empty() && !live {
                            @if job.log_lines > 0 {
                                // The lines were counted as they came: they are gone now.
                                div class="text-slate-500" data-testid="log-purged" { "The log was removed by the retention purge (see --retention-days)." }
                            } @else {
                                div class="text-slate-500" { "No output." }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub struct JobsView<'a> {
    pub user: &'a User,
    pub jobs: &'a [(Job, String)],
    pub host_id: Option<i64>,
    pub kind: Option<JobKind>,
    pub status: Option<JobStatus>,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
}

fn jobs_href(v: &JobsView, offset: u64) -> String {
    let mut q = vec![];
    if let Some(h) = v.host_id {
        q.push(format!("host_id={h}"));
    }
    if let Some(k) = v.kind {
        q.push(format!("kind={k}"));
    }
    if let Some(s) = v.status {
        q.push(format!("status={s}"));
    }
    if offset > 0 {
        q.push(format!("offset={offset}"));
    }
    if q.is_empty() {
        routes::JOBS_PAGE.into()
    } else {
        format!("{}?{}", routes::JOBS_PAGE, q.join("&"))
    }
}

/// A compact jobs table, shared by the jobs page and the host page.
pub fn jobs_table(jobs: &[(Job, String)], now_ms: i64) -> Markup {
    html! {
        table class="table-base" {
            thead { tr { th { "Job" } th { "Host" } th { "Kind" } th { "Status" } th { "Created" } th { "Duration" } } }
            tbody {
                @for (j, host) in jobs {
                    tr data-testid="job-row" {
                        td { a class="link" href=(routes::job(j.id)) { "#" (j.id) } }
                        td { a class="link" href=(routes::host(j.host_id)) { (host) } }
                        td { (j.kind.as_str()) }
                        td { (status_pill(j.status)) }
                        td { (clock::rfc3339(j.created_at)) }
                        td { (duration(j, now_ms)) }
                    }
                }
                @if jobs.is_empty() { tr { td colspan="6" class="text-center text-gray-500 py-6" { "No jobs." } } }
            }
        }
    }
}

pub fn jobs_page(v: &JobsView, now_ms: i64) -> Markup {
    let select = |name: &str, options: Vec<&str>, current: Option<&str>| {
        html! {
            select class="input" name=(name) id=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[current == Some(o)] { (o) } }
            }
        }
    };
    page(
        "Jobs",
        v.user,
        Nav::Jobs,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Jobs" }
            form method="get" action=(routes::JOBS_PAGE) class="flex flex-wrap items-end gap-3 mb-4" {
                @if let Some(h) = v.host_id { input type="hidden" name="host_id" value=(h); }
                div { label class="label" for="kind" { "Kind" } (select("kind", JobKind::ALL.iter().map(|k| k.as_str()).collect(), v.kind.map(|k| k.as_str()))) }
                div { label class="label" for="status" { "Status" } (select("status", JobStatus::ALL.iter().map(|s| s.as_str()).collect(), v.status.map(|s| s.as_str()))) }
                button class="btn" type="submit" { "Filter" }
            }
            div class="card p-0 overflow-x-auto" { (jobs_table(v.jobs, now_ms)) }
            (pagination(v.offset, v.limit, v.total, |o| jobs_href(v, o)))
        },
    )
}
