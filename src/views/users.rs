//! The admin page for users: add, change role, reset password, remove.
use maud::{Markup, html};

use super::{
    Nav,
    components::{error_banner, info_banner},
    page,
};
use crate::{
    clock, routes,
    store::users::{Role, User},
};

fn role_select(name: &str, selected: Role) -> Markup {
    html! {
        select class="input" name=(name) {
            @for r in Role::ALL {
                option value=(r.as_str()) selected[r == selected] { (r.as_str()) }
            }
        }
    }
}

pub fn users_page(me: &User, users: &[User], error: Option<&str>, notice: Option<&str>) -> Markup {
    page(
        "Users",
        me,
        Nav::Users,
        html! {
            h1 class="text-2xl font-semibold mb-4" { "Users" }
            @if let Some(e) = error { (error_banner(e)) }
            @if let Some(n) = notice { (info_banner(n)) }
            div class="card p-0 overflow-x-auto mb-6" {
                table class="table-base" {
                    thead { tr { th { "Username" } th { "Role" } th { "Created" } th { "Reset password" } th {} } }
                    tbody {
                        @for u in users {
                            tr data-testid="user-row" data-username=(u.username) {
                                td class="font-medium" { (u.username) @if u.id == me.id { " (you)" } }
                                td {
                                    form method="post" action=(routes::user_role(u.id)) class="flex gap-2" {
                                        (role_select("role", u.role))
                                        button class="btn" type="submit" { "Save" }
                                    }
                                }
                                td { (clock::rfc3339(u.created_at)) }
                                td {
                                    form method="post" action=(routes::user_password(u.id)) class="flex gap-2" {
                                        input class="input" type="password" name="password" minlength="8" required placeholder="new password" autocomplete="new-password";
                                        button class="btn" type="submit" { "Reset" }
                                    }
                                }
                                td {
                                    form method="post" action=(routes::user_delete(u.id)) {
                                        button class="btn btn-danger" type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            div class="card max-w-lg" {
                h2 class="font-semibold mb-3" { "Add a user" }
                form method="post" action=(routes::USERS_PAGE) class="space-y-3" {
                    div { label class="label" for="new-username" { "Username" } input class="input" id="new-username" name="username" required; }
                    div { label class="label" for="new-password" { "Password (at least 8 characters)" } input class="input" id="new-password" name="password" type="password" minlength="8" required autocomplete="new-password"; }
                    div { label class="label" for="new-role" { "Role" } (role_select("role", Role::Viewer)) }
                    button class="btn btn-primary" type="submit" { "Add user" }
                }
            }
        },
    )
}
