//! The audit page (admin): newest first, filter by action and actor, paged.
use maud::{Markup, html};

use super::{Nav, components::pagination, page};
use crate::{clock, routes, store::audit::AuditEntry, store::users::User};

pub struct AuditView<'a> {
    pub user: &'a User,
    pub entries: &'a [AuditEntry],
    pub action: &'a str,
    pub actor: &'a str,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
}

fn href(v: &AuditView, offset: u64) -> String {
    let mut q = vec![];
    if !v.action.is_empty() {
        q.push(format!("action={}", urlencoding::encode(v.action)));
    }
    if !v.actor.is_empty() {
        q.push(format!("actor={}", urlencoding::encode(v.actor)));
    }
    if offset > 0 {
        q.push(format!("offset={offset}"));
    }
    if q.is_empty() {
        routes::AUDIT_PAGE.into()
    } else {
        format!("{}?{}", routes::AUDIT_PAGE, q.join("&"))
    }
}

pub fn audit_page(v: &AuditView) -> Markup {
    page(
        "Audit log",
        v.user,
        Nav::Audit,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Audit log" }
            form method="get" action=(routes::AUDIT_PAGE) class="flex flex-wrap items-end gap-3 mb-4" {
                div { label class="label" for="action" { "Action" } input class="input" id="action" name="action" value=(v.action) placeholder="e.g. host.add"; }
                div { label class="label" for="actor" { "Actor" } input class="input" id="actor" name="actor" value=(v.actor) placeholder="username"; }
                button class="btn" type="submit" { "Filter" }
                @if !v.action.is_empty() || !v.actor.is_empty() { a class="link text-sm" href=(routes::AUDIT_PAGE) { "clear" } }
            }
            div class="card p-0 overflow-x-auto" {
                table class="table-base" {
                    thead { tr { th { "When" } th { "Actor" } th { "Action" } th { "Target" } th { "Details" } th { "From" } } }
                    tbody {
                        @for e in v.entries {
                            tr data-testid="audit-row" {
                                td { time datetime=(clock::rfc3339(e.at)) { (clock::rfc3339(e.at)) } }
                                td { (e.actor) }
                                td class="font-mono text-xs" { (e.action) }
                                td { (e.target_kind) " " (e.target_id) }
                                td class="font-mono text-xs break-all" { (e.details.to_string()) }
                                td class="text-xs" { (e.client_addr) }
                            }
                        }
                        @if v.entries.is_empty() { tr { td colspan="6" class="text-center text-gray-500 py-8" { "No audit entries match." } } }
                    }
                }
            }
            (pagination(v.offset, v.limit, v.total, |o| href(v, o)))
        },
    )
}
