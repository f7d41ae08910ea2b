//! Repository pages: the list with the add form (admins), and one
//! repository with its settings form, job buttons, recent jobs and indexed
//! snapshots. Secrets never appear: the password field says whether one is
//! set, env rows show names with empty values.
use maud::{Markup, html};

use super::{
    Nav,
    components::error_banner,
    jobs::{bytes, jobs_table},
    page,
};
use crate::{
    clock, routes,
    store::{
        hosts::Host,
        jobs::Job,
        repositories::Repository,
        snapshots::Snapshot,
        users::{Role, User},
    },
};

/// Empty env rows offered for new variables.
const SPARE_ENV_ROWS: usize = 2;

fn kind_badge(local: bool) -> Markup {
    html! {
        @if local {
            span class="pill-offline" data-testid="repo-kind" title="A path on each host that uses it: everything about it is per host" { "local" }
        } @else {
            span class="pill-online" data-testid="repo-kind" title="One repository every host using it writes to" { "shared" }
        }
    }
}

fn env_rows(keys: &[String]) -> Markup {
    html! {
        fieldset class="space-y-2" data-testid="env-rows" {
            legend class="label" { "Environment (e.g. AWS_ACCESS_KEY_ID)" }
            @for k in keys {
                div class="flex gap-2" {
                    input class="input w-1/3" name="env_key" value=(k) aria-label="variable name";
                    input class="input flex-1" name="env_value" type="password" autocomplete="off"
                        placeholder="set — leave empty to keep" aria-label=(format!("value of {k}"));
                }
            }
            @for _ in 0..SPARE_ENV_ROWS {
                div class="flex gap-2" {
                    input class="input w-1/3" name="env_key" placeholder="NAME" aria-label="variable name";
                    input class="input flex-1" name="env_value" type="password" autocomplete="off" placeholder="value" aria-label="value";
                }
            }
            p class="text-xs text-gray-500" { "Values are stored encrypted and never shown again. Clear a name to remove it." }
        }
    }
}

fn settings_fields(r: Option<&Repository>, hosts: &[Host]) -> Markup {
    let schedule = r.map_or("0 3 * * *", |r| r.maintenance_schedule.as_str());
    html! {
        details class="mt-2" open[r.is_some()] {
            summary class="cursor-pointer text-sm text-gray-600" { "Maintenance" }
            div class="grid md:grid-cols-2 gap-3 mt-2" {
                div { label class="label" for="maintenance_schedule" { "Maintenance schedule (cron)" }
                    input class="input" id="maintenance_schedule" name="maintenance_schedule" value=(schedule); }
                div { label class="label" for="maintenance_host_id" { "Maintenance host (shared repositories)" }
                    select class="input" id="maintenance_host_id" name="maintenance_host_id" {
                        option value="" { "first host that uses it" }
                        @for h in hosts {
                            option value=(h.id) selected[r.and_then(|r| r.maintenance_host_id) == Some(h.id)] { (h.name) }
                        }
                    }
                }
                div class="flex items-center gap-2" {
                    input type="checkbox" id="prune" name="prune" value="on" checked[r.is_none_or(|r| r.prune)];
                    label for="prune" { "Prune after forget" }
                }
                div { label class="label" for="max_unused" { "Max unused (prune)" }
                    input class="input" id="max_unused" name="max_unused" placeholder="restic's default (5%)" value=[r.and_then(|r| r.max_unused.as_deref())]; }
                div { label class="label" for="check_every_days" { "Check every (days, 0 = never)" }
                    input class="input" id="check_every_days" name="check_every_days" type="number" min="0" value=(r.map_or(7, |r| r.check_every_days)); }
                div { label class="label" for="check_read_data_subset" { "Read data subset on check" }
                    input class="input" id="check_read_data_subset" name="check_read_data_subset" placeholder="none (e.g. 5% or 1/10)" value=[r.and_then(|r| r.check_read_data_subset.as_deref())]; }
                div { label class="label" for="max_concurrent_backups" { "Max concurrent backups (0 = no limit)" }
                    input class="input" id="max_concurrent_backups" name="max_concurrent_backups" type="number" min="0" value=(r.map_or(0, |r| r.max_concurrent_backups)); }
            }
        }
    }
}

pub fn list_page(user: &User, list: &[Repository], error: Option<&str>) -> Markup {
    let admin = user.role == Role::Admin;
    page(
        "Repositories",
        user,
        Nav::Repositories,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Repositories" }
            @if let Some(e) = error { div class="mb-4" { (error_banner(e)) } }
            div class="card p-0 overflow-x-auto mb-6" {
                table class="table-base" {
                    thead { tr { th { "Name" } th { "URL" } th { "Kind" } th { "Environment" } th { "Created" } } }
                    tbody {
                        @for r in list {
                            tr data-testid="repo-row" {
                                td { a class="link" href=(routes::repository(r.id)) { (r.name) } }
                                td class="font-mono text-xs" data-testid="repo-url" { (r.url_masked) }
                                td { (kind_badge(r.local)) }
                                td class="text-xs" { (r.env_keys.join(", ")) }
                                td { (clock::rfc3339(r.created_at)) }
                            }
                        }
                        @if list.is_empty() { tr { td colspan="5" class="text-center text-gray-500 py-6" { "No repositories yet." } } }
                    }
                }
            }
            @if admin {
                section class="card" {
                    h2 class="font-semibold mb-3" { "Add repository" }
                    form method="post" action=(routes::REPOSITORIES_PAGE) class="space-y-3" data-testid="repo-create-form" {
                        div class="grid md:grid-cols-2 gap-3" {
                            div { label class="label" for="name" { "Name" } input class="input" id="name" name="name" required; }
                            div { label class="label" for="url" { "URL (path, sftp:, rest:, s3:, b2:, …)" } input class="input" id="url" name="url" required placeholder="/srv/restic or s3:s3.amazonaws.com/bucket"; }
                            div { label class="label" for="password" { "Repository password" }
                                input class="input" id="password" name="password" type="password" autocomplete="new-password" required; }
                        }
                        (env_rows(&[]))
                        (settings_fields(None, &[]))
                        button class="btn" type="submit" { "Add repository" }
                    }
                }
            }
        },
    )
}

pub struct DetailView<'a> {
    pub user: &'a User,
    pub repo: &'a Repository,
    pub hosts: &'a [Host],
    pub jobs: &'a [(Job, String)],
    pub snapshots: &'a [Snapshot],
    pub error: Option<&'a str>,
    pub now_ms: i64,
}

fn job_form(v: &DetailView) -> Markup {
    let admin = v.user.role == Role::Admin;
    let r = v.repo;
    html! {
        form method="post" action=(routes::repository_jobs(r.id)) class="space-y-2" data-testid="repo-job-form" {
            div { label class="label" for="kind" { "Run" }
                select class="input" id="kind" name="kind" {
                    option value="snapshots" { "snapshots — refresh the snapshot list" }
                    option value="check" { "check — verify the repository" }
                    option value="stats" { "stats — size of the repository" }
                    option value="unlock" { "unlock — remove stale locks" }
                    option value="init" { "init — create the repository" }
                    @if admin { option value="prune" { "prune — free unused data" } }
                }
            }
            div { label class="label" for="host_id" { "On host" }
                select class="input" id="host_id" name="host_id" {
                    option value="" { @if r.local { "every host that uses it" } @else { "the maintenance host" } }
                    @for h in v.hosts { option value=(h.id) { (h.name) } }
                }
            }
            @if admin {
                div class="flex items-center gap-2 text-sm" {
                    input type="checkbox" id="remove_all" name="remove_all" value="on";
                    label for="remove_all" { "unlock: also remove fresh locks (only when no restic runs)" }
                }
            }
            button class="btn w-full" type="submit" data-testid="repo-run-job" { "Run" }
        }
    }
}

fn snapshots_table(list: &[Snapshot]) -> Markup {
    html! {
        table class="table-base" data-testid="snapshots" {
            thead { tr { th { "Snapshot" } th { "Time" } th { "Host" } th { "Paths" } th { "Tags" } th { "Added" } } }
            tbody {
                @for s in list {
                    tr data-testid="snapshot-row" {
                        td class="font-mono text-xs" title=(s.snapshot_id) { (s.short_id) }
                        td { (clock::rfc3339(s.time)) }
                        td { @match s.host_id { Some(h) => a class="link" href=(routes::host(h)) { (s.hostname) }, None => (s.hostname) } }
                        td class="text-xs" { (s.paths.join(", ")) }
                        td class="text-xs" { (s.tags.join(", ")) }
                        td { @match s.data_added { Some(b) => (bytes(b.max(0) as u64)), None => span class="text-gray-400" { "—" } } }
                    }
                }
                @if list.is_empty() { tr { td colspan="6" class="text-center text-gray-500 py-6" { "No snapshots indexed: run snapshots to read them from restic." } } }
            }
        }
    }
}

pub fn detail_page(v: &DetailView) -> Markup {
    let r = v.repo;
    let admin = v.user.role == Role::Admin;
    let operator = v.user.role >= Role::Operator;
    page(
        &r.name,
        v.user,
        Nav::Repositories,
        html! {
            div class="flex flex-wrap items-center gap-3 mb-4" {
                h1 class="text-2xl font-semibold" data-testid="repo-name" { (r.name) }
                (kind_badge(r.local))
                span class="font-mono text-sm text-gray-600" data-testid="repo-url" { (r.url_masked) }
            }
            @if let Some(e) = v.error { div class="mb-4" { (error_banner(e)) } }
            div class="grid md:grid-cols-3 gap-6 mb-6" {
                section class="card md:col-span-2" {
                    dl class="grid grid-cols-2 gap-4 text-sm" {
                        div { dt class="label" { "Password" } dd data-testid="password-state" { @if r.password_set { "set" } @else { "not set" } } }
                        div { dt class="label" { "Environment" } dd { @if r.env_keys.is_empty() { "none" } @else { (r.env_keys.join(", ")) } } }
                        div { dt class="label" { "Maintenance" } dd { (r.maintenance_schedule) @if r.prune { " · prune" } } }
                        div { dt class="label" { "Last check" } dd { @match r.last_check_at { Some(t) => (clock::rfc3339(t)), None => "never" } } }
                    }
                }
                @if operator {
                    aside class="card" { h2 class="font-semibold mb-2" { "Jobs" } (job_form(v)) }
                }
            }
            section class="mb-6" {
                h2 class="font-semibold mb-2" { "Recent jobs" }
                div class="card p-0 overflow-x-auto" { (jobs_table(v.jobs, v.now_ms)) }
            }
            section class="mb-6" {
                h2 class="font-semibold mb-2" { "Snapshots" }
                div class="card p-0 overflow-x-auto" { (snapshots_table(v.snapshots)) }
            }
            @if admin {
                section class="card mb-6" {
                    h2 class="font-semibold mb-3" { "Settings" }
                    form method="post" action=(routes::repository(r.id)) class="space-y-3" data-testid="repo-edit-form" {
                        div class="grid md:grid-cols-2 gap-3" {
                            div { label class="label" for="name" { "Name" } input class="input" id="name" name="name" value=(r.name) required; }
                            div { label class="label" for="url" { "URL (leave to keep " (r.url_masked) ")" } input class="input" id="url" name="url" placeholder=(r.url_masked); }
                            div { label class="label" for="password" { "Repository password" }
                                input class="input" id="password" name="password" type="password" autocomplete="new-password"
                                    placeholder=(if r.password_set { "set — leave empty to keep" } else { "not set" }); }
                        }
                        (env_rows(&r.env_keys))
                        (settings_fields(Some(r), v.hosts))
                        button class="btn" type="submit" { "Save" }
                    }
                    form method="post" action=(routes::repository_delete(r.id)) class="mt-4" {
                        button class="btn btn-danger" type="submit" { "Delete repository" }
                        span class="text-xs text-gray-500 ml-2" { "Removes it from restic-manager only; the data in the repository stays." }
                    }
                }
            }
        },
    )
}
