//! The fleet update page: idle (who is behind, typed-count start form),
//! running (per-host progress, refreshing itself), outcome and history; and
//! the small banner every page shows while a run is going.
use maud::{Markup, html};

use super::{
    Nav,
    components::{error_banner, last_seen, pill},
    page,
};
use crate::{
    clock, routes,
    store::{
        fleet_updates::{FleetHost, FleetStatus, FleetUpdate, HostStatus},
        hosts::Host,
        users::User,
    },
    version,
};

fn host_pill(s: HostStatus) -> Markup {
    let cls = match s {
        HostStatus::Pending => "pill-pending",
        HostStatus::Running => "pill-running",
        HostStatus::Succeeded => "pill-succeeded",
        HostStatus::Failed => "pill-failed",
        HostStatus::Skipped => "pill-skipped",
    };
    pill(cls, "fleet-host-status", s.as_str())
}

fn run_pill(s: FleetStatus) -> Markup {
    let cls = match s {
        FleetStatus::Running => "pill-running",
        FleetStatus::Completed => "pill-succeeded",
        FleetStatus::Halted => "pill-failed",
        FleetStatus::Cancelled => "pill-cancelled",
    };
    pill(cls, "fleet-status", s.as_str())
}

pub struct FleetView<'a> {
    pub user: &'a User,
    /// The running run, or the latest finished one, with its hosts.
    pub run: Option<(&'a FleetUpdate, &'a [FleetHost])>,
    /// Out-of-date online hosts (only looked up when idle).
    pub candidates: &'a [Host],
    pub history: &'a [FleetUpdate],
    pub error: Option<&'a str>,
    pub typed: &'a str,
    pub now_ms: i64,
}

fn progress(hosts: &[FleetHost]) -> (usize, usize) {
    let done = hosts
        .iter()
        .filter(|h| {
            matches!(
                h.status,
                HostStatus::Succeeded | HostStatus::Skipped | HostStatus::Failed
            )
        })
        .count();
    (done, hosts.len())
}

fn run_hosts_table(hosts: &[FleetHost]) -> Markup {
    html! {
        table class="table-base" {
            thead { tr { th { "#" } th { "Host" } th { "From" } th { "Status" } th { "Job" } th { "Reason" } } }
            tbody {
                @for h in hosts {
                    tr data-testid="fleet-host-row" data-host-id=(h.host_id) {
                        td { (h.position) }
                        td { a class="link" href=(routes::host(h.host_id)) { (h.hostname) } }
                        td { (h.from_version) }
                        td { (host_pill(h.status)) }
                        td { @if let Some(j) = h.job_id { a class="link" href=(routes::job(j)) { "live log #" (j) } } @else { span class="text-gray-400" { "—" } } }
                        td class="text-sm" { (h.failed_reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// The part of the page that changes while a run goes; refreshes itself
/// every 3 s while running and stops once the run has ended.
pub fn fleet_live(v: &FleetView) -> Markup {
    let running = v.run.is_some_and(|(r, _)| r.status == FleetStatus::Running);
    html! {
        div id="fleet-live" hx-get=[running.then_some(routes::FLEET_UPDATE_PAGE)] hx-trigger=[running.then_some("every 3s")] hx-swap="outerHTML" {
            @if let Some((run, hosts)) = v.run {
                @let (done, total) = progress(hosts);
                section class="card mb-6" data-testid="fleet-run" {
                    div class="flex flex-wrap items-center gap-3 mb-3" {
                        h2 class="text-lg font-semibold" { @if running { "Fleet update #" (run.id) " running" } @else { "Last fleet update #" (run.id) } }
                        (run_pill(run.status))
                        span class="text-sm text-gray-600" { "to " (run.target_version) " · started by " (run.started_by) " · " (clock::rfc3339(run.started_at)) }
                    }
                    @if let Some(reason) = &run.halted_reason {
                        div class="banner-error" role="alert" data-testid="fleet-halted-reason" { "Halted: " (reason) ". Fix the host, then start a new run: hosts already updated are skipped." }
                    }
                    @if run.status == FleetStatus::Cancelled {
                        div class="banner-info" data-testid="fleet-cancelled" { "Cancelled. The host being updated at the time finished its own update; no further hosts were started." }
                    }
                    // A native progress bar: the CSP allows no inline styles.
                    progress class="w-full h-3 my-3 accent-emerald-500" max=(total.max(1)) value=(if total == 0 { 1 } else { done }) data-testid="fleet-progress" { (done) " of " (total) }
                    p class="text-sm text-gray-600 mb-3" { (done) " of " (total) " hosts done" }
                    div class="overflow-x-auto" { (run_hosts_table(hosts)) }
                    @if running {
                        form method="post" action=(routes::fleet_cancel(run.id)) class="mt-4" {
                            button class="btn btn-danger" type="submit" data-testid="fleet-cancel" { "Cancel" }
                            span class="text-xs text-gray-500 ml-2" { "The host being updated finishes; no further hosts start." }
                        }
                    }
                }
            }
        }
    }
}

fn idle(v: &FleetView) -> Markup {
    let n = v.candidates.len();
    html! {
        section class="card mb-6" data-testid="fleet-idle" {
            h2 class="text-lg font-semibold mb-2" { "Update out-of-date agents" }
            p class="text-sm text-gray-700 mb-4" {
                "Updates agents to " strong { (version::VERSION) } " one host at a time, in the order below, and halts on the first failure so one bad build cannot take the fleet down. Only hosts that are online now are included; "
                a class="link" href=(format!("{}?updates=behind", routes::DASHBOARD)) { "see every host behind" } "."
            }
            @if n == 0 {
                p class="text-gray-600" data-testid="fleet-nothing" { "All online agents already run " (version::VERSION) ". Nothing to update." }
            } @else {
                div class="overflow-x-auto mb-4" {
                    table class="table-base" {
                        thead { tr { th { "Host" } th { "Current" } th { "Target" } th { "Last seen" } } }
                        tbody {
                            @for h in v.candidates {
                                tr data-testid="fleet-candidate" {
                                    td { a class="link" href=(routes::host(h.id)) { (super::components::host_name(&h.name, &h.hostname)) } }
                                    td { (h.agent_version) }
                                    td { (version::VERSION) }
                                    td { (last_seen(v.now_ms, h.last_seen_at)) }
                                }
                            }
                        }
                    }
                }
                @if let Some(e) = v.error { (error_banner(e)) }
                form method="post" action=(routes::FLEET_UPDATE_PAGE) class="flex flex-wrap items-end gap-3" {
                    div {
                        label class="label" for="confirm_count" { "Type the number of hosts (" (n) ") to confirm" }
                        input class="input" id="confirm_count" name="confirm_count" inputmode="numeric" autocomplete="off" required value=(v.typed);
                    }
                    button class="btn btn-amber" type="submit" data-testid="fleet-start" { "Start rolling update" }
                }
            }
        }
    }
}

pub fn fleet_page(v: &FleetView) -> Markup {
    let running = v.run.is_some_and(|(r, _)| r.status == FleetStatus::Running);
    page(
        "Fleet update",
        v.user,
        Nav::Fleet,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Fleet update" }
            // The last run's outcome first (a halt reason must not be missed),
            // then the start form.
            (fleet_live(v))
            @if !running { (idle(v)) }
            @if !v.history.is_empty() {
                section class="card p-0 overflow-x-auto" {
                    h2 class="font-semibold px-4 pt-3" { "History" }
                    table class="table-base" data-testid="fleet-history" {
                        thead { tr { th { "#" } th { "Started" } th { "By" } th { "Target" } th { "Status" } th { "Reason" } } }
                        tbody {
                            @for r in v.history {
                                tr {
                                    td { (r.id) }
                                    td { (clock::rfc3339(r.started_at)) }
                                    td { (r.started_by) }
                                    td { (r.target_version) }
                                    td { (run_pill(r.status)) }
                                    td class="text-sm" { (r.halted_reason.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The small banner every page shows while a run goes (empty otherwise).
pub fn running_banner(run: Option<(&FleetUpdate, usize, usize)>) -> Markup {
    html! {
        @if let Some((r, done, total)) = run {
            div class="banner-info flex items-center justify-between mb-4" data-testid="fleet-banner" {
                span { "Fleet update #" (r.id) " to " (r.target_version) " is running: " (done) " of " (total) " hosts done." }
                a class="link" href=(routes::FLEET_UPDATE_PAGE) { "View progress →" }
            }
        }
    }
}
