//! The dashboard: host counts, backup-health tiles (failing, stale,
//! unprotected: each links to exactly those hosts), a status filter and the
//! paged host table with last and next backup, which refreshes itself
//! (htmx) without a full reload.
use std::collections::HashMap;

use maud::{Markup, html};

use super::{
    Nav,
    components::{hosts_behind_tile, last_seen, online_pill, pagination, update_chip},
    page,
};
use crate::{
    clock, routes,
    store::{
        health::{BackupState, HostHealth},
        hosts::{Host, Status},
        users::User,
    },
    version,
};

pub struct DashboardView<'a> {
    pub user: &'a User,
    pub hosts: &'a [Host],
    pub status: Option<Status>,
    /// Only hosts whose agent is behind the server (`?updates=behind`).
    pub behind: bool,
    /// Only hosts in this backup state (`?backup=`).
    pub backup: Option<BackupState>,
    /// Backup health of the hosts on this page.
    pub health: &'a HashMap<i64, HostHealth>,
    /// Hosts per backup state, fleet-wide (the health tiles).
    pub backup_counts: &'a HashMap<BackupState, u64>,
    pub count_behind: u64,
    pub offset: u64,
    pub limit: u64,
    /// Hosts matching the filter.
    pub total: u64,
    pub count_all: u64,
    pub count_online: u64,
    pub now_ms: i64,
}

impl DashboardView<'_> {
    fn query(&self, status: Option<Status>, offset: u64) -> String {
        self.query_with(status, self.behind, offset)
    }

    fn query_with(&self, status: Option<Status>, behind: bool, offset: u64) -> String {
        let mut q = Vec::new();
        if let Some(b) = self.backup {
            q.push(format!("backup={b}"));
        }
        if behind {
            q.push("updates=behind".to_string());
        }
        match status {
            Some(Status::Online) => q.push("status=online".to_string()),
            Some(Status::Offline) => q.push("status=offline".to_string()),
            None => {}
        }
        if offset > 0 {
            q.push(format!("offset={offset}"));
        }
        if self.limit != 100 {
            q.push(format!("limit={}", self.limit));
        }
        if q.is_empty() {
            routes::DASHBOARD.to_string()
        } else {
            format!("{}?{}", routes::DASHBOARD, q.join("&"))
        }
    }
}

fn tile(label: &str, value: u64, href: &str, testid: &str) -> Markup {
    html! {
        a class="tile" href=(href) data-testid=(testid) {
            span class="tile-value" { (value) }
            span class="tile-label" { (label) }
        }
    }
}

/// The dashboard filtered to one backup state (what a health tile links to).
pub fn backup_filter_href(state: BackupState) -> String {
    format!("{}?backup={state}", routes::DASHBOARD)
}

/// A health tile: hosts in `state`, linking to exactly those.
fn health_tile(v: &DashboardView, state: BackupState, label: &str, class: &str) -> Markup {
    let n = v.backup_counts.get(&state).copied().unwrap_or(0);
    // Quiet when nothing needs attention.
    let class = if n > 0 { class } else { "tile" };
    html! {
        a class=(class) href=(backup_filter_href(state)) data-testid=(format!("tile-backup-{state}"))
            aria-current=[(v.backup == Some(state)).then_some("page")] {
            span class="tile-value" { (n) }
            span class="tile-label" { (label) }
        }
    }
}

pub fn backup_state_pill(state: BackupState) -> Markup {
    let class = match state {
        BackupState::Ok => "pill-backup-ok",
        BackupState::Failing => "pill-backup-failing",
        BackupState::Stale => "pill-backup-stale",
        BackupState::Pending => "pill-backup-pending",
        BackupState::Unprotected => "pill-backup-unprotected",
    };
    super::components::pill(class, "backup-state", state.as_str())
}

/// "in 3 h" for a time ahead (or "due" once it has passed).
fn until(now_ms: i64, at: i64) -> String {
    let s = (at - now_ms) / 1000;
    match s {
        i64::MIN..=0 => "due".into(),
        1..=59 => format!("in {s} s"),
        60..=3599 => format!("in {} min", s / 60),
        3600..=86_399 => format!("in {} h", s / 3600),
        _ => format!("in {} d", s / 86_400),
    }
}

fn backup_cells(h: Option<&HostHealth>, now_ms: i64) -> Markup {
    let h = h.unwrap_or(&HostHealth::UNPROTECTED);
    html! {
        td { (backup_state_pill(h.backup_state)) }
        td data-testid="last-backup" {
            @match h.last_backup_at {
                Some(t) => {
                    time datetime=(clock::rfc3339(t)) title=(clock::rfc3339(t)) { (clock::ago(now_ms, t)) }
                    @if let Some(st) = &h.last_backup_status {
                        " " (super::components::pill(&format!("pill-{st}"), "last-backup-status", st))
                    }
                }
                None => span class="text-gray-400" { "never" },
            }
        }
        td data-testid="next-backup" {
            @match h.next_backup_at {
                Some(t) => time datetime=(clock::rfc3339(t)) title=(clock::rfc3339(t)) { (until(now_ms, t)) },
                None => span class="text-gray-400" { "—" },
            }
        }
    }
}

pub fn host_row(h: &Host, health: Option<&HostHealth>, now_ms: i64) -> Markup {
    html! {
        tr data-testid="host-row" data-host-id=(h.id) {
            td class="font-medium" { a class="link" href=(routes::host(h.id)) { (h.name) } }
            td { @if h.hostname.is_empty() { span class="text-gray-400" { "—" } } @else { (h.hostname) } }
            td { @if h.os.is_empty() { span class="text-gray-400" { "—" } } @else { (h.os) "/" (h.arch) } }
            td {
                span data-testid="agent-version" {
                    @if !h.agent_version.is_empty() { (h.agent_version) }
                    @else if h.enrolled { span class="text-gray-400" { "never connected" } }
                    @else { span class="text-gray-400" { "not enrolled" } }
                }
                " " (update_chip(h, version::VERSION))
            }
            td { (online_pill(h.online)) }
            td { (last_seen(now_ms, h.last_seen_at)) }
            (backup_cells(health, now_ms))
        }
    }
}

/// The table and its pager; also the htmx partial that refreshes itself.
pub fn hosts_table(v: &DashboardView) -> Markup {
    html! {
        div id="hosts-table" {
            div class="card p-0 overflow-x-auto" {
                table class="table-base" {
                    thead { tr {
                        th { "Name" } th { "Hostname" } th { "OS/arch" } th { "Agent" } th { "Status" } th { "Last seen" }
                        th { "Backup" } th { "Last backup" } th { "Next backup" }
                    } }
                    tbody {
                        @for h in v.hosts { (host_row(h, v.health.get(&h.id), v.now_ms)) }
                        @if v.hosts.is_empty() {
                            tr { td colspan="9" class="text-center text-gray-500 py-8" {
                                @if v.count_all == 0 {
                                    "No hosts yet. "
                                    @if v.user.role == crate::store::users::Role::Admin {
                                        a class="link" href=(routes::HOST_NEW) { "Add your first host" } "."
                                    } @else { "An admin can add hosts." }
                                } @else { "No hosts match this filter." }
                            } }
                        }
                    }
                }
            }
            (pagination(v.offset, v.limit, v.total, |o| v.query(v.status, o)))
        }
    }
}

/// Tiles, filter and table: the part of the page that refreshes itself
/// (and what the handler returns to htmx).
pub fn dashboard_body(v: &DashboardView) -> Markup {
    let filter_link = |status: Option<Status>, label: &str| {
        let active = v.status == status;
        let cls = if active {
            "px-3 py-1 rounded bg-slate-800 text-white"
        } else {
            "px-3 py-1 rounded bg-white border hover:bg-gray-100"
        };
        html! { a class=(cls) href=(v.query(status, 0)) aria-current=[active.then_some("page")] { (label) } }
    };
    html! {
        div id="dashboard-body" hx-get=(v.query(v.status, v.offset)) hx-trigger="every 10s" hx-swap="outerHTML" {
            div class="flex flex-wrap gap-4 mb-6" {
                (tile("hosts", v.count_all, &v.query(None, 0), "tile-total"))
                (tile("online", v.count_online, &v.query(Some(Status::Online), 0), "tile-online"))
                (tile("offline", v.count_all.saturating_sub(v.count_online), &v.query(Some(Status::Offline), 0), "tile-offline"))
                (hosts_behind_tile(v.count_behind))
                (health_tile(v, BackupState::Failing, "backups failing", "tile tile-red"))
                (health_tile(v, BackupState::Stale, "backups stale", "tile tile-amber"))
                (health_tile(v, BackupState::Unprotected, "unprotected", "tile tile-amber"))
            }
            @if let Some(b) = v.backup {
                div class="banner-info flex items-center justify-between" data-testid="backup-filter" {
                    span { "Showing only hosts whose backup state is " strong { (b) } "." }
                    a class="link" href=(routes::DASHBOARD) { "Show all hosts" }
                }
            }
            @if v.behind {
                div class="banner-info flex items-center justify-between" data-testid="behind-filter" {
                    span { "Showing only hosts whose agent is behind the server (" (version::VERSION) ")." }
                    span class="flex gap-3" {
                        a class="link" href=(crate::routes::FLEET_UPDATE_PAGE) { "Update them one by one →" }
                        a class="link" href=(v.query_with(v.status, false, 0)) { "Show all hosts" }
                    }
                }
            }
            div class="flex items-center gap-2 mb-3 text-sm" data-testid="status-filter" {
                (filter_link(None, "All"))
                (filter_link(Some(Status::Online), "Online"))
                (filter_link(Some(Status::Offline), "Offline"))
            }
            (hosts_table(v))
        }
    }
}

pub fn dashboard(v: &DashboardView) -> Markup {
    page("Hosts", v.user, Nav::Dashboard, dashboard_body(v))
}
