//! One error type for handlers. `AppError` renders JSON
//! (`{"error","message"}`) for the API; `PageError` renders the same error
//! as a readable page (401 becomes a redirect to the login page), or, for an
//! htmx request, as a banner fragment put into the page's error slot
//! ([`htmx_errors`]).
use actix_web::{
    HttpResponse, ResponseError,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::StatusCode,
    http::header,
    middleware::Next,
};
use serde::Serialize;

pub use crate::error::AppError;
use crate::{store::StoreError, views};

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(..) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized
            | AppError::BadCredentials(_)
            | AppError::Unauthenticated(..) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::CrossSite => StatusCode::FORBIDDEN,
            AppError::NotFound(..) => StatusCode::NOT_FOUND,
            AppError::Conflict(..) => StatusCode::CONFLICT,
            AppError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            AppError::BadGateway(..) => StatusCode::BAD_GATEWAY,
            AppError::GatewayTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let AppError::TooManyRequests(_, _, secs) = self {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        resp.json(Body {
            error: self.code(),
            message: self.message(),
        })
    }
}

/// The same errors, rendered for people in a browser.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PageError(#[from] pub AppError);

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError(e.into())
    }
}

impl From<sea_orm::DbErr> for PageError {
    fn from(e: sea_orm::DbErr) -> Self {
        PageError(e.into())
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError(AppError::Internal(e))
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(e) = &self.0 {
            tracing::error!(error = format!("{e:#}"), "page request failed");
        }
        if matches!(self.0, AppError::Unauthorized) {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, crate::routes::LOGIN))
                .finish();
        }
        super::html(
            self.status_code(),
            views::error_page(self.status_code(), &self.0.message()),
        )
    }
}

/// Where an htmx request's error banner goes: an element of every layout.
pub const ERROR_SLOT_ID: &str = "page-error";
const ERROR_SLOT: &str = "#page-error";

impl PageError {
    /// The error for an htmx request: the banner alone, swapped into the
    /// page's error slot (`HX-Retarget`, `HX-Reswap`) with the error's status;
    /// htmx would drop a whole error page. A missing login sends the browser
    /// to the login page (`HX-Redirect`).
    fn htmx_response(&self) -> HttpResponse {
        if matches!(self.0, AppError::Unauthorized) {
            return HttpResponse::build(self.status_code())
                .insert_header(("HX-Redirect", crate::routes::LOGIN))
                .finish();
        }
        let banner = views::components::error_banner(&self.0.message());
        let mut resp = super::html(
            self.status_code(),
            maud::html! { div class="mb-4" { (banner) } },
        );
        let headers = resp.headers_mut();
        headers.insert(
            header::HeaderName::from_static("hx-retarget"),
            header::HeaderValue::from_static(ERROR_SLOT),
        );
        headers.insert(
            header::HeaderName::from_static("hx-reswap"),
            header::HeaderValue::from_static("innerHTML"),
        );
        resp
    }
}

/// Middleware: a page error answering an htmx request becomes
/// [`PageError::htmx_response`]. Everything else passes unchanged.
pub async fn htmx_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !super::is_htmx(req.request()) || super::is_api(req.request()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    match next.call(req).await {
        Ok(res) => {
            let fragment = res
                .response()
                .error()
                .and_then(|e| e.as_error::<PageError>())
                .map(PageError::htmx_response);
            Ok(match fragment {
                Some(fragment) => res.into_response(fragment),
                None => res.map_into_boxed_body(),
            })
        }
        // An error from an inner middleware (the cross-site guard).
        Err(e) => Err(match e.as_error::<PageError>() {
            Some(pe) => {
                actix_web::error::InternalError::from_response(pe.to_string(), pe.htmx_response())
                    .into()
            }
            None => e,
        }),
    }
}
