//! The alerts page: active alerts, then recently resolved ones, each paged;
//! the body refreshes itself every 10 s (htmx) without a full reload.
use std::collections::HashMap;

use maud::{Markup, html};

use super::{
    Nav,
    components::{last_seen, pagination},
    page,
};
use crate::{
    clock, routes,
    store::{
        alerts::{Alert, Severity},
        users::{Role, User},
    },
};

pub struct AlertsView<'a> {
    pub user: &'a User,
    pub active: &'a [Alert],
    pub active_total: u64,
    pub active_offset: u64,
    pub resolved: &'a [Alert],
    pub resolved_total: u64,
    pub resolved_offset: u64,
    pub limit: u64,
    pub host_names: &'a HashMap<i64, String>,
    pub now_ms: i64,
}

impl AlertsView<'_> {
    fn href(&self, active_offset: u64, resolved_offset: u64) -> String {
        let mut q = Vec::new();
        if active_offset > 0 {
            q.push(format!("offset={active_offset}"));
        }
        if resolved_offset > 0 {
            q.push(format!("resolved_offset={resolved_offset}"));
        }
        if self.limit != crate::store::Page::new(None, None).limit {
            q.push(format!("limit={}", self.limit));
        }
        if q.is_empty() {
            routes::ALERTS_PAGE.into()
        } else {
            format!("{}?{}", routes::ALERTS_PAGE, q.join("&"))
        }
    }
}

pub fn severity_pill(s: Severity) -> Markup {
    // Whole class names only (Tailwind scans for them).
    let cls = match s {
        Severity::Critical => "pill-failed",
        Severity::Warning => "pill-pending",
        Severity::Info => "pill-queued",
    };
    super::components::pill(cls, "severity", s.as_str())
}

fn host_cell(a: &Alert, names: &HashMap<i64, String>) -> Markup {
    html! {
        @match a.host_id {
            Some(id) => a class="link" href=(routes::host(id)) {
                (names.get(&id).map(String::as_str).unwrap_or("(removed)"))
            },
            None => span class="text-gray-400" { "—" },
        }
    }
}

fn alert_row(v: &AlertsView, a: &Alert) -> Markup {
    let admin = v.user.role == Role::Admin;
    html! {
        tr data-testid="alert-row" data-alert-id=(a.id) data-kind=(a.kind)
            data-state=(if a.is_active() { "active" } else { "resolved" }) {
            td { (severity_pill(a.severity)) }
            td class="font-mono text-xs" { (a.kind) }
            td { (host_cell(a, v.host_names)) }
            td data-testid="alert-message" { (a.message) }
            td { (last_seen(v.now_ms, Some(a.raised_at))) }
            td { (last_seen(v.now_ms, Some(a.last_seen_at))) }
            td class="tabular-nums" data-testid="alert-count" { (a.count) }
            @if let Some(r) = a.resolved_at {
                td { (last_seen(v.now_ms, Some(r))) }
            } @else if admin {
                td {
                    form method="post" action=(routes::alert_resolve(a.id)) {
                        button class="btn" type="submit" { "Resolve" }
                    }
                }
            } @else {
                td {}
            }
        }
    }
}

fn alerts_table(v: &AlertsView, alerts: &[Alert], last_col: &str, empty: &str) -> Markup {
    html! {
        div class="card p-0 overflow-x-auto" {
            table class="table-base" {
                thead { tr {
                    th { "Severity" } th { "Kind" } th { "Host" } th { "Message" }
                    th { "Raised" } th { "Last seen" } th { "Count" } th { (last_col) }
                } }
                tbody {
                    @for a in alerts { (alert_row(v, a)) }
                    @if alerts.is_empty() {
                        tr { td colspan="8" class="text-center text-gray-500 py-8" { (empty) } }
                    }
                }
            }
        }
    }
}

/// Both sections: the page body and the htmx partial that replaces it.
pub fn alerts_body(v: &AlertsView) -> Markup {
    html! {
        div id="alerts-body" hx-get=(v.href(v.active_offset, v.resolved_offset)) hx-trigger="every 10s" hx-swap="outerHTML" {
            section class="mb-8" data-testid="active-alerts" {
                h2 class="text-lg font-semibold mb-2" { "Active " span class="text-gray-500" data-testid="active-count" { "(" (v.active_total) ")" } }
                (alerts_table(v, v.active, "", "No active alerts."))
                (pagination(v.active_offset, v.limit, v.active_total, |o| v.href(o, v.resolved_offset)))
            }
            section data-testid="resolved-alerts" {
                h2 class="text-lg font-semibold mb-2" { "Resolved " span class="text-gray-500" data-testid="resolved-count" { "(" (v.resolved_total) ")" } }
                (alerts_table(v, v.resolved, "Resolved", "Nothing resolved yet."))
                (pagination(v.resolved_offset, v.limit, v.resolved_total, |o| v.href(v.active_offset, o)))
            }
        }
    }
}

pub fn alerts_page(v: &AlertsView, error: Option<&str>) -> Markup {
    page(
        "Alerts",
        v.user,
        Nav::Alerts,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Alerts" }
            @if let Some(e) = error { div class="mb-4" { (super::components::error_banner(e)) } }
            (alerts_body(v))
            p class="mt-4 text-xs text-gray-500" {
                "Times as of " (clock::rfc3339(v.now_ms)) "; this page refreshes itself."
            }
        },
    )
}
