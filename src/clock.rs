//! Wall-clock time in Unix milliseconds, injectable so tests can move it
//! (session expiry, token expiry, update deadlines).
use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every clone of it) forward; for tests.
    pub fn advance(&self, d: std::time::Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as i64, Ordering::Relaxed);
    }
}

/// RFC 3339 (UTC, seconds) for API bodies and pages.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// "3 min ago"-style text for pages.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=9 => "just now".into(),
        10..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `ms` as wall-clock time in the IANA zone `tz` (UTC if unknown).
pub fn in_zone(ms: i64, tz: &str) -> String {
    let zone: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::Tz::UTC);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&zone)
                .format("%a %Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_default()
}
