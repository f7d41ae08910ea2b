//! The host page, the add-host form and the enrollment instructions.
use maud::{Markup, html};

use super::{
    Nav,
    components::{error_banner, last_seen, online_pill, update_chip},
    page,
};
use crate::{
    clock, routes,
    store::{hosts::Host, users::User},
    version,
};

/// The live part of the host page (refreshed by htmx).
pub fn host_status(h: &Host, now_ms: i64) -> Markup {
    html! {
        dl id="host-status" class="grid grid-cols-2 md:grid-cols-3 gap-4" hx-get=(routes::host(h.id)) hx-trigger="every 10s" hx-swap="outerHTML" {
            div { dt class="label" { "Status" } dd { (online_pill(h.online)) } }
            div { dt class="label" { "Last seen" } dd { (last_seen(now_ms, h.last_seen_at)) } }
            div { dt class="label" { "Agent version" } dd data-testid="agent-version" {
                @if h.agent_version.is_empty() { span class="text-gray-400" { "—" } } @else { (h.agent_version) }
            } }
            div { dt class="label" { "Hostname" } dd { (if h.hostname.is_empty() { "—" } else { &h.hostname }) } }
            div { dt class="label" { "OS / arch" } dd { @if h.os.is_empty() { "—" } @else { (h.os) " / " (h.arch) } } }
            div { dt class="label" { "Enrolled" } dd { @if h.enrolled { "yes" } @else { "not yet" } } }
            div { dt class="label" { "restic" } dd data-testid="restic-version" {
                @if let Some(v) = &h.restic_version { (v) }
                @else if h.restic_capable { span class="text-red-700" { "restic not found: install restic 0.14 or newer (or set restic_path in the agent config)" } }
                @else if h.online { span class="text-gray-500" { "this agent cannot run restic jobs: update it" } }
                @else { span class="text-gray-400" { "—" } }
            } }
        }
    }
}

/// The Update agent control: admins only; disabled, with the reason, when
/// the host is offline or an update is already running.
pub fn update_button(h: &Host, live_update_job: Option<i64>) -> Markup {
    use crate::updates::{DispatchError, check_dispatchable};
    let reason = match check_dispatchable(h, h.online, live_update_job) {
        Ok(()) => None,
        Err(DispatchError::UpdateInProgress(j)) => {
            Some(format!("Update already in progress (job {j})"))
        }
        Err(DispatchError::HostOffline) => Some("Agent must be online to update".to_string()),
        Err(DispatchError::AlreadyUpToDate(v)) => Some(format!("Agent already runs {v}")),
        Err(e) => Some(e.to_string()),
    };
    html! {
        form method="post" action=(routes::host_update(h.id)) hx-post=(routes::host_update(h.id)) {
            button class="btn btn-amber w-full" type="submit" data-testid="update-agent" disabled[reason.is_some()] title=[reason.as_deref()] { "Update agent" }
        }
        @if let Some(r) = &reason {
            p class="text-xs text-gray-500" data-testid="update-disabled-reason" {
                (r)
                @if let Some(j) = live_update_job { " · " a class="link" href=(routes::job(j)) { "watch it" } }
            }
        }
    }
}

pub fn host_page(
    user: &User,
    h: &Host,
    recent_jobs: &[(crate::store::jobs::Job, String)],
    live_update_job: Option<i64>,
    now_ms: i64,
    snapshots: Markup,
) -> Markup {
    let admin = user.role == crate::store::users::Role::Admin;
    page(
        &h.name,
        user,
        Nav::Dashboard,
        html! {
            div class="flex items-center gap-3 mb-4" {
                h1 class="text-2xl font-semibold" data-testid="host-name" { (h.name) }
                (online_pill(h.online))
                (update_chip(h, version::VERSION))
            }
            div class="grid md:grid-cols-3 gap-6" {
                section class="card md:col-span-2" { (host_status(h, now_ms)) }
                aside class="card space-y-3" {
                    h2 class="font-semibold" { "Actions" }
                    @if admin {
                        (update_button(h, live_update_job))
                        form method="post" action=(routes::host_token(h.id)) {
                            button class="btn w-full" type="submit" { "New enrollment token" }
                        }
                        form method="post" action=(routes::host_delete(h.id)) {
                            button class="btn btn-danger w-full" type="submit" { "Remove host" }
                        }
                    } @else {
                        p class="text-sm text-gray-500" { "Only admins can change this host." }
                    }
                }
            }
            // Plans, Back up now and labels (issue 13), loaded by htmx.
            (super::plans::host_section_slot(h.id))
            section class="mt-6" {
                div class="flex items-baseline justify-between mb-2" {
                    h2 class="font-semibold" { "Recent jobs" }
                    a class="link text-sm" href=(format!("{}?host_id={}", routes::JOBS_PAGE, h.id)) { "All jobs of this host →" }
                }
                div class="card p-0 overflow-x-auto" data-testid="recent-jobs" { (super::jobs::jobs_table(recent_jobs, now_ms)) }
            }
            // Snapshots and the restore flow (views/restore.rs).
            (snapshots)
        },
    )
}

pub fn add_host_page(user: &User, error: Option<&str>, name: &str) -> Markup {
    page(
        "Add host",
        user,
        Nav::AddHost,
        html! {
            div class="card max-w-lg" {
                h1 class="text-xl font-semibold mb-2" { "Add a host" }
                p class="text-sm text-gray-600 mb-4" {
                    "Give the host a name. The next page shows the commands to run on it; the enrollment token in them works once and expires in 24 hours."
                }
                @if let Some(e) = error { (error_banner(e)) }
                form method="post" action=(routes::HOST_NEW) class="space-y-4" {
                    div {
                        label class="label" for="name" { "Name" }
                        input class="input" id="name" name="name" required maxlength="64" pattern="[A-Za-z0-9._\\-]+" value=(name) placeholder="web-1";
                    }
                    button class="btn btn-primary" type="submit" { "Add host" }
                }
            }
        },
    )
}

/// Shown once after creating a host or a new token: the exact commands.
pub fn enroll_instructions(
    user: &User,
    host_id: i64,
    name: &str,
    token: &str,
    expires_at: i64,
    server_url: &str,
) -> Markup {
    let install = format!(
        "curl -fsSL {server_url}{} | sudo sh -s -- --token {token}",
        routes::AGENT_INSTALL_SH
    );
    let manual = format!(
        "restic-manager-agent enroll --server {server_url} --token {token}\nrestic-manager-agent run"
    );
    page(
        "Enroll host",
        user,
        Nav::AddHost,
        html! {
            div class="card max-w-3xl space-y-4" {
                h1 class="text-xl font-semibold" { "Enroll " (name) }
                p class="text-sm text-gray-700" {
                    "Run this on the host as root. It downloads the agent for the host's OS and CPU, checks its SHA-256, enrolls it and starts it under systemd:"
                }
                pre class="bg-slate-900 text-slate-100 rounded p-3 text-sm overflow-x-auto" data-testid="install-command" { (install) }
                p class="text-sm text-gray-700" { "Or, with the agent binary already installed:" }
                pre class="bg-slate-900 text-slate-100 rounded p-3 text-sm overflow-x-auto" data-testid="manual-command" { (manual) }
                p class="text-sm text-amber-800" {
                    "This token is shown only now. It works once and expires " (clock::rfc3339(expires_at)) "."
                }
                a class="link" href=(routes::host(host_id)) { "Go to the host page →" }
            }
        },
    )
}
