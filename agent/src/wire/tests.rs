use super::*;

#[test]
fn hello_round_trips_through_an_envelope() {
    let hello = Hello {
        agent_version: "v1".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: "web-1".into(),
        update: None,
        restic_version: Some("0.14.0".into()),
        running_jobs: Some(vec![3]),
        recent_finished: vec![],
    };
    let text = hello.envelope().to_text();
    assert!(text.contains(r#""type":"agent.hello""#));
    let env = Envelope::parse(&text).unwrap();
    assert_eq!(env.kind, AGENT_HELLO);
    assert_eq!(env.payload::<Hello>().unwrap(), hello);
}

#[test]
fn unknown_type_parses_as_an_envelope() {
    let env = Envelope::parse(r#"{"type":"future.thing","payload":{"x":1}}"#).unwrap();
    assert_eq!(env.kind, "future.thing");
}

#[test]
fn malformed_and_oversized_frames_are_refused() {
    assert!(matches!(
        Envelope::parse("{not json"),
        Err(WireError::Malformed(_))
    ));
    let big = "x".repeat(MAX_FRAME_BYTES + 1);
    assert!(matches!(Envelope::parse(&big), Err(WireError::TooLarge(_))));
}

/// The envelope as it was before payloads were kept as text: a
/// `serde_json::Value` (keys in sorted order).
#[derive(Serialize)]
struct OldEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    payload: serde_json::Value,
}

fn old_text<P: Message>(p: &P, id: Option<&str>) -> String {
    serde_json::to_string(&OldEnvelope {
        kind: P::TYPE.into(),
        id: id.map(str::to_string),
        payload: serde_json::to_value(p).unwrap(),
    })
    .unwrap()
}

/// New frames are byte for byte what the old envelope wrote, and an old
/// frame read and written again is unchanged.
fn same_bytes_as_before<P: Message + PartialEq + std::fmt::Debug>(p: P) {
    for id in [None, Some("c-1")] {
        let mut env = p.envelope();
        env.id = id.map(str::to_string);
        let old = old_text(&p, id);
        assert_eq!(env.to_text(), old);
        let read = Envelope::parse(&old).unwrap();
        assert_eq!(read.to_text(), old);
        assert_eq!(read.payload::<P>().unwrap(), p);
    }
}

#[test]
fn frames_are_byte_compatible_with_the_old_envelope() {
    // Pinned, so the comparison below cannot drift with the helper.
    let line = LogStream {
        job_id: 7,
        seq: 1,
        stream: LogStreamKind::Stdout,
        data: "a\nb \"q\"".into(),
        at: "2026-01-01T00:00:00Z".into(),
    };
    assert_eq!(
        line.envelope().to_text(),
        r#"{"type":"log.stream","payload":{"at":"2026-01-01T00:00:00Z","data":"a\nb \"q\"","job_id":7,"seq":1,"stream":"stdout"}}"#
    );
    same_bytes_as_before(line);
    let finished = JobFinished {
        result: Some(
            serde_json::json!({"snapshot_id": "ab", "files_new": 3, "nested": {"z": 1, "a": [1.5, null]}}),
        ),
        exit_code: Some(3),
        warning: true,
        error_kind: Some(ERROR_RESTIC_FAILED.into()),
        ..JobFinished::failed(9, "ünïcode \u{7f} error")
    };
    same_bytes_as_before(finished.clone());
    same_bytes_as_before(Hello {
        agent_version: "v1".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: "web-1".into(),
        update: Some(UpdateReport {
            job_id: 4,
            from_version: "v0".into(),
            to_version: "v1".into(),
            outcome: UpdateOutcome::RolledBack,
            reason: Some("boot failed".into()),
        }),
        restic_version: None,
        running_jobs: Some(vec![]),
        recent_finished: vec![finished],
    });
    same_bytes_as_before(CommandRestic {
        job_id: 5,
        kind: JobKind::Forget,
        repository: ResticRepository {
            url: "rest:http://u:p@h/r".into(),
            password: "pw".into(),
            env: [("B".to_string(), "2".to_string()), ("A".into(), "1".into())].into(),
        },
        options: ResticOptions {
            retention: Some(Retention {
                keep_daily: Some(7),
                ..Retention::default()
            }),
            prune: true,
            ..ResticOptions::default()
        },
    });
    same_bytes_as_before(HelloAck {
        host_id: 1,
        server_version: "v1".into(),
    });
    // No payload on the wire reads as null and is written as null, as before.
    let bare = Envelope::parse(r#"{"type":"x"}"#).unwrap();
    assert_eq!(bare.to_text(), r#"{"type":"x","payload":null}"#);
}

#[test]
fn unknown_fields_are_ignored_in_the_envelope_and_the_payload() {
    let text = r#"{"future":[1,{"a":2}],"payload":{"extra":{"deep":[true]},"job_id":3,"seq":2,"stream":"stderr","data":"x","at":"t","more":"y"},"type":"log.stream","id":"i"}"#;
    let env = Envelope::parse(text).unwrap();
    assert_eq!(env.kind, LOG_STREAM);
    assert_eq!(env.id.as_deref(), Some("i"));
    assert_eq!(
        env.payload::<LogStream>().unwrap(),
        LogStream {
            job_id: 3,
            seq: 2,
            stream: LogStreamKind::Stderr,
            data: "x".into(),
            at: "t".into(),
        }
    );
}

/// A frame near the limit, full of small values (extra fields an agent
/// might send), is parsed with a handful of allocations adding up to a
/// few times its size: never a `Value` node per value.
#[test]
fn a_large_log_stream_is_parsed_without_a_value_tree() {
    let extra: Vec<String> = (0..30_000)
        .map(|i| format!(r#""k{i}":[{i},"v"]"#))
        .collect();
    // JSON-escaped line breaks, as on the wire.
    let data = r"line of output\n".repeat(4000);
    let text = format!(
        r#"{{"type":"log.stream","payload":{{{},"job_id":1,"seq":1,"stream":"stdout","data":"{data}","at":"t"}}}}"#,
        extra.join(",")
    );
    assert!(text.len() > 500_000 && text.len() <= MAX_FRAME_BYTES);

    let (line, allocs, bytes) = alloc_count::measure(|| {
        Envelope::parse(&text)
            .unwrap()
            .payload::<LogStream>()
            .unwrap()
    });
    assert_eq!(line.data, "line of output\n".repeat(4000));
    assert!(allocs < 100, "{allocs} allocations to parse one frame");
    assert!(
        bytes < 3 * text.len(),
        "{bytes} bytes allocated to parse a frame of {}",
        text.len()
    );
}

/// Counts this thread's allocations (the test harness runs tests on
/// threads of their own, so others do not get counted).
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static COUNT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|c| {
                let (n, b) = c.get();
                c.set((n + 1, b + layout.size()));
            });
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = COUNT.try_with(|c| {
                let (n, b) = c.get();
                c.set((n + 1, b + new_size));
            });
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// What `f` returned, and how many allocations (and bytes) it made.
    pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
        let before = COUNT.with(Cell::get);
        let out = f();
        let after = COUNT.with(Cell::get);
        (out, after.0 - before.0, after.1 - before.1)
    }
}

#[test]
fn wrong_payload_shape_is_an_error_not_a_panic() {
    let env = Envelope::parse(r#"{"type":"agent.hello","payload":{"os":3}}"#).unwrap();
    assert!(env.payload::<Hello>().is_err());
}
