//! The login page.
use maud::{Markup, html};

use super::{components::error_banner, layout::bare};
use crate::routes;

pub fn login(next: &str, error: Option<&str>, username: &str) -> Markup {
    bare(
        "Log in",
        html! {
            div class="card max-w-sm mx-auto mt-16" {
                h1 class="text-xl font-semibold mb-4" { "Log in to restic-manager" }
                @if let Some(e) = error { (error_banner(e)) }
                form method="post" action=(routes::LOGIN) class="space-y-4" {
                    input type="hidden" name="next" value=(next);
                    div {
                        label class="label" for="username" { "Username" }
                        input class="input" id="username" name="username" autocomplete="username" required value=(username);
                    }
                    div {
                        label class="label" for="password" { "Password" }
                        input class="input" id="password" name="password" type="password" autocomplete="current-password" required;
                    }
                    button class="btn btn-primary w-full" type="submit" { "Log in" }
                }
            }
        },
    )
}
