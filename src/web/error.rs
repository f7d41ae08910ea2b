//! One error type for handlers. `AppError` renders JSON
//! (`{"error","message"}`) for the API; `PageError` renders the same error
//! as a readable page (401 becomes a redirect to the login page).
use actix_web::{HttpResponse, ResponseError, http::StatusCode, http::header};
use serde::Serialize;

use crate::{store::StoreError, views};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("log in first")]
    Unauthorized,
    #[error("{0}")]
    BadCredentials(String),
    /// A credential other than a session (agent secret, enrollment token).
    #[error("{1}")]
    Unauthenticated(&'static str, String),
    #[error("your role does not allow this: ask an admin")]
    Forbidden,
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    TooManyRequests(&'static str, String, u64),
    /// The agent answered with a failure (502).
    #[error("{1}")]
    BadGateway(&'static str, String),
    /// The agent did not answer in time (504).
    #[error("{1}")]
    GatewayTimeout(&'static str, String),
    #[error("cross-site request refused: submit the form from this server's own pages")]
    CrossSite,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
}

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(c, _)
            | AppError::NotFound(c, _)
            | AppError::Conflict(c, _)
            | AppError::TooManyRequests(c, _, _)
            | AppError::BadGateway(c, _)
            | AppError::GatewayTimeout(c, _)
            | AppError::Unauthenticated(c, _) => c,
            AppError::Unauthorized => "unauthorized",
            AppError::BadCredentials(_) => "invalid_credentials",
            AppError::Forbidden => "forbidden",
            AppError::CrossSite => "cross_site",
            AppError::Internal(_) => "internal",
        }
    }

    /// What a person reads: says what happened and what to do.
    pub fn message(&self) -> String {
        match self {
            AppError::Internal(_) => {
                "something went wrong on the server; the details are in its log".into()
            }
            other => other.to_string(),
        }
    }

    pub fn not_found(what: &'static str) -> Self {
        let code = match what {
            "host" => "host_not_found",
            "user" => "user_not_found",
            "job" => "job_not_found",
            "alert" => "alert_not_found",
            "fleet update" => "fleet_update_not_found",
            "repository" => "repository_not_found",
            "snapshot" => "snapshot_not_found",
            _ => "not_found",
        };
        AppError::NotFound(code, format!("no such {what}: it may have been removed"))
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::not_found(what),
            StoreError::Conflict(code, msg) => AppError::Conflict(code, msg),
            StoreError::Invalid(code, msg) => AppError::BadRequest(code, msg),
            StoreError::Db(e) => AppError::Internal(anyhow::Error::new(e)),
        }
    }
}

impl From<crate::restic::repositories::RepoError> for AppError {
    fn from(e: crate::restic::repositories::RepoError) -> Self {
        use crate::restic::repositories::RepoError;
        match e {
            RepoError::Invalid(msg) => AppError::BadRequest("invalid_input", msg),
            RepoError::Store(s) => s.into(),
            RepoError::Secret(s) => AppError::Internal(anyhow::Error::new(s)),
        }
    }
}

impl From<crate::restic::jobs::QueueError> for AppError {
    fn from(e: crate::restic::jobs::QueueError) -> Self {
        use crate::restic::jobs::QueueError;
        match e {
            QueueError::Invalid(msg) => AppError::BadRequest("invalid_input", msg),
            QueueError::Store(s) => s.into(),
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(e: sea_orm::DbErr) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
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
        HttpResponse::build(self.status_code())
            .content_type("text/html; charset=utf-8")
            .body(views::error_page(self.status_code(), &self.0.message()).into_string())
    }
}
