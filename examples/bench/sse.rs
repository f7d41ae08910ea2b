//! A minimal server-sent-events reader for the live-log viewers, and the
//! line marker the benchmark puts in each log line so a viewer can tell
//! which line it got (and when it was sent) whatever HTML wraps it.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub id: Option<i64>,
    pub data: String,
}

/// Splits a byte stream into events; comments (keepalives) are skipped.
#[derive(Default)]
pub struct Parser {
    buf: String,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut ev = Event {
                event: String::new(),
                id: None,
                data: String::new(),
            };
            let mut data = Vec::new();
            for l in block.lines() {
                if let Some(v) = l.strip_prefix("event:") {
                    ev.event = v.trim_start().to_string();
                } else if let Some(v) = l.strip_prefix("id:") {
                    ev.id = v.trim().parse().ok();
                } else if let Some(v) = l.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if ev.event.is_empty() && data.is_empty() {
                continue;
            }
            if ev.event.is_empty() {
                ev.event = "message".into();
            }
            ev.data = data.join("\n");
            out.push(ev);
        }
    }
}

const MARK: &str = "bench-line-";

/// The text of benchmark log line `seq`: the marker plus filler to a
/// typical restic output length.
pub fn line_text(seq: u64) -> String {
    format!("{MARK}{seq}-end files: 1234 new, 56 changed, 78901 unmodified; 12.3 GiB")
}

/// The `seq` of the benchmark line inside `data` (plain or HTML).
pub fn line_seq(data: &str) -> Option<u64> {
    let start = data.find(MARK)? + MARK.len();
    let digits: String = data[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if !data[start + digits.len()..].starts_with("-end") {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_keepalives_skipped() {
        let mut p = Parser::default();
        let mut out = vec![];
        p.push(b"id: 7\nevent: line\ndata: <div>a</d", &mut out);
        assert!(out.is_empty());
        p.push(b"iv>\n\n: keepalive\n\nevent: end\ndata: \n\n", &mut out);
        assert_eq!(
            out,
            vec![
                Event {
                    event: "line".into(),
                    id: Some(7),
                    data: "<div>a</div>".into()
                },
                Event {
                    event: "end".into(),
                    id: None,
                    data: String::new()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut p = Parser::default();
        let mut out = vec![];
        p.push(b"event: status\ndata: one\ndata: two\n\n", &mut out);
        assert_eq!(out[0].data, "one\ntwo");
    }

    #[test]
    fn line_numbers_survive_html() {
        let t = line_text(42);
        assert_eq!(line_seq(&t), Some(42));
        let html = format!("<div class=\"log-line\"><span>{t}</span></div>");
        assert_eq!(line_seq(&html), Some(42));
        assert_eq!(line_seq("no marker"), None);
        assert_eq!(line_seq("bench-line-12"), None, "cut short");
    }
}
