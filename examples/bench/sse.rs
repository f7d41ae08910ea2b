//! A minimal server-sent-events reader for the live-log viewers, and the
//! line marker the benchmark puts in each log line so a viewer can tell
//! which line it got (and when it was sent) whatever HTML wraps it; the
//! same for the job page's progress bar (see [`progress_seq`]).
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// GETs an event stream: an error unless the answer is 200 and
/// `text/event-stream`.
pub async fn open(client: &reqwest::Client, url: &str) -> Result<reqwest::Response> {
    let r = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status().as_u16();
    if status != 200 {
        let body = r.text().await.unwrap_or_default();
        return Err(super::checks::http_error(
            &format!("GET {url}"),
            status,
            &body,
        ));
    }
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ensure!(
        ct.starts_with("text/event-stream"),
        "GET {url}: content-type {ct:?}"
    );
    Ok(r)
}

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

/// Waits until each of `viewers` viewers has said (on `ready`) that it got
/// its first event; 30 s each at most.
pub async fn all_ready(ready: &mut mpsc::Receiver<()>, viewers: usize) -> Result<()> {
    for i in 0..viewers {
        tokio::time::timeout(Duration::from_secs(30), ready.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| format!("only {i} of {viewers} viewers got their first event"))?;
    }
    Ok(())
}

/// Reads an opened event stream to its `end` event or its close, handing
/// each event to `on` with when its chunk arrived (`clock()`); says so on
/// `ready` at the first event. Whether the `end` came.
pub async fn follow(
    r: reqwest::Response,
    ready: mpsc::Sender<()>,
    clock: impl Fn() -> u64,
    mut on: impl FnMut(&Event, u64) -> Result<()>,
) -> Result<bool> {
    let mut body = r.bytes_stream();
    let mut parser = Parser::default();
    let mut events = Vec::new();
    let mut ready = Some(ready);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the event stream")?;
        let now = clock();
        parser.push(&chunk, &mut events);
        for e in events.drain(..) {
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
            if e.event == "end" {
                return Ok(true);
            }
            on(&e, now)?;
        }
    }
    Ok(false)
}

/// When item `seq` was sent, from a table the sender fills (ns on the
/// viewers' clock, 0: not sent); an item never sent is an error.
pub fn sent_at(table: &[AtomicU64], seq: u64, what: &str) -> Result<u64> {
    let at = table
        .get(seq as usize)
        .map(|a| a.load(Ordering::Acquire))
        .unwrap_or(0);
    ensure!(at != 0, "{what} {seq} arrived but was never sent");
    Ok(at)
}

/// The `files_done` of the progress bar a `progress` event carries (the
/// job page renders "… · {files_done} of {total_files} files"): the
/// benchmark numbers its progress reports there.
pub fn progress_seq(html: &str) -> Option<u64> {
    let text = html.split("data-testid=\"job-progress-text\">").nth(1)?;
    let text = &text[..text.find('<')?];
    let files = text.split(" · ").find(|s| s.ends_with(" files"))?;
    files.split(" of ").next()?.trim().parse().ok()
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

    #[test]
    fn progress_numbers_survive_the_servers_progress_bar() {
        let p = agent::wire::JobProgress {
            job_id: 1,
            percent: 12.5,
            bytes_done: 7 << 20,
            total_bytes: 60 << 20,
            files_done: 7,
            total_files: 60,
            seconds_remaining: Some(53),
        };
        let html = restic_manager::views::jobs::progress_bar(Some(&p)).into_string();
        assert_eq!(progress_seq(&html), Some(7), "{html}");
        let none = restic_manager::views::jobs::progress_bar(None).into_string();
        assert_eq!(progress_seq(&none), None);
    }

    #[test]
    fn only_what_was_sent_has_a_send_time() {
        let table: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        table[2].store(17, Ordering::Release);
        assert_eq!(sent_at(&table, 2, "line").unwrap(), 17);
        assert!(sent_at(&table, 3, "line").is_err());
        let e = sent_at(&table, 9, "progress report")
            .unwrap_err()
            .to_string();
        assert!(e.contains("progress report 9"), "{e}");
    }
}
