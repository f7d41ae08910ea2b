//! Jobs driven by a real agent's messages over a real WebSocket, and the
//! live log stream (SSE) that viewers watch.
use crate::common::{
    sim::{self, new_job},
    *,
};
use agent::wire::{FinishedStatus, JobFinished, JobProgress, JobStarted, LogStream};
use futures_util::StreamExt;
use restic_manager::{
    routes,
    store::{self, users::Role},
};
use serde_json::Value;

fn line(job_id: i64, seq: i64, data: &str) -> LogStream {
    sim::log_line(job_id, seq, data)
}

fn started(job_id: i64) -> JobStarted {
    JobStarted { job_id, kind: None }
}

fn succeeded(job_id: i64) -> JobFinished {
    JobFinished {
        job_id,
        status: FinishedStatus::Succeeded,
        error: None,
        exit_code: Some(0),
        warning: false,
        error_kind: None,
        result: None,
    }
}

async fn job(app: &TestApp, id: i64) -> Value {
    app.get_json(&routes::api_job(id)).await
}

/// A job's whole log (up to the API's 10,000-line page).
async fn logs(app: &TestApp, id: i64) -> Vec<Value> {
    app.get_json(&format!("{}?limit=10000", routes::api_job_logs(id)))
        .await
}

async fn wait_lines(app: &TestApp, id: i64, n: usize) -> Vec<Value> {
    eventually(&format!("{n} log lines"), || async {
        let l = logs(app, id).await;
        (l.len() >= n).then_some(l)
    })
    .await
}

#[tokio::test]
async fn agent_messages_drive_a_job_through_its_lifecycle() {
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    assert_eq!(job(&app, id).await["status"], "queued");

    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    let j = app.wait_job(id, "running").await;
    assert!(j["started_at"].is_string());
    for (seq, text) in [
        (1, "one"),
        (2, "two"),
        (2, "two again"),
        (4, "four"),
        (3, "three"),
    ] {
        s.send_message(&line(id, seq, text)).await.unwrap();
    }
    s.send_message(&succeeded(id)).await.unwrap();
    let j = app.wait_job(id, "succeeded").await;
    assert!(j["finished_at"].is_string());
    assert_eq!(j["exit_code"], 0);

    // The duplicate seq 2 was dropped; the late seq 3 was kept.
    let l = logs(&app, id).await;
    let seqs: Vec<i64> = l.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    let data: Vec<&str> = l.iter().map(|v| v["data"].as_str().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 4, 3]);
    assert_eq!(data, ["one", "two", "four", "three"]);

    // The host page lists it among recent jobs; the jobs page filters.
    let page = app
        .admin()
        .await
        .get(app.at(&routes::host(cfg.host_id)))
        .send()
        .await
        .unwrap();
    let html = scraper::Html::parse_document(&page.text().await.unwrap());
    let rows = scraper::Selector::parse("[data-testid=recent-jobs] [data-testid=job-row]").unwrap();
    assert_eq!(html.select(&rows).count(), 1);
    let list: Vec<Value> = app
        .admin()
        .await
        .get(app.at(&format!(
            "/api/jobs?host_id={}&status=succeeded&kind=backup",
            cfg.host_id
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let none: Vec<Value> = app
        .admin()
        .await
        .get(app.at("/api/jobs?status=failed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_error(
        app.admin()
            .await
            .get(app.at("/api/jobs?status=bogus"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_status",
    )
    .await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_terminal_job_never_changes_and_other_hosts_cannot_touch_a_job() {
    let app = TestApp::spawn().await;
    let (owner, a) = app.host("web-1").online().await;
    let (_other, b) = app.host("web-2").online().await;
    let id = new_job(&app, owner.host_id).await;

    // Another host's agent: start, log, finish: all refused.
    let sb = b.sender();
    sb.send_message(&started(id)).await.unwrap();
    sb.send_message(&line(id, 1, "forged")).await.unwrap();
    sb.send_message(&JobFinished {
        job_id: id,
        status: FinishedStatus::Failed,
        error: Some("forged".into()),
        exit_code: None,
        warning: false,
        error_kind: None,
        result: None,
    })
    .await
    .unwrap();
    // Unknown job ids are refused too, and the connection survives.
    sb.send_message(&started(999_999)).await.unwrap();

    let sa = a.sender();
    sa.send_message(&JobFinished {
        job_id: id,
        status: FinishedStatus::Failed,
        error: Some("disk full".into()),
        exit_code: Some(3),
        warning: false,
        error_kind: None,
        result: None,
    })
    .await
    .unwrap();
    let j = app.wait_job(id, "failed").await;
    assert_eq!(j["error"], "disk full");
    assert!(
        logs(&app, id).await.is_empty(),
        "the forged line must not be stored"
    );

    // After the terminal state nothing changes it.
    sa.send_message(&started(id)).await.unwrap();
    sa.send_message(&line(id, 1, "late")).await.unwrap();
    sa.send_message(&succeeded(id)).await.unwrap();
    // A later message on the same connection proves the earlier ones were handled.
    let probe = new_job(&app, owner.host_id).await;
    sa.send_message(&started(probe)).await.unwrap();
    app.wait_job(probe, "running").await;
    let j = job(&app, id).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "disk full");
    assert!(logs(&app, id).await.is_empty());
    assert!(
        b.state().borrow().connected,
        "b's connection survived the refusals"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Reads SSE events (`(event, id, data)`) from a streaming response.
struct Sse {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    async fn open(c: &reqwest::Client, url: String, last_event_id: Option<i64>) -> Sse {
        let mut req = c.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Sse {
            stream: Box::pin(r.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Option<(String, Option<i64>, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut ev, mut id, mut data) = (String::new(), None, vec![]);
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("event: ") {
                        ev = v.into();
                    }
                    if let Some(v) = l.strip_prefix("id: ") {
                        id = v.parse().ok();
                    }
                    if let Some(v) = l.strip_prefix("data: ") {
                        data.push(v.to_string());
                    }
                }
                if ev.is_empty() {
                    continue;
                } // keepalive comment
                return Some((ev, id, data.join("\n")));
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .ok()??
                .ok()?;
            // As a browser reads it: CRLF, CR and LF all end a line.
            let text = String::from_utf8_lossy(&chunk);
            self.buf
                .push_str(&text.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }

    /// Next `line` event's (id, data), skipping status events.
    async fn next_line(&mut self) -> Option<(i64, String)> {
        loop {
            let (ev, id, data) = self.next().await?;
            match ev.as_str() {
                "line" => return Some((id?, data)),
                "end" => return None,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_viewer_resumes_the_live_log_with_last_event_id_and_sees_each_line_once() {
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    let viewer = app.as_role(Role::Viewer).await;
    let url = app.at(&routes::job_events(id));

    let mut seen = vec![];
    let mut sse = Sse::open(&viewer, url.clone(), None).await;
    for i in 1..=5 {
        s.send_message(&line(id, i, &format!("line {i}")))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        seen.push(sse.next_line().await.expect("a live line"));
    }
    drop(sse); // the viewer goes away mid-stream
    let last = seen.last().unwrap().0;
    for i in 6..=8 {
        s.send_message(&line(id, i, &format!("line {i}")))
            .await
            .unwrap();
    }
    wait_lines(&app, id, 8).await;
    let mut sse = Sse::open(&viewer, url, Some(last)).await;
    s.send_message(&line(id, 9, "line 9")).await.unwrap();
    s.send_message(&succeeded(id)).await.unwrap();
    while let Some(l) = sse.next_line().await {
        seen.push(l);
    }
    let texts: Vec<String> = seen
        .iter()
        .map(|(_, d)| {
            let frag = scraper::Html::parse_fragment(d);
            let t: String = frag.root_element().text().collect();
            t.split_once("line ")
                .map(|(_, n)| format!("line {n}"))
                .unwrap_or(t)
        })
        .collect();
    let want: Vec<String> = (1..=9).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, want, "every line exactly once, in order");
    let ids: Vec<i64> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, (1..=9).collect::<Vec<i64>>());
    a.shutdown().await;
}

#[tokio::test]
async fn many_viewers_each_get_every_line_and_the_status_change() {
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    let viewer = app.as_role(Role::Viewer).await;
    let mut tasks = vec![];
    for _ in 0..30 {
        let sse = Sse::open(&viewer, app.at(&routes::job_events(id)), None).await;
        tasks.push(tokio::spawn(async move {
            let mut sse = sse;
            let mut n = 0;
            let mut final_status = String::new();
            while let Some((ev, _, data)) = sse.next().await {
                match ev.as_str() {
                    "line" => n += 1,
                    "status" => final_status = data,
                    "end" => break,
                    _ => {}
                }
            }
            (n, final_status)
        }));
    }
    for i in 1..=50 {
        s.send_message(&line(id, i, &format!("l{i}")))
            .await
            .unwrap();
    }
    s.send_message(&succeeded(id)).await.unwrap();
    for t in tasks {
        let (n, status) = t.await.unwrap();
        assert_eq!(n, 50);
        assert!(status.contains("succeeded"), "{status}");
    }
    assert_eq!(
        app.state().live.open_channels(),
        0,
        "channels close with the job"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn the_log_stream_needs_a_session() {
    let app = TestApp::spawn().await;
    let cfg = app.enrolled_host("web-1").await;
    let id = new_job(&app, cfg.host_id).await;
    let r = app
        .anon()
        .get(app.at(&routes::job_events(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_error(
        app.anon()
            .get(app.at(&routes::api_job(id)))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.admin()
            .await
            .get(app.at("/api/jobs/424242"))
            .send()
            .await
            .unwrap(),
        404,
        "job_not_found",
    )
    .await;
    let page = app
        .as_role(Role::Viewer)
        .await
        .get(app.at(&routes::job(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("{}?after=0", routes::job_events(id))),
        "live page connects to its stream"
    );
}

#[tokio::test]
async fn a_log_past_the_cap_is_truncated_with_a_visible_line() {
    // A small cap keeps the test light; the default is 10 MiB.
    const CAP: i64 = 256 * 1024;
    let app = TestApp::spawn_with(|s| s.job_log_cap_bytes = CAP).await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    let chunk = "x".repeat(60 * 1024);
    let n = (CAP as usize / chunk.len()) as i64 + 3;
    for seq in 1..=n {
        s.send_message(&line(id, seq, &chunk)).await.unwrap();
    }
    s.send_message(&succeeded(id)).await.unwrap();
    app.wait_job(id, "succeeded").await;
    let all = logs(&app, id).await;
    let stored = n as usize - 2; // the cap is hit part-way through line n-2
    assert_eq!(
        all.len(),
        stored,
        "lines kept up to the cap plus one notice"
    );
    assert_eq!(all.last().unwrap()["data"], store::jobs::TRUNCATED_LINE);
    assert_eq!(job(&app, id).await["log_truncated"], true);
    a.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_lines_is_stored_once_each_in_order_before_the_finish() {
    // Lines that arrive together are stored together (one transaction per
    // burst): a burst larger than a batch, duplicates inside it, two jobs
    // interleaved and the finish right behind must all come out as sent.
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let (id, other) = (
        new_job(&app, cfg.host_id).await,
        new_job(&app, cfg.host_id).await,
    );
    let s = a.sender();
    const N: i64 = 700;
    for seq in 1..=N {
        s.send_message(&line(id, seq, &format!("line {seq}")))
            .await
            .unwrap();
        if seq % 3 == 0 {
            // A resend of the line before: dropped, whichever batch it lands in.
            s.send_message(&line(id, seq - 1, "again")).await.unwrap();
        }
        if seq % 100 == 0 {
            s.send_message(&line(other, seq / 100, "other job"))
                .await
                .unwrap();
        }
    }
    s.send_message(&succeeded(id)).await.unwrap();
    // Ignored: the job is over.
    s.send_message(&line(id, N + 1, "too late")).await.unwrap();
    app.wait_job(id, "succeeded").await;
    let all = logs(&app, id).await;
    let pos: Vec<i64> = all.iter().map(|v| v["pos"].as_i64().unwrap()).collect();
    let seqs: Vec<i64> = all.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    assert_eq!(pos, (1..=N).collect::<Vec<_>>());
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    assert!(all.iter().all(|v| v["data"] != "again"));
    assert_eq!(all.last().unwrap()["data"], format!("line {N}"));
    let o = wait_lines(&app, other, (N / 100) as usize).await;
    assert_eq!(o.len(), (N / 100) as usize);
    a.shutdown().await;
}

#[tokio::test]
async fn many_agents_lines_stored_together_each_come_out_as_sent() {
    // Lines of many agents arriving at once are written in shared
    // transactions (group commit): every job's lines come out once each in
    // order before its finish, and an agent's lines for another host's job,
    // refused in the same group, cost the others nothing.
    let app = TestApp::spawn().await;
    const HOSTS: usize = 12;
    const N: i64 = 300;
    let mut agents = Vec::new();
    for i in 0..HOSTS {
        let (cfg, a) = app.host(&format!("web-{i}")).online().await;
        let id = new_job(&app, cfg.host_id).await;
        agents.push((id, a));
    }
    let victim = agents[0].0;
    let sends = agents.iter().enumerate().map(|(i, (id, a))| {
        let (id, s) = (*id, a.sender());
        async move {
            for seq in 1..=N {
                s.send_message(&line(id, seq, &format!("{id}:{seq}")))
                    .await
                    .unwrap();
                if seq % 5 == 0 {
                    s.send_message(&line(id, seq, "again")).await.unwrap();
                }
                if i == 1 && seq % 50 == 0 {
                    s.send_message(&line(victim, 10_000 + seq, "not mine"))
                        .await
                        .unwrap();
                }
            }
            s.send_message(&succeeded(id)).await.unwrap();
        }
    });
    futures_util::future::join_all(sends).await;
    for (id, _) in &agents {
        app.wait_job(*id, "succeeded").await;
        let all = logs(&app, *id).await;
        let pos: Vec<i64> = all.iter().map(|v| v["pos"].as_i64().unwrap()).collect();
        let data: Vec<String> = all
            .iter()
            .map(|v| v["data"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(pos, (1..=N).collect::<Vec<_>>(), "job {id}");
        assert_eq!(
            data,
            (1..=N).map(|s| format!("{id}:{s}")).collect::<Vec<_>>(),
            "job {id}"
        );
    }
    for (_, a) in agents {
        a.shutdown().await;
    }
}

#[tokio::test]
async fn progress_sent_among_a_burst_of_lines_is_shown_and_loses_no_line() {
    // The connection shows progress reports that wait among log lines
    // before it writes the lines: none may be lost, and neither may a line.
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    app.wait_job(id, "running").await;
    const N: i64 = 400;
    for seq in 1..=N {
        s.send_message(&line(id, seq, &format!("line {seq}")))
            .await
            .unwrap();
        if seq % 40 == 0 {
            s.send_message(&JobProgress {
                job_id: id,
                percent: seq as f64 * 100.0 / N as f64,
                bytes_done: 0,
                total_bytes: 0,
                files_done: seq as u64,
                total_files: N as u64,
                seconds_remaining: None,
            })
            .await
            .unwrap();
        }
    }
    let all = wait_lines(&app, id, N as usize).await;
    let seqs: Vec<i64> = all.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let j = eventually("the last progress shown", || async {
        let j = job(&app, id).await;
        (j["progress"]["files_done"] == N).then_some(j)
    })
    .await;
    assert_eq!(j["progress"]["total_files"], N);
    a.shutdown().await;
}

#[tokio::test]
async fn control_characters_from_an_agent_are_stored_readably_and_lose_no_neighbours() {
    // A NUL byte is legal JSON ("\u0000") but Postgres refuses it in text:
    // one such line must not cost the lines sent with it, nor the finish.
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&line(id, 1, "before")).await.unwrap();
    s.send_message(&line(id, 2, "nul\u{0}here\u{1b}[1m"))
        .await
        .unwrap();
    s.send_message(&line(id, 3, "after")).await.unwrap();
    s.send_message(&JobFinished {
        job_id: id,
        status: FinishedStatus::Failed,
        error: Some("restic said \u{0}".into()),
        exit_code: Some(1),
        warning: false,
        error_kind: None,
        result: None,
    })
    .await
    .unwrap();
    let j = app.wait_job(id, "failed").await;
    assert_eq!(j["error"], "restic said \u{fffd}");
    let data: Vec<String> = logs(&app, id)
        .await
        .iter()
        .map(|v| v["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(data, ["before", "nul\u{fffd}here\u{1b}[1m", "after"]);
    a.shutdown().await;
}

#[tokio::test]
async fn carriage_returns_in_a_log_line_cannot_forge_live_events() {
    // In SSE a bare CR ends a line as LF does: restic's progress output (or a
    // hostile agent) must not start an `event:` or `id:` field of its own.
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    s.send_message(&line(
        id,
        1,
        "10%\r20%\revent: status\rid: 999999\r\rdata: forged\r\n30%",
    ))
    .await
    .unwrap();
    s.send_message(&line(id, 2, "next")).await.unwrap();
    let viewer = app.admin().await;
    let mut sse = Sse::open(&viewer, app.at(&routes::job_events(id)), None).await;
    let mut seen = vec![];
    while seen.len() < 3 {
        let (ev, eid, data) = sse.next().await.expect("an event");
        if ev == "status" {
            assert!(data.contains("job-status"), "a real summary: {data}");
            continue;
        }
        seen.push((ev, eid, data));
        if seen.last().is_some_and(|(_, _, d)| d.contains("next")) {
            break;
        }
    }
    let heads: Vec<(&str, Option<i64>)> = seen.iter().map(|(e, i, _)| (e.as_str(), *i)).collect();
    assert_eq!(heads, [("line", Some(1)), ("line", Some(2))], "{seen:?}");
    let first = &seen[0].2;
    assert!(first.contains("10%") && first.contains("30%"), "{first}");
    a.shutdown().await;
}

#[tokio::test]
async fn watching_finished_jobs_leaves_nothing_behind() {
    // A viewer paging through old jobs' live views must not make the server
    // keep a channel per job it looked at.
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let s = a.sender();
    let mut ids = vec![];
    for _ in 0..3 {
        let id = new_job(&app, cfg.host_id).await;
        s.send_message(&line(id, 1, "done soon")).await.unwrap();
        s.send_message(&succeeded(id)).await.unwrap();
        app.wait_job(id, "succeeded").await;
        ids.push(id);
    }
    let viewer = app.admin().await;
    for &id in &ids {
        let mut sse = Sse::open(&viewer, app.at(&routes::job_events(id)), None).await;
        let (pos, data) = sse.next_line().await.expect("the stored line");
        assert!(pos == 1 && data.contains("done soon"), "{data}");
        assert_eq!(sse.next_line().await, None, "then the end");
    }
    eventually("no live channel left open", || async {
        (app.state().live.open_channels() == 0).then_some(())
    })
    .await;
    a.shutdown().await;
}

/// The viewer's session is re-checked at every keepalive: deleting a user
/// ends each of their live logs. One user holds at most so many streams
/// open; others are not affected, and closed streams give their place back.
#[tokio::test]
async fn a_deleted_users_live_logs_end_and_streams_per_user_are_capped() {
    use restic_manager::web::job_events::MAX_STREAMS_PER_USER;
    let app =
        TestApp::spawn_with(|s| s.sse_keepalive = std::time::Duration::from_millis(200)).await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    a.sender().send_message(&started(id)).await.unwrap();
    let vera_id = app.user("vera", Role::Viewer).await;
    let vera = app.login("vera", &TestApp::password_of("vera")).await;
    let url = app.at(&routes::job_events(id));
    let mut streams = vec![];
    for _ in 0..MAX_STREAMS_PER_USER {
        streams.push(Sse::open(&vera, url.clone(), None).await);
    }
    let page = Page::from(vera.get(&url).send().await.unwrap()).await;
    assert_eq!(page.status, 429, "{}", page.text);
    assert!(
        page.text.contains("live logs open already"),
        "{}",
        page.text
    );
    let other = app.as_role(Role::Viewer).await;
    let mut others = Sse::open(&other, url.clone(), None).await;
    // A closed stream gives its place back.
    drop(streams.pop());
    eventually("the slot comes back", || async {
        (app.state().streams.open_for(vera_id) < MAX_STREAMS_PER_USER).then_some(())
    })
    .await;
    streams.push(Sse::open(&vera, url.clone(), None).await);

    let r = app
        .admin()
        .await
        .delete(app.at(&routes::api_user(vera_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for mut s in streams {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while s.next().await.is_some() {}
        })
        .await
        .expect("a deleted user's stream ends within a few keepalives");
    }
    eventually("her slots are given back", || async {
        (app.state().streams.open_for(vera_id) == 0).then_some(())
    })
    .await;
    // The other viewer still gets the job's lines.
    a.sender()
        .send_message(&line(id, 1, "still watched"))
        .await
        .unwrap();
    let (_, data) = others.next_line().await.expect("a live line");
    assert!(data.contains("still watched"), "{data}");
    a.shutdown().await;
}

/// Makes the database refuse every insert of a log line for the next
/// `window` (by the database's clock): a trigger reading a table the test
/// writes, so no lock has to be held from here.
async fn refuse_log_writes_for(app: &TestApp, window: std::time::Duration) {
    use sea_orm::ConnectionTrait;
    let sql: &[&str] = if app.is_sqlite() {
        &[
            "CREATE TABLE refuse_log_writes (until_ms BIGINT NOT NULL)",
            "CREATE TRIGGER refuse_log_writes BEFORE INSERT ON job_logs \
             WHEN (SELECT MAX(until_ms) FROM refuse_log_writes) > \
                  CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) \
             BEGIN SELECT RAISE(ABORT, 'injected: writes refused'); END",
            "INSERT INTO refuse_log_writes (until_ms) VALUES \
             (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + {ms})",
        ]
    } else {
        &[
            "CREATE TABLE refuse_log_writes (until_ms BIGINT NOT NULL)",
            "CREATE FUNCTION refuse_log_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF (SELECT MAX(until_ms) FROM refuse_log_writes) > \
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             THEN RAISE EXCEPTION 'injected: writes refused'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_log_writes BEFORE INSERT ON job_logs \
             FOR EACH ROW EXECUTE FUNCTION refuse_log_write()",
            "INSERT INTO refuse_log_writes (until_ms) VALUES \
             ((extract(epoch FROM clock_timestamp()) * 1000)::bigint + {ms})",
        ]
    };
    for s in sql {
        let s = s.replace("{ms}", &window.as_millis().to_string());
        app.db().execute_unprepared(&s).await.unwrap();
    }
}

#[tokio::test]
async fn log_lines_the_database_refuses_for_a_moment_are_stored_in_order_after_it() {
    let app = TestApp::spawn().await;
    let (cfg, a) = app.host("web-1").online().await;
    let id = new_job(&app, cfg.host_id).await;
    let s = a.sender();
    s.send_message(&started(id)).await.unwrap();
    app.wait_job(id, "running").await;

    let window = std::time::Duration::from_secs(1);
    let since = std::time::Instant::now();
    refuse_log_writes_for(&app, window).await;
    const N: i64 = 600;
    for seq in 1..=N {
        s.send_message(&line(id, seq, &format!("line {seq}")))
            .await
            .unwrap();
    }
    s.send_message(&succeeded(id)).await.unwrap();
    if since.elapsed() < window * 7 / 10 {
        // The refusal works: nothing got in yet.
        assert_eq!(logs(&app, id).await.len(), 0);
    }
    app.wait_job(id, "succeeded").await;
    let all = logs(&app, id).await;
    let seqs: Vec<i64> = all.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    let pos: Vec<i64> = all.iter().map(|v| v["pos"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "every line, in order");
    assert_eq!(pos, (1..=N).collect::<Vec<_>>());
    assert_eq!(all.last().unwrap()["data"], format!("line {N}"));
    a.shutdown().await;
}
