//! Logging setup: human-readable by default, JSON lines for machines.
//! `RUST_LOG` overrides the default `info` filter.
//!
//! Every field of the human-readable log is written on the event's own line:
//! control characters in a value (an agent's error text, a hostname, a log
//! line it sent) are escaped (`\n`, `\u{1b}`), so text from outside cannot
//! start a forged log line or drive the terminal. JSON lines escape them by
//! themselves.
use std::fmt::Write as _;

use tracing_subscriber::{
    EnvFilter,
    field::{MakeExt, RecordFields},
    fmt::{FormatFields, format::Writer},
};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(OneLineFields::default()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The text log's field formatter: `name=value` separated by spaces, the
/// message bare, every value with its control characters escaped.
#[derive(Default)]
pub struct OneLineFields(());

impl<'w> FormatFields<'w> for OneLineFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let inner = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
            let text = escape_controls(&format!("{value:?}"));
            if field.name() == "message" {
                write!(w, "{text}")
            } else {
                write!(w, "{}={text}", field.name())
            }
        })
        .delimited(" ");
        inner.format_fields(writer, fields)
    }
}

/// `s` with each control character written as its Rust escape (`\n`,
/// `\t`, `\u{1b}`); everything else as it is.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("web-1 ünï"), "web-1 ünï");
        assert_eq!(
            escape_controls("a\nINFO forged\r\t\u{1b}[2J\0"),
            "a\\nINFO forged\\r\\t\\u{1b}[2J\\u{0}"
        );
    }

    /// The text log as `init` sets it up, written to a buffer: an event whose
    /// fields and message hold line breaks is still one line.
    #[test]
    fn a_text_log_event_with_line_breaks_in_its_fields_stays_on_one_line() {
        use std::sync::{Arc, Mutex};
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .fmt_fields(OneLineFields::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "boom\n2026-01-01T00:00:00Z  INFO forged: admin logged in";
            let span = tracing::info_span!("agent", hostname = %"vm\nFORGED span");
            let _g = span.enter();
            tracing::warn!(%reason, plain = reason, job_id = 3, "update failed: {reason}");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("reason=boom\\n2026-01-01T00:00:00Z  INFO forged"),
            "{text}"
        );
        assert!(text.contains("job_id=3"), "{text}");
        assert!(text.contains("hostname=vm\\nFORGED span"), "{text}");
        assert!(text.contains("update failed: boom\\n"), "{text}");
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
