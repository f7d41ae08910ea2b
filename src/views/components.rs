//! Small reusable pieces: pills, chips, banners, pagination.
use maud::{Markup, html};

use crate::clock;

pub fn online_pill(online: bool) -> Markup {
    html! {
        @if online {
            span class="pill-online" data-testid="status" { "online" }
        } @else {
            span class="pill-offline" data-testid="status" { "offline" }
        }
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
