//! The notifications settings page (admin): webhook targets (a secret is
//! only ever shown as "set" or "none"), add, remove, send a test, and the
//! recent deliveries with status, attempts and last error, refreshing itself;
//! and the data retention settings with the last purge.
use maud::{Markup, html};

use super::{
    Nav,
    components::{error_banner, info_banner, last_seen},
    page,
};
use crate::{
    routes,
    store::{
        notifications::{Delivery, DeliveryStatus, Target},
        users::User,
    },
};

pub struct NotificationsView<'a> {
    pub user: &'a User,
    pub targets: &'a [Target],
    /// Recent deliveries with their target's name.
    pub deliveries: &'a [(Delivery, String)],
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
    /// What the add form held when it was refused.
    pub form_name: &'a str,
    pub form_url: &'a str,
    pub now_ms: i64,
    /// `--retention-days` and the latest purge (None: not run yet).
    pub retention: crate::config::Retention,
    pub last_purge: Option<&'a crate::retention::Report>,
}

/// What a `--retention-days` name removes, in plain words.
fn retention_meaning(name: &str) -> &'static str {
    match name {
        "job-logs" => "Log lines of jobs that finished longer ago (the job itself stays).",
        "jobs" => {
            "Finished jobs with their logs. Running and queued jobs, and each host's latest job of each kind and plan, always stay."
        }
        "audit" => "Audit log entries.",
        "alerts" => "Resolved alerts and their webhook deliveries (open alerts always stay).",
        _ => "",
    }
}

fn days_text(days: u32) -> String {
    match days {
        0 => "forever".into(),
        1 => "1 day".into(),
        d => format!("{d} days"),
    }
}

/// The data retention section: each setting, what it means, the last purge.
pub fn retention_section(v: &NotificationsView) -> Markup {
    let r = v.retention;
    html! {
        section id="retention" data-testid="retention" class="mt-6" {
            h2 class="font-semibold mb-2" { "Data retention" }
            p class="text-sm text-gray-600 mb-2" {
                "Once a day the server removes records older than these periods, a few at a time. Set with "
                code { "--retention-days" } " (" code { "RM_RETENTION_DAYS" } "), e.g. "
                code { "job-logs=30,audit=0" } "; 0 keeps forever."
            }
            div class="card p-0 overflow-x-auto mb-4" {
                table class="table-base" {
                    thead { tr { th { "Records" } th { "Kept" } th { "What goes" } } }
                    tbody {
                        @for name in crate::config::Retention::NAMES {
                            @let days = r.days(name).unwrap_or(0);
                            tr data-testid="retention-row" data-name=(name) data-days=(days) {
                                td class="font-mono text-xs" { (name) }
                                td data-testid="retention-kept" { (days_text(days)) }
                                td class="text-sm" { (retention_meaning(name)) }
                            }
                        }
                        tr data-testid="retention-row" data-name="enrollment-tokens" data-days="1" {
                            td class="font-mono text-xs" { "enrollment-tokens" }
                            td data-testid="retention-kept" { "1 day" }
                            td class="text-sm" { "Enrollment tokens once used or expired (fixed)." }
                        }
                    }
                }
            }
            div class="card" data-testid="last-purge" {
                @match v.last_purge {
                    None => p class="text-sm text-gray-500" { "Last purge: not run yet (the first runs a few minutes after the server starts)." },
                    Some(lp) => {
                        p class="text-sm mb-2" {
                            "Last purge: " span data-testid="last-purge-at" title=(crate::clock::rfc3339(lp.at)) { (last_seen(v.now_ms, Some(lp.at))) }
                            ", took " (lp.duration_ms) " ms. Removed:"
                        }
                        dl class="grid grid-cols-2 gap-1 text-sm max-w-sm" {
                            @for (label, key, n) in [
                                ("job log lines", "job_logs", lp.purged.job_logs),
                                ("jobs", "jobs", lp.purged.jobs),
                                ("audit entries", "audit", lp.purged.audit),
                                ("resolved alerts", "alerts", lp.purged.alerts),
                                ("webhook deliveries", "deliveries", lp.purged.deliveries),
                                ("enrollment tokens", "enrollment_tokens", lp.purged.enrollment_tokens),
                            ] {
                                dt class="text-gray-600" { (label) }
                                dd class="tabular-nums" data-testid="purged" data-kind=(key) { (n) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn status_pill(s: DeliveryStatus) -> Markup {
    let cls = match s {
        DeliveryStatus::Pending => "pill-pending",
        DeliveryStatus::Delivered => "pill-succeeded",
        DeliveryStatus::Failed => "pill-failed",
    };
    html! { span class=(cls) data-testid="delivery-status" { (s.as_str()) } }
}

fn targets_table(v: &NotificationsView) -> Markup {
    html! {
        div class="card p-0 overflow-x-auto mb-6" {
            table class="table-base" {
                thead { tr { th { "Name" } th { "URL" } th { "Secret" } th { "Added" } th {} } }
                tbody {
                    @for t in v.targets {
                        tr data-testid="target-row" data-target-id=(t.id) {
                            td class="font-medium" data-testid="target-name" { (t.name) }
                            td class="font-mono text-xs break-all" data-testid="target-url" { (t.url) }
                            td data-testid="target-secret" { @if t.has_secret() { "set" } @else { "none" } }
                            td { (last_seen(v.now_ms, Some(t.created_at))) }
                            td {
                                div class="flex gap-2 justify-end" {
                                    form method="post" action=(routes::notification_target_test(t.id)) {
                                        button class="btn" type="submit" data-testid="send-test" { "Send test notification" }
                                    }
                                    form method="post" action=(routes::notification_target_delete(t.id)) {
                                        button class="btn btn-danger" type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                    @if v.targets.is_empty() {
                        tr { td colspan="5" class="text-center text-gray-500 py-8" {
                            "No webhook targets yet: add one below to be notified of alerts."
                        } }
                    }
                }
            }
        }
    }
}

/// The recent deliveries; also the htmx partial that refreshes itself.
pub fn deliveries_table(v: &NotificationsView) -> Markup {
    html! {
        div id="deliveries" hx-get=(routes::NOTIFICATIONS_PAGE) hx-trigger="every 10s" hx-swap="outerHTML" {
            div class="card p-0 overflow-x-auto" {
                table class="table-base" {
                    thead { tr {
                        th { "When" } th { "Target" } th { "Event" } th { "Alert" }
                        th { "Status" } th { "Attempts" } th { "Last error" }
                    } }
                    tbody {
                        @for (d, target) in v.deliveries {
                            tr data-testid="delivery-row" data-delivery-id=(d.id) data-status=(d.status.as_str())
                                data-attempts=(d.attempts) data-event=(d.event.as_str()) {
                                td { (last_seen(v.now_ms, Some(d.created_at))) }
                                td { (target) }
                                td class="font-mono text-xs" { (d.event.wire_name()) }
                                td { @match d.alert_id { Some(id) => (format!("#{id}")), None => span class="text-gray-400" { "—" } } }
                                td { (status_pill(d.status)) }
                                td class="tabular-nums" data-testid="delivery-attempts" { (d.attempts) }
                                td class="text-xs break-all" data-testid="delivery-error" {
                                    @if let Some(e) = &d.last_error { (e) } @else { span class="text-gray-400" { "—" } }
                                }
                            }
                        }
                        @if v.deliveries.is_empty() {
                            tr { td colspan="7" class="text-center text-gray-500 py-8" { "Nothing sent yet." } }
                        }
                    }
                }
            }
        }
    }
}

pub fn notifications_page(v: &NotificationsView) -> Markup {
    page(
        "Notifications",
        v.user,
        Nav::Notifications,
        html! {
            h1 class="text-2xl font-semibold mb-2" { "Notifications" }
            p class="text-sm text-gray-600 mb-4" {
                "Each target gets a JSON POST when an alert is raised or resolved. With a secret, the body is signed: "
                code { "X-RM-Signature: sha256=<hex HMAC-SHA256(secret, body)>" } "."
            }
            @if let Some(e) = v.error { div class="mb-4" { (error_banner(e)) } }
            @if let Some(n) = v.notice { div class="mb-4" { (info_banner(n)) } }
            h2 class="font-semibold mb-2" { "Webhook targets" }
            (targets_table(v))
            div class="card max-w-lg mb-8" {
                h2 class="font-semibold mb-3" { "Add a webhook" }
                form method="post" action=(routes::NOTIFICATIONS_PAGE) class="space-y-3" {
                    div { label class="label" for="target-name" { "Name" } input class="input" id="target-name" name="name" required maxlength="64" value=(v.form_name); }
                    div { label class="label" for="target-url" { "URL (http:// or https://)" } input class="input" id="target-url" name="url" type="url" required placeholder="https://hooks.example.com/restic-manager" value=(v.form_url); }
                    div {
                        label class="label" for="target-secret" { "Secret (optional, signs each body)" }
                        input class="input" id="target-secret" name="secret" type="password" autocomplete="off";
                    }
                    button class="btn btn-primary" type="submit" { "Add webhook" }
                }
            }
            h2 class="font-semibold mb-2" { "Recent deliveries" }
            (deliveries_table(v))
            (retention_section(v))
        },
    )
}
