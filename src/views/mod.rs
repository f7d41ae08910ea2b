//! maud views: the page shell, small components, one file per page. Views
//! take plain data and return `Markup`; they never touch the database.
pub mod alerts;
pub mod audit;
pub mod components;
pub mod dashboard;
pub mod fleet;
pub mod host;
pub mod jobs;
pub mod layout;
pub mod login;
pub mod notifications;
pub mod plans;
pub mod repositories;
pub mod restore;
pub mod users;

use actix_web::http::StatusCode;
use maud::{Markup, html};

pub use layout::{Nav, page};

/// A readable error page (no navigation: the user may not be logged in).
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout::bare(
        title,
        html! {
            div class="card max-w-lg mx-auto mt-16 text-center" {
                h1 class="text-2xl font-semibold mb-2" { (status.as_u16()) " · " (title) }
                p class="text-gray-700 mb-6" data-testid="error-message" { (message) }
                a class="link" href="/" { "Back to the dashboard" }
            }
        },
    )
}
