//! Webhook targets and the delivery queue. A delivery row is written before
//! anything is sent, so pending deliveries survive a restart and are retried.
//! A target's secret is stored (it keys the signature) but never leaves this
//! server: `Target` redacts it in `Debug` and is not `Serialize`.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::Serialize;

use super::{Result, StoreError, is_unique_violation};
use crate::entities::{notification_deliveries as deliveries, notification_targets as targets};

#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub secret: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
}

impl Target {
    pub fn has_secret(&self) -> bool {
        self.secret.as_deref().is_some_and(|s| !s.is_empty())
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &self.has_secret().then_some("<redacted>"))
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl From<targets::Model> for Target {
    fn from(m: targets::Model) -> Self {
        Target {
            id: m.id,
            name: m.name,
            url: m.url,
            secret: m.secret,
            enabled: m.enabled,
            created_at: m.created_at,
        }
    }
}

pub struct NewTarget<'a> {
    pub name: &'a str,
    pub url: &'a str,
    /// Empty or None: no signature header.
    pub secret: Option<&'a str>,
}

pub const MAX_URL: usize = 2048;
pub const MAX_SECRET: usize = 256;

/// Checks a target; returns the normalised URL.
pub fn validate_target(t: &NewTarget) -> Result<String> {
    let name_ok = !t.name.is_empty()
        && t.name.chars().count() <= 64
        && t.name.chars().all(|c| !c.is_control());
    if !name_ok {
        return Err(StoreError::Invalid(
            "invalid_name",
            "a target name is 1–64 characters".into(),
        ));
    }
    let bad_url = || {
        StoreError::Invalid(
            "invalid_url",
            "the URL must be an absolute http:// or https:// address, e.g. https://hooks.example.com/rm"
                .into(),
        )
    };
    if t.url.len() > MAX_URL {
        return Err(bad_url());
    }
    let url = reqwest::Url::parse(t.url).map_err(|_| bad_url())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad_url());
    }
    if t.secret
        .is_some_and(|s| s.len() > MAX_SECRET || s.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(
            "invalid_secret",
            format!("the secret is at most {MAX_SECRET} bytes, with no control characters"),
        ));
    }
    Ok(url.to_string())
}

pub async fn create_target<C: ConnectionTrait>(
    db: &C,
    t: &NewTarget<'_>,
    now: i64,
) -> Result<Target> {
    let url = validate_target(t)?;
    let m = targets::ActiveModel {
        name: Set(t.name.to_string()),
        url: Set(url),
        secret: Set(t.secret.filter(|s| !s.is_empty()).map(str::to_string)),
        enabled: Set(true),
        created_at: Set(now),
        ..Default::default()
    };
    match m.insert(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
            "target_exists",
            format!("a notification target named {:?} already exists", t.name),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn get_target<C: ConnectionTrait>(db: &C, id: i64) -> Result<Target> {
    targets::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("notification target"))
}

pub async fn list_targets<C: ConnectionTrait>(db: &C) -> Result<Vec<Target>> {
    Ok(targets::Entity::find()
        .order_by_asc(targets::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn enabled_targets<C: ConnectionTrait>(db: &C) -> Result<Vec<Target>> {
    Ok(targets::Entity::find()
        .filter(targets::Column::Enabled.eq(true))
        .order_by_asc(targets::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Removes a target and (cascade) its deliveries.
pub async fn delete_target<C: ConnectionTrait>(db: &C, id: i64) -> Result<Target> {
    let t = get_target(db, id).await?;
    targets::Entity::delete_by_id(id).exec(db).await?;
    Ok(t)
}

macro_rules! string_enum {
    ($name:ident { $($var:ident => $s:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),* }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),* } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$var),)* _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(DeliveryEvent { Raised => "raised", Resolved => "resolved", Test => "test" });
string_enum!(DeliveryStatus { Pending => "pending", Delivered => "delivered", Failed => "failed" });

impl DeliveryEvent {
    /// The `event` of the JSON body and the `X-RM-Event` header.
    pub fn wire_name(self) -> &'static str {
        match self {
            DeliveryEvent::Raised => "alert.raised",
            DeliveryEvent::Resolved => "alert.resolved",
            DeliveryEvent::Test => "test",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub target_id: i64,
    pub alert_id: Option<i64>,
    pub event: DeliveryEvent,
    /// The event's JSON object, without `sent_at` (added per attempt).
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<deliveries::Model> for Delivery {
    fn from(m: deliveries::Model) -> Self {
        Delivery {
            id: m.id,
            target_id: m.target_id,
            alert_id: m.alert_id,
            event: DeliveryEvent::parse(&m.event).unwrap_or(DeliveryEvent::Test),
            payload: m.payload,
            status: DeliveryStatus::parse(&m.status).unwrap_or(DeliveryStatus::Failed),
            attempts: m.attempts,
            last_error: m.last_error,
            next_attempt_at: m.next_attempt_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

pub async fn create_delivery<C: ConnectionTrait>(
    db: &C,
    target_id: i64,
    alert_id: Option<i64>,
    event: DeliveryEvent,
    payload: &str,
    now: i64,
) -> Result<Delivery> {
    let m = deliveries::ActiveModel {
        target_id: Set(target_id),
        alert_id: Set(alert_id),
        event: Set(event.as_str().into()),
        payload: Set(payload.to_string()),
        status: Set(DeliveryStatus::Pending.as_str().into()),
        attempts: Set(0),
        last_error: Set(None),
        next_attempt_at: Set(now),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(m.into())
}

pub async fn get_delivery<C: ConnectionTrait>(db: &C, id: i64) -> Result<Delivery> {
    deliveries::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Into::into)
        .ok_or(StoreError::NotFound("delivery"))
}

/// `(delivery id, target id)` of deliveries still to send, oldest first.
pub async fn pending<C: ConnectionTrait>(db: &C) -> Result<Vec<(i64, i64)>> {
    Ok(deliveries::Entity::find()
        .select_only()
        .column(deliveries::Column::Id)
        .column(deliveries::Column::TargetId)
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending.as_str()))
        .order_by_asc(deliveries::Column::Id)
        .into_tuple::<(i64, i64)>()
        .all(db)
        .await?)
}

/// The outcome of one attempt.
#[derive(Clone, Debug)]
pub enum Attempt {
    Delivered,
    /// Failed; try again at `next_at`.
    Retry {
        error: String,
        next_at: i64,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
}

/// Records attempt number `attempts` of a pending delivery. A delivery that
/// is no longer pending is left alone.
pub async fn record_attempt<C: ConnectionTrait>(
    db: &C,
    id: i64,
    attempts: i32,
    outcome: &Attempt,
    now: i64,
) -> Result<()> {
    let mut q = deliveries::Entity::update_many()
        .col_expr(deliveries::Column::Attempts, Expr::value(attempts))
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(now));
    q = match outcome {
        Attempt::Delivered => q.col_expr(
            deliveries::Column::Status,
            Expr::value(DeliveryStatus::Delivered.as_str()),
        ),
        Attempt::Retry { error, next_at } => q
            .col_expr(deliveries::Column::LastError, Expr::value(error.as_str()))
            .col_expr(deliveries::Column::NextAttemptAt, Expr::value(*next_at)),
        Attempt::Failed { error } => q
            .col_expr(deliveries::Column::LastError, Expr::value(error.as_str()))
            .col_expr(
                deliveries::Column::Status,
                Expr::value(DeliveryStatus::Failed.as_str()),
            ),
    };
    q.filter(deliveries::Column::Id.eq(id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// The most recent deliveries, newest first.
pub async fn recent_deliveries<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<Delivery>> {
    Ok(deliveries::Entity::find()
        .order_by_desc(deliveries::Column::Id)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(url: &'a str, secret: Option<&'a str>) -> NewTarget<'a> {
        NewTarget {
            name: "hook",
            url,
            secret,
        }
    }

    #[test]
    fn only_http_and_https_urls() {
        for ok in ["http://127.0.0.1:9/x", "https://hooks.example.com/a?b=c"] {
            assert!(validate_target(&t(ok, None)).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "",
            "http://",
        ] {
            assert!(
                matches!(
                    validate_target(&t(bad, None)),
                    Err(StoreError::Invalid("invalid_url", _))
                ),
                "{bad:?} accepted"
            );
        }
        let long = "x".repeat(MAX_SECRET + 1);
        assert!(validate_target(&t("http://a/", Some(&long))).is_err());
        assert!(validate_target(&t("http://a/", Some("a\nb"))).is_err());
        assert!(validate_target(&t("http://a/", Some("s3cret-ok"))).is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let target = Target {
            id: 1,
            name: "n".into(),
            url: "http://a/".into(),
            secret: Some("hunter2-secret".into()),
            enabled: true,
            created_at: 0,
        };
        let dbg = format!("{target:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
