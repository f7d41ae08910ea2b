//! Small reusable pieces: pills, chips, banners, pagination.
use maud::{Markup, html};

use crate::clock;

/// The one status pill: `class` is a whole `pill-*` class name (Tailwind
/// scans for whole names), `testid` names what the status is of.
pub fn pill(class: &str, testid: &str, label: &str) -> Markup {
    html! { span class=(class) data-testid=(testid) { (label) } }
}

/// A host as every page names it: its name, with the machine's hostname
/// beside it when that says something else (cloned machines all say "vm").
pub fn host_name(name: &str, hostname: &str) -> Markup {
    html! {
        span data-testid="host-name" { (name) }
        @if !hostname.is_empty() && hostname != name {
            " " span class="text-gray-500 text-sm" data-testid="host-hostname" { "(" (hostname) ")" }
        }
    }
}

pub fn online_pill(online: bool) -> Markup {
    if online {
        pill("pill-online", "status", "online")
    } else {
        pill("pill-offline", "status", "offline")
    }
}

pub fn error_banner(message: &str) -> Markup {
    html! { div class="banner-error" role="alert" data-testid="error-banner" { (message) } }
}

pub fn info_banner(message: &str) -> Markup {
    html! { div class="banner-info" role="status" { (message) } }
}

pub fn last_seen(now_ms: i64, at: Option<i64>) -> Markup {
    html! {
        @match at {
            Some(t) => time datetime=(clock::rfc3339(t)) title=(clock::rfc3339(t)) { (clock::ago(now_ms, t)) },
            None => span class="text-gray-400" { "never" },
        }
    }
}

/// Previous/next links for a paged list; `href(offset)` builds each URL.
pub fn pagination(offset: u64, limit: u64, total: u64, href: impl Fn(u64) -> String) -> Markup {
    let end = (offset + limit).min(total);
    html! {
        nav class="flex items-center justify-between mt-3 text-sm text-gray-600" aria-label="pagination" {
            span data-testid="page-range" {
                @if total == 0 { "no results" } @else { (offset + 1) "–" (end) " of " (total) }
            }
            div class="flex gap-2" {
                @if offset > 0 {
                    a class="btn" rel="prev" href=(href(offset.saturating_sub(limit))) { "← Previous" }
                }
                @if end < total {
                    a class="btn" rel="next" href=(href(offset + limit)) { "Next →" }
                }
            }
        }
    }
}

/// Amber "out of date" chip; nothing when the agent version is unknown or
/// equal to the server's.
pub fn update_chip(h: &crate::store::hosts::Host, server_version: &str) -> Markup {
    let agent_version = &h.agent_version;
    html! {
        @if h.is_behind(server_version) {
            span class="update-chip" data-testid="update-chip" title=(format!("Agent {agent_version} → server {server_version}")) {
                "out of date · " (agent_version) " → " (server_version)
            }
        }
    }
}

/// Dashboard tile counting hosts behind; nothing when none are.
pub fn hosts_behind_tile(n: u64) -> Markup {
    html! {
        @if n > 0 {
            a class="tile tile-amber" href=(format!("{}?updates=behind", crate::routes::DASHBOARD)) data-testid="hosts-behind-tile" {
                span class="tile-value" { (n) }
                span class="tile-label" { @if n == 1 { "host behind" } @else { "hosts behind" } }
            }
        }
    }
}
