//! Schedules: a standard 5-field cron expression, `@hourly`, `@daily`,
//! `@weekly`, `@monthly` (croner), or `@every <duration>` (ours: at least
//! 10 s), evaluated in an IANA time zone (chrono-tz) so runs stay at the
//! same wall-clock time across DST changes. Pure: the caller gives `now`.
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// Shortest `@every` interval.
pub const MIN_EVERY_SECS: u64 = 10;

#[derive(Clone, Debug)]
pub enum Schedule {
    Cron(Box<Cron>),
    /// Runs every this many seconds, counted from the Unix epoch so that
    /// a restart does not shift the grid.
    Every(u64),
}

/// Parses a schedule; the message says what is wrong and what is allowed.
pub fn parse(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("schedule must not be empty".into());
    }
    if let Some(rest) = text.strip_prefix("@every") {
        let rest = rest.trim();
        let secs = parse_duration(rest).ok_or_else(|| {
            format!("@every needs a duration such as 30s, 15m, 6h or 1h30m, not {rest:?}")
        })?;
        if secs < MIN_EVERY_SECS {
            return Err(format!("@every must be at least {MIN_EVERY_SECS}s"));
        }
        return Ok(Schedule::Every(secs));
    }
    let is_alias = matches!(
        text,
        "@hourly" | "@daily" | "@weekly" | "@monthly" | "@yearly" | "@annually" | "@midnight"
    );
    if text.starts_with('@') && !is_alias {
        return Err(format!(
            "unknown schedule {text:?}: use 5-field cron, @hourly, @daily, @weekly, @monthly or @every <duration>"
        ));
    }
    if !is_alias && text.split_whitespace().count() != 5 {
        return Err(format!(
            "schedule {text:?} must have 5 fields (minute hour day-of-month month day-of-week)"
        ));
    }
    Cron::from_str(text)
        .map(|c| Schedule::Cron(Box::new(c)))
        .map_err(|e| format!("invalid cron expression {text:?}: {e}"))
}

/// `1h30m`, `45s`, `2d`: a sum of whole numbers with units s, m, h, d.
pub fn parse_duration(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(total)
}

/// An IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as UTC or Europe/Berlin")
    })
}

impl Schedule {
    /// The first run strictly after `after_ms` (Unix ms), or `None` if
    /// the expression never matches again.
    pub fn next_after(&self, after_ms: i64, tz: Tz) -> Option<i64> {
        match self {
            Schedule::Every(secs) => {
                let step = (*secs as i64).checked_mul(1000)?;
                Some((after_ms.div_euclid(step) + 1) * step)
            }
            Schedule::Cron(cron) => {
                let after = Utc.timestamp_millis_opt(after_ms).single()?;
                let local: DateTime<Tz> = after.with_timezone(&tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }

    /// The next `n` runs after `after_ms`.
    pub fn upcoming(&self, after_ms: i64, tz: Tz, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut t = after_ms;
        while out.len() < n {
            match self.next_after(t, tz) {
                Some(next) if next > t => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn cron_aliases_and_every_parse() {
        assert!(parse("0 3 * * *").is_ok());
        assert!(parse("@daily").is_ok());
        assert!(parse("@hourly").is_ok());
        assert!(matches!(parse("@every 6h"), Ok(Schedule::Every(21600))));
        assert!(matches!(parse("@every 1h30m"), Ok(Schedule::Every(5400))));
        assert!(parse("@every 5s").unwrap_err().contains("at least 10s"));
        assert!(parse("@every soon").is_err());
        assert!(parse("@sometimes").is_err());
        assert!(parse("61 * * * *").is_err());
        assert!(parse("* * * *").unwrap_err().contains("5 fields"));
        assert!(parse("0 0 3 * * *").unwrap_err().contains("5 fields"));
        assert!(parse("").is_err());
    }

    #[test]
    fn daily_runs_keep_their_wall_clock_time_across_dst() {
        let tz = parse_tz("Europe/Berlin").unwrap();
        let s = parse("30 2 * * *").unwrap();
        // Spring forward: 2026-03-29 02:00 CET jumps to 03:00 CEST, so 02:30
        // does not exist that day: the run happens right after the gap.
        let runs = s.upcoming(ms("2026-03-27T12:00:00Z"), tz, 3);
        let shown: Vec<String> = runs
            .iter()
            .map(|t| {
                Utc.timestamp_millis_opt(*t)
                    .unwrap()
                    .with_timezone(&tz)
                    .format("%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect();
        assert_eq!(shown[0], "03-28 02:30 CET");
        assert_eq!(shown[1], "03-29 03:00 CEST");
        assert_eq!(shown[2], "03-30 02:30 CEST");
        // Fall back: 02:30 happens twice on 2026-10-25; one run that day.
        let runs = s.upcoming(ms("2026-10-24T12:00:00Z"), tz, 3);
        let days: Vec<String> = runs
            .iter()
            .map(|t| {
                Utc.timestamp_millis_opt(*t)
                    .unwrap()
                    .with_timezone(&tz)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(days, vec!["10-25 02:30", "10-26 02:30", "10-27 02:30"]);
    }

    #[test]
    fn every_runs_on_a_fixed_grid() {
        let s = parse("@every 10s").unwrap();
        assert_eq!(s.next_after(12_345, Tz::UTC), Some(20_000));
        assert_eq!(s.next_after(20_000, Tz::UTC), Some(30_000));
        assert_eq!(s.upcoming(0, Tz::UTC, 3), vec![10_000, 20_000, 30_000]);
    }

    #[test]
    fn unknown_zones_are_refused() {
        assert!(parse_tz("Mars/Olympus").is_err());
        assert!(parse_tz("UTC").is_ok());
    }
}
