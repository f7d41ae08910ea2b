//! The one error type of the server's actions: what went wrong, with a
//! stable code and a message a person can act on. The web layer renders it
//! (`web::error`: JSON for the API, a page or an htmx banner for people);
//! services return it without knowing about HTTP.
use crate::store::StoreError;

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
            "plan" => "plan_not_found",
            "notification target" => "target_not_found",
            _ => "not_found",
        };
        AppError::NotFound(code, format!("no such {what}: it may have been removed"))
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

impl From<sea_orm::DbErr> for AppError {
    fn from(e: sea_orm::DbErr) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}
