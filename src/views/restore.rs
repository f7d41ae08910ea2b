//! The host page's snapshots and its restore flow: pick a snapshot, browse
//! it a folder at a time (htmx opens folders in place), tick paths, choose
//! the target, review and confirm. Every URL is built by `routes`, which
//! URL-encodes paths (spaces, non-ASCII names, `&`, `#`).
use agent::wire::LsResult;
use maud::{Markup, html};

use super::{components::info_banner, jobs::bytes};
use crate::{
    clock,
    restic::restore::CheckedRestore,
    routes,
    store::{hosts::Host, repositories::Repository, snapshots::Snapshot},
};

/// The default restore target: a new directory named after the snapshot.
pub fn default_target(short_id: &str) -> String {
    format!("/var/tmp/restore-{short_id}")
}

/// "Snapshots" on the host page, with a Restore button per snapshot for
/// operators and admins, and the (empty) place the restore panel opens in.
pub fn host_snapshots_section(
    host_id: i64,
    list: &[(Snapshot, String)],
    can_restore: bool,
) -> Markup {
    html! {
        section class="mt-6" data-testid="host-snapshots" {
            h2 class="font-semibold mb-2" { "Snapshots" }
            div class="card p-0 overflow-x-auto" {
                table class="table-base" {
                    thead { tr {
                        th { "Time" } th { "Snapshot" } th { "Repository" } th { "Plan" }
                        th { "Paths" } th { "Tags" } th { "Added" }
                        @if can_restore { th {} }
                    } }
                    tbody {
                        @for (s, repo) in list {
                            tr data-testid="host-snapshot-row" {
                                td { time datetime=(clock::rfc3339(s.time)) { (clock::rfc3339(s.time)) } }
                                td class="font-mono text-xs" title=(s.snapshot_id) { (s.short_id) }
                                td { (repo) }
                                td { @match s.plan_id { Some(p) => { "#" (p) }, None => span class="text-gray-400" { "—" } } }
                                td class="text-xs" { (s.paths.join(", ")) }
                                td class="text-xs" { (s.tags.join(", ")) }
                                td { @match s.data_added { Some(b) => (bytes(b.max(0) as u64)), None => span class="text-gray-400" { "—" } } }
                                @if can_restore {
                                    td {
                                        @let url = routes::host_restore_snapshot(host_id, s.repository_id, &s.snapshot_id);
                                        a class="btn" href=(url) hx-get=(url) hx-target="#restore-panel" hx-swap="outerHTML" data-testid="restore-snapshot" { "Restore…" }
                                    }
                                }
                            }
                        }
                        @if list.is_empty() {
                            tr { td colspan="8" class="text-center text-gray-500 py-6" { "No snapshots of this host yet." } }
                        }
                    }
                }
            }
            div id="restore-panel" {}
        }
    }
}

pub struct PanelView<'a> {
    /// The host page's host: the default restore destination.
    pub host: &'a Host,
    pub repo: &'a Repository,
    pub snap: &'a Snapshot,
    /// Other destinations (admins, shared repositories); empty otherwise.
    pub hosts: &'a [Host],
    pub admin: bool,
}

/// Step 1: browse and tick, choose the target; "Review" checks it all.
pub fn restore_panel(v: &PanelView) -> Markup {
    let s = v.snap;
    html! {
        section id="restore-panel" class="card mt-4 space-y-4" data-testid="restore-panel" {
            div {
                h2 class="font-semibold" { "Restore snapshot " span class="font-mono" { (s.short_id) } " from " (v.repo.name) }
                p class="text-sm text-gray-600" {
                    (clock::rfc3339(s.time)) " · " (s.hostname) " · " (s.paths.join(", "))
                }
            }
            form method="post" action=(routes::host_restore(v.host.id)) hx-post=(routes::host_restore(v.host.id)) hx-target="#restore-review" hx-swap="innerHTML" class="space-y-4" {
                input type="hidden" name="repository_id" value=(v.repo.id);
                input type="hidden" name="snapshot_id" value=(s.snapshot_id);
                fieldset {
                    legend class="label" { "What to restore" }
                    p class="text-xs text-gray-500 mb-2" { "Open folders to look inside; tick files or folders. Nothing ticked restores the whole snapshot." }
                    div class="border rounded p-2 max-h-96 overflow-auto text-sm" data-testid="browser"
                        hx-get=(routes::host_browse(v.host.id, v.repo.id, &s.snapshot_id, "/")) hx-trigger="load" hx-target="this" hx-swap="innerHTML" {
                        span class="text-gray-500" { "Listing the snapshot…" }
                    }
                }
                div {
                    label class="label" for="restore-target" { "Restore into" }
                    input class="input" id="restore-target" name="target" data-testid="restore-target" value=(default_target(&s.short_id));
                    p class="text-xs text-gray-500" { "A new directory: each file lands there under its original path." }
                }
                @if !v.hosts.is_empty() {
                    div {
                        label class="label" for="restore-host" { "Onto host" }
                        select class="input" id="restore-host" name="host_id" data-testid="restore-host" {
                            @for h in v.hosts {
                                option value=(h.id) selected[h.id == v.host.id] { (h.name) }
                            }
                        }
                    }
                } @else {
                    input type="hidden" name="host_id" value=(v.host.id);
                }
                @if v.admin {
                    label class="flex items-center gap-2 text-sm" {
                        input type="checkbox" name="in_place" value="1" data-testid="restore-in-place";
                        "In place: put every file back on its original path, overwriting live files (you will type the host's name)"
                    }
                }
                button class="btn btn-primary" type="submit" data-testid="restore-review" { "Review restore" }
            }
            div id="restore-review" {}
        }
    }
}

/// One directory's entries: folders open in place below themselves.
pub fn browse_list(host_id: i64, repository_id: i64, snapshot_id: &str, ls: &LsResult) -> Markup {
    let base = ls.path.trim_end_matches('/');
    html! {
        ul class="pl-4 space-y-1" data-testid="browse-list" data-path=(ls.path) {
            @for e in &ls.entries {
                @let full = format!("{base}/{}", e.name);
                li data-testid="browse-entry" data-name=(e.name) data-type=(e.kind) {
                    input type="checkbox" name="include" value=(full) data-testid="include" aria-label=(full);
                    @if e.kind == "dir" {
                        " "
                        button type="button" class="link" data-testid="open-dir"
                            hx-get=(routes::host_browse(host_id, repository_id, snapshot_id, &full))
                            hx-target="next .browse-children" hx-swap="innerHTML" hx-trigger="click once" {
                            (e.name) "/"
                        }
                        div class="browse-children" {}
                    } @else {
                        " " span { (e.name) }
                        " " span class="text-xs text-gray-500" { (bytes(e.size)) }
                    }
                }
            }
            @if ls.entries.is_empty() {
                li class="text-gray-500" { "(empty folder)" }
            }
            @if ls.truncated {
                li { (info_banner("This folder has more entries than shown: tick the folder itself to restore all of it.")) }
            }
        }
    }
}

/// Step 2: what will happen, and the button that does it (with the host's
/// name typed for an in-place restore).
pub fn restore_review(page_host: i64, c: &CheckedRestore, include: &[String]) -> Markup {
    html! {
        div class="border rounded p-3 space-y-3 bg-amber-50" data-testid="restore-confirm" {
            h3 class="font-semibold" { "Confirm the restore" }
            ul class="text-sm list-disc pl-5" {
                li { "Snapshot " span class="font-mono" { (c.snap.short_id) } " of " (c.repo.name) }
                li { "Onto host " strong data-testid="confirm-host" { (c.host.name) }
                    @if c.cross_host { " (not the host that made it)" } }
                @if c.in_place {
                    li class="text-red-700" data-testid="confirm-target" { "In place: every restored file overwrites the live file on its original path" }
                } @else {
                    li data-testid="confirm-target" { "Into " span class="font-mono" { (c.target_path()) } " (each file under its original path)" }
                }
                @if include.is_empty() {
                    li data-testid="confirm-paths" { "The whole snapshot" }
                } @else {
                    li data-testid="confirm-paths" { (include.len()) " selected: "
                        span class="font-mono text-xs" { (include.join(", ")) } }
                }
            }
            form method="post" action=(routes::host_restore(page_host)) hx-post=(routes::host_restore(page_host)) hx-target="#restore-confirm-result" hx-swap="innerHTML" class="space-y-2" {
                input type="hidden" name="step" value="confirm";
                input type="hidden" name="repository_id" value=(c.repo.id);
                input type="hidden" name="snapshot_id" value=(c.snap.snapshot_id);
                input type="hidden" name="host_id" value=(c.host.id);
                input type="hidden" name="target" value=(c.target_path());
                @for p in include { input type="hidden" name="include" value=(p); }
                @if c.in_place {
                    input type="hidden" name="in_place" value="1";
                    label class="label" for="restore-confirm-name" { "Type the host's name (" (c.host.name) ") to restore in place" }
                    input class="input" id="restore-confirm-name" name="confirm" autocomplete="off" data-testid="confirm-name";
                }
                button class="btn btn-danger" type="submit" data-testid="confirm-restore" { "Restore now" }
            }
            div id="restore-confirm-result" {}
        }
    }
}
