//! The page shell: head with embedded assets, top navigation, main area.
use maud::{DOCTYPE, Markup, html};

use crate::{
    routes,
    store::users::{Role, User},
    version,
};

/// Which navigation entry is active.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Jobs,
    Repositories,
    Plans,
    AddHost,
    Users,
    Audit,
    Alerts,
    Notifications,
    Fleet,
    None,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx's injected indicator <style> would be blocked by our CSP.
            // Error answers (4xx/5xx) are swapped too: the server sends htmx
            // an error as a banner for the error slot (web::error::htmx_errors).
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"responseHandling":[{"code":"204","swap":false},{"code":"[23]..","swap":true},{"code":"[45]..","swap":true,"error":true},{"code":"...","swap":false}]}"#;
            title { (title) " · restic-manager" }
            link rel="icon" href=(routes::asset("favicon.svg")) type="image/svg+xml";
            link rel="stylesheet" href=(routes::asset("app.css"));
            script src=(routes::asset("htmx.min.js")) defer {}
            script src=(routes::asset("htmx-ext-sse.js")) defer {}
            script src=(routes::asset("app.js")) defer {}
        }
    }
}

/// Where htmx puts an error banner (see `web::error::htmx_errors`).
fn error_slot() -> Markup {
    html! { div id=(crate::web::error::ERROR_SLOT_ID) {} }
}

/// A full page for a logged-in user.
pub fn page(title: &str, user: &User, active: Nav, body: Markup) -> Markup {
    let item = |nav: Nav, href: &str, label: &str| {
        let cls = if nav == active {
            "px-2.5 py-2 rounded text-sm bg-slate-700 text-white"
        } else {
            "px-2.5 py-2 rounded text-sm text-slate-200 hover:bg-slate-700 hover:text-white"
        };
        html! { a class=(cls) href=(href) { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body class="bg-gray-50 text-gray-900 min-h-screen" hx-boost="false" {
                header class="bg-slate-800" {
                    nav class="max-w-7xl mx-auto px-4 h-14 flex items-center gap-2" {
                        a href=(routes::DASHBOARD) class="text-white font-semibold mr-4" { "restic-manager" }
                        (item(Nav::Dashboard, routes::DASHBOARD, "Hosts"))
                        (item(Nav::Jobs, routes::JOBS_PAGE, "Jobs"))
                        (item(Nav::Repositories, routes::REPOSITORIES_PAGE, "Repositories"))
                        (item(Nav::Plans, routes::PLANS_PAGE, "Plans"))
                        (item(Nav::Alerts, routes::ALERTS_PAGE, "Alerts"))
                        @if user.role == Role::Admin {
                            (item(Nav::AddHost, routes::HOST_NEW, "Add host"))
                            (item(Nav::Fleet, routes::FLEET_UPDATE_PAGE, "Fleet update"))
                            (item(Nav::Users, routes::USERS_PAGE, "Users"))
                            (item(Nav::Audit, routes::AUDIT_PAGE, "Audit"))
                            (item(Nav::Notifications, routes::NOTIFICATIONS_PAGE, "Notifications"))
                        }
                        div class="ml-auto flex items-center gap-3 text-sm text-slate-300" {
                            span data-testid="whoami" { (user.username) " · " (user.role.as_str()) }
                            form method="post" action=(routes::LOGOUT) {
                                button class="px-3 py-1 rounded border border-slate-500 hover:bg-slate-700 text-slate-100" type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main class="max-w-7xl mx-auto px-4 py-6" {
                    (error_slot())
                    // A running fleet update shows on every page.
                    div id="fleet-banner" hx-get=(routes::FLEET_BANNER) hx-trigger="load, every 10s" hx-swap="innerHTML" {}
                    (body)
                }
                footer class="max-w-7xl mx-auto px-4 py-6 text-xs text-gray-500" {
                    "restic-manager " (version::VERSION)
                }
            }
        }
    }
}

/// A page without navigation (login, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body class="bg-gray-50 text-gray-900 min-h-screen" {
                main class="max-w-7xl mx-auto px-4 py-6" { (error_slot()) (body) }
            }
        }
    }
}
