//! Plan pages: the list with the add form (admins), one plan with its
//! covered hosts (next run, last result, Back up now) and its edit form,
//! the live preview of the next five runs, and the host page's Backups
//! section (loaded by htmx, so the host page itself stays as it is).
use maud::{Markup, html};

use super::{Nav, components::error_banner, jobs::status_pill, page};
use crate::{
    clock, routes,
    store::{
        hosts::Host,
        jobs::Job,
        plans::Plan,
        repositories::Repository,
        users::{Role, User},
    },
};

/// One covered host of a plan as the pages show it.
pub struct Covered {
    pub host: Host,
    pub next_run_at: Option<i64>,
    pub last_job: Option<Job>,
}

fn when(ms: Option<i64>) -> Markup {
    html! {
        @match ms {
            Some(t) => time datetime=(clock::rfc3339(t)) { (clock::rfc3339(t)) },
            None => span class="text-gray-400" { "—" },
        }
    }
}

fn last_result(j: Option<&Job>) -> Markup {
    html! {
        @match j {
            Some(j) => span class="inline-flex items-center gap-2" {
                a class="link" href=(routes::job(j.id)) { "#" (j.id) }
                (status_pill(j.status))
                @if j.warning { span class="pill-queued" title="some files could not be read" { "warning" } }
                (when(j.finished_at))
            },
            None => span class="text-gray-400" { "never run" },
        }
    }
}

/// The next five runs of a schedule, or why it does not parse.
pub fn preview(result: &Result<(Vec<i64>, String), String>) -> Markup {
    html! {
        div id="schedule-preview" data-testid="schedule-preview" class="text-sm" {
            @match result {
                Ok((runs, tz)) => {
                    p class="label" { "Next runs (" (tz) ")" }
                    ol class="list-decimal ml-5" {
                        @for r in runs { li data-testid="preview-run" { (clock::in_zone(*r, tz)) } }
                    }
                    @if runs.is_empty() { p class="text-gray-500" { "This schedule never runs." } }
                }
                Err(e) => p class="text-red-700" data-testid="preview-error" { (e) },
            }
        }
    }
}

fn lines(v: &[String]) -> String {
    v.join("\n")
}

/// The create and edit form's fields.
fn plan_fields(p: Option<&Plan>, repos: &[Repository], hosts: &[Host], server_tz: &str) -> Markup {
    let r = p.map(|p| &p.retention);
    let num = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
    html! {
        div class="grid md:grid-cols-2 gap-3" {
            div { label class="label" for="name" { "Name" }
                input class="input" id="name" name="name" required value=[p.map(|p| p.name.as_str())]; }
            div { label class="label" for="repository_id" { "Repository" }
                select class="input" id="repository_id" name="repository_id" required {
                    @for r in repos { option value=(r.id) selected[p.is_some_and(|p| p.repository_id == r.id)] { (r.name) } }
                }
            }
            div { label class="label" for="paths" { "Paths (one per line, absolute)" }
                textarea class="input font-mono" id="paths" name="paths" rows="3" required placeholder="/etc\n/srv/data" { (p.map(|p| lines(&p.paths)).unwrap_or_default()) } }
            div { label class="label" for="excludes" { "Excludes (one per line)" }
                textarea class="input font-mono" id="excludes" name="excludes" rows="3" placeholder="*.tmp" { (p.map(|p| lines(&p.excludes)).unwrap_or_default()) } }
            div { label class="label" for="tags" { "Tags (one per line)" }
                textarea class="input font-mono" id="tags" name="tags" rows="2" { (p.map(|p| lines(&p.tags)).unwrap_or_default()) } }
            div { label class="label" for="labels" { "Cover hosts with any of these labels (one per line)" }
                textarea class="input font-mono" id="labels" name="labels" rows="2" { (p.map(|p| lines(&p.labels)).unwrap_or_default()) } }
            div {
                label class="label" for="schedule" { "Schedule (cron, @daily, @every 6h)" }
                input class="input font-mono" id="schedule" name="schedule" required value=(p.map_or("@daily", |p| p.schedule.as_str()))
                    hx-get=(routes::PLAN_PREVIEW) hx-trigger="input changed delay:300ms, load" hx-target="#schedule-preview" hx-swap="outerHTML" hx-include="#schedule, #timezone";
                label class="label mt-2" for="timezone" { "Time zone (IANA)" }
                input class="input" id="timezone" name="timezone" value=(p.map_or(server_tz, |p| p.timezone.as_str()))
                    hx-get=(routes::PLAN_PREVIEW) hx-trigger="input changed delay:300ms" hx-target="#schedule-preview" hx-swap="outerHTML" hx-include="#schedule, #timezone";
                label class="label mt-2" for="splay_secs" { "Splay (seconds; each host starts at its own offset)" }
                input class="input" id="splay_secs" name="splay_secs" type="number" min="0" value=(p.map_or(0, |p| p.splay_secs));
            }
            div { div id="schedule-preview" data-testid="schedule-preview" {} }
            fieldset class="md:col-span-2" data-testid="plan-hosts" {
                legend class="label" { "Hosts" }
                div class="flex flex-wrap gap-4" {
                    @for h in hosts {
                        label class="inline-flex items-center gap-1 text-sm" {
                            input type="checkbox" name="hosts" value=(h.id) checked[p.is_some_and(|p| p.hosts.contains(&h.id))];
                            (h.name)
                            @if !h.labels.is_empty() { span class="text-xs text-gray-500" { " (" (h.labels.join(", ")) ")" } }
                        }
                    }
                    @if hosts.is_empty() { span class="text-sm text-gray-500" { "No hosts yet." } }
                }
            }
            fieldset class="md:col-span-2" {
                legend class="label" { "Retention (empty keeps everything)" }
                div class="grid grid-cols-3 md:grid-cols-7 gap-2" {
                    @for (name, label, v) in [
                        ("keep_last", "last", r.and_then(|r| r.keep_last)),
                        ("keep_hourly", "hourly", r.and_then(|r| r.keep_hourly)),
                        ("keep_daily", "daily", r.and_then(|r| r.keep_daily)),
                        ("keep_weekly", "weekly", r.and_then(|r| r.keep_weekly)),
                        ("keep_monthly", "monthly", r.and_then(|r| r.keep_monthly)),
                        ("keep_yearly", "yearly", r.and_then(|r| r.keep_yearly)),
                    ] {
                        div { label class="label" for=(name) { "keep " (label) }
                            input class="input" id=(name) name=(name) type="number" min="0" value=(num(v)); }
                    }
                    div { label class="label" for="keep_within" { "keep within" }
                        input class="input" id="keep_within" name="keep_within" placeholder="30d" value=[r.and_then(|r| r.keep_within.as_deref())]; }
                }
            }
            div class="flex items-center gap-2" {
                input type="checkbox" id="forget_after_backup" name="forget_after_backup" value="on" checked[p.is_some_and(|p| p.forget_after_backup)];
                label for="forget_after_backup" { "Forget after each backup (that host's snapshots)" }
            }
            div class="flex items-center gap-2" {
                input type="checkbox" id="enabled" name="enabled" value="on" checked[p.is_none_or(|p| p.enabled)];
                label for="enabled" { "Enabled" }
            }
        }
    }
}

pub struct ListView<'a> {
    pub user: &'a User,
    pub plans: &'a [Plan],
    pub repos: &'a [Repository],
    pub hosts: &'a [Host],
    pub server_tz: &'a str,
    pub error: Option<&'a str>,
}

pub fn list_page(v: &ListView) -> Markup {
    let repo_name = |id: i64| {
        v.repos
            .iter()
            .find(|r| r.id == id)
            .map_or_else(|| format!("#{id}"), |r| r.name.clone())
    };
    page(
        "Plans",
        v.user,
        Nav::Plans,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Backup plans" }
            @if let Some(e) = v.error { div class="mb-4" { (error_banner(e)) } }
            div class="card p-0 overflow-x-auto mb-6" {
                table class="table-base" {
                    thead { tr { th { "Name" } th { "Repository" } th { "Schedule" } th { "Covers" } th { "Retention" } th { "State" } } }
                    tbody {
                        @for p in v.plans {
                            tr data-testid="plan-row" {
                                td { a class="link" href=(routes::plan(p.id)) { (p.name) } }
                                td { a class="link" href=(routes::repository(p.repository_id)) { (repo_name(p.repository_id)) } }
                                td class="font-mono text-xs" { (p.schedule) " · " (p.timezone) }
                                td class="text-xs" {
                                    @if !p.hosts.is_empty() { (p.hosts.len()) " host(s)" }
                                    @if !p.labels.is_empty() { " labels: " (p.labels.join(", ")) }
                                }
                                td class="text-xs" { (retention_text(p)) }
                                td { @if p.enabled { "enabled" } @else { span class="text-gray-500" { "disabled" } } }
                            }
                        }
                        @if v.plans.is_empty() { tr { td colspan="6" class="text-center text-gray-500 py-6" { "No plans yet." } } }
                    }
                }
            }
            @if v.user.role == Role::Admin {
                section class="card" {
                    h2 class="font-semibold mb-3" { "Add plan" }
                    @if v.repos.is_empty() {
                        p class="text-sm text-gray-600" { "Add a " a class="link" href=(routes::REPOSITORIES_PAGE) { "repository" } " first." }
                    } @else {
                        form method="post" action=(routes::PLANS_PAGE) class="space-y-3" data-testid="plan-create-form" {
                            (plan_fields(None, v.repos, v.hosts, v.server_tz))
                            button class="btn btn-primary" type="submit" data-testid="plan-create" { "Add plan" }
                        }
                    }
                }
            }
        },
    )
}

fn retention_text(p: &Plan) -> String {
    let r = &p.retention;
    let mut parts = Vec::new();
    for (n, v) in [
        ("last", r.keep_last),
        ("hourly", r.keep_hourly),
        ("daily", r.keep_daily),
        ("weekly", r.keep_weekly),
        ("monthly", r.keep_monthly),
        ("yearly", r.keep_yearly),
    ] {
        if let Some(v) = v {
            parts.push(format!("{n} {v}"));
        }
    }
    if let Some(w) = &r.keep_within {
        parts.push(format!("within {w}"));
    }
    if parts.is_empty() {
        "keep all".into()
    } else {
        parts.join(", ")
    }
}

pub struct DetailView<'a> {
    pub user: &'a User,
    pub plan: &'a Plan,
    pub repos: &'a [Repository],
    pub hosts: &'a [Host],
    pub covered: &'a [Covered],
    pub server_tz: &'a str,
    pub error: Option<&'a str>,
}

fn run_button(plan_id: i64, host_id: Option<i64>, label: &str) -> Markup {
    html! {
        form method="post" action=(routes::plan_run(plan_id)) class="inline" {
            @if let Some(h) = host_id { input type="hidden" name="host_id" value=(h); }
            button class="btn" type="submit" data-testid="backup-now" { (label) }
        }
    }
}

pub fn detail_page(v: &DetailView) -> Markup {
    let p = v.plan;
    let operator = v.user.role >= Role::Operator;
    let repo = v.repos.iter().find(|r| r.id == p.repository_id);
    page(
        &p.name,
        v.user,
        Nav::Plans,
        html! {
            div class="flex flex-wrap items-center gap-3 mb-4" {
                h1 class="text-2xl font-semibold" data-testid="plan-name" { (p.name) }
                @if !p.enabled { span class="pill-offline" { "disabled" } }
                @if operator && !v.covered.is_empty() { (run_button(p.id, None, "Back up now (all hosts)")) }
            }
            @if let Some(e) = v.error { div class="mb-4" { (error_banner(e)) } }
            section class="card mb-6" {
                dl class="grid grid-cols-2 md:grid-cols-4 gap-4 text-sm" {
                    div { dt class="label" { "Repository" } dd { @match repo { Some(r) => a class="link" href=(routes::repository(r.id)) { (r.name) }, None => "—" } } }
                    div { dt class="label" { "Schedule" } dd class="font-mono" data-testid="plan-schedule" { (p.schedule) " · " (p.timezone) @if p.splay_secs > 0 { " · splay " (p.splay_secs) " s" } } }
                    div { dt class="label" { "Paths" } dd class="font-mono text-xs" { (p.paths.join(", ")) } }
                    div { dt class="label" { "Retention" } dd { (retention_text(p)) @if p.forget_after_backup { " · after each backup" } } }
                }
            }
            section class="mb-6" {
                h2 class="font-semibold mb-2" { "Covered hosts" }
                div class="card p-0 overflow-x-auto" {
                    table class="table-base" data-testid="covered-hosts" {
                        thead { tr { th { "Host" } th { "Labels" } th { "Next run" } th { "Last run" } th {} } }
                        tbody {
                            @for c in v.covered {
                                tr data-testid="covered-row" {
                                    td { a class="link" href=(routes::host(c.host.id)) { (c.host.name) } }
                                    td class="text-xs" { (c.host.labels.join(", ")) }
                                    td data-testid="next-run" { (when(c.next_run_at)) }
                                    td data-testid="last-run" { (last_result(c.last_job.as_ref())) }
                                    td { @if operator { (run_button(p.id, Some(c.host.id), "Back up now")) } }
                                }
                            }
                            @if v.covered.is_empty() { tr { td colspan="5" class="text-center text-gray-500 py-6" { "This plan covers no host: tick hosts or give labels below." } } }
                        }
                    }
                }
            }
            @if v.user.role == Role::Admin {
                section class="card mb-6" {
                    h2 class="font-semibold mb-3" { "Edit" }
                    form method="post" action=(routes::plan(p.id)) class="space-y-3" data-testid="plan-edit-form" {
                        (plan_fields(Some(p), v.repos, v.hosts, v.server_tz))
                        button class="btn" type="submit" { "Save" }
                    }
                    form method="post" action=(routes::plan_delete(p.id)) class="mt-4" {
                        button class="btn btn-danger" type="submit" { "Delete plan" }
                        span class="text-xs text-gray-500 ml-2" { "Its snapshots stay in the repository." }
                    }
                }
            }
        },
    )
}

/// The host page's Backups section: the plans covering the host, their
/// next and last run, Back up now, and the host's labels.
pub fn host_section(user: &User, host: &Host, rows: &[(Plan, Covered)]) -> Markup {
    let operator = user.role >= Role::Operator;
    html! {
        section class="mt-6" id="host-plans" data-testid="host-plans" {
            h2 class="font-semibold mb-2" { "Backups" }
            div class="card p-0 overflow-x-auto" {
                table class="table-base" {
                    thead { tr { th { "Plan" } th { "Next run" } th { "Last run" } th {} } }
                    tbody {
                        @for (p, c) in rows {
                            tr data-testid="host-plan-row" {
                                td { a class="link" href=(routes::plan(p.id)) { (p.name) } }
                                td { (when(c.next_run_at)) }
                                td { (last_result(c.last_job.as_ref())) }
                                td { @if operator { (run_button(p.id, Some(host.id), "Back up now")) } }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="4" class="text-center text-gray-500 py-6" { "No plan covers this host." } } }
                    }
                }
            }
            div class="mt-2 text-sm flex flex-wrap items-center gap-2" {
                span class="label" { "Labels" }
                @if user.role == Role::Admin {
                    form method="post" action=(routes::host_labels(host.id)) class="flex gap-2" {
                        input class="input" name="labels" value=(host.labels.join(", ")) placeholder="db, eu" aria-label="labels";
                        button class="btn" type="submit" { "Save labels" }
                    }
                } @else {
                    span data-testid="host-labels" { @if host.labels.is_empty() { "none" } @else { (host.labels.join(", ")) } }
                }
            }
        }
    }
}

/// Where the host page loads its Backups section.
pub fn host_section_slot(host_id: i64) -> Markup {
    html! {
        div hx-get=(routes::host_plans(host_id)) hx-trigger="load" hx-swap="outerHTML" {
            noscript { a class="link" href=(routes::host_plans(host_id)) { "Backups of this host" } }
        }
    }
}
