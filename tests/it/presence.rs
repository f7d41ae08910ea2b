//! The batched presence write: hellos queued together are stored in a few
//! multi-row statements (`store::hosts::record_hellos`), and every host
//! still ends with exactly what its own hello said. The hellos are handed
//! to the presence writer all at once (the writer runs on the test's
//! thread, so it takes them as one batch); what is asserted holds however
//! they are batched.
use futures_util::future::join_all;
use restic_manager::store::hosts::{HelloFacts, Host};

use crate::common::*;

fn facts(i: usize) -> HelloFacts {
    HelloFacts {
        agent_version: "1.4.0".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: format!("node-{i}.example"),
        restic_version: Some("restic 0.17.3".into()),
        restic_capable: true,
    }
}

/// `h` holds `f`, online, last seen within `seen` (ms, inclusive).
fn assert_stored(h: &Host, f: &HelloFacts, seen: (i64, i64)) {
    let want = (
        f.agent_version.as_str(),
        f.os.as_str(),
        f.arch.as_str(),
        f.hostname.as_str(),
        f.restic_version.as_deref(),
        f.restic_capable,
        true,
        true,
    );
    let got = (
        h.agent_version.as_str(),
        h.os.as_str(),
        h.arch.as_str(),
        h.hostname.as_str(),
        h.restic_version.as_deref(),
        h.restic_capable,
        h.online,
        h.last_seen_at.is_some_and(|t| seen.0 <= t && t <= seen.1),
    );
    assert_eq!(got, want, "host {} ({})", h.id, h.name);
}

/// 250 hosts (more than one statement's worth) in one batch, most alike,
/// a few odd: each stores its own facts, and the odd ones leave the others
/// alone. A host that said nothing keeps its row as it was.
#[tokio::test]
async fn many_hellos_in_one_batch_each_store_their_own_facts() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..250 {
        ids.push(app.add_host_direct(&format!("p-{i}")).await.0);
    }
    let (silent, _) = app.add_host_direct("silent").await;
    let before = app.host_row(silent).await.expect("silent host");

    let mut all: Vec<HelloFacts> = (0..ids.len()).map(facts).collect();
    // Odd ones, among the first hundred (one statement) and beyond.
    all[0].hostname = r#"it's-"quoted"; DROP TABLE hosts; --"#.into();
    all[1].agent_version = format!("9.{}", "9".repeat(62));
    all[2].restic_version = None;
    all[3].restic_capable = false;
    all[3].restic_version = None;
    all[4].os = "darwin".into();
    all[4].arch = "aarch64".into();
    all[5].agent_version = r#"2.0.0-'rc'"#.into();
    all[5].restic_version = Some(format!("restic 0.18.0 \"{}\"", "x".repeat(40)));
    all[150].agent_version = "1.3.9".into();
    all[150].hostname = "ünïcode-näme".into();
    all[249].restic_version = Some(String::new());

    let t0 = app.clock.now_ms();
    let presence = &app.state().presence;
    let results = join_all(
        ids.iter()
            .zip(&all)
            .map(|(id, f)| presence.hello(*id, f.clone())),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let seen = (t0, app.clock.now_ms());

    for (id, f) in ids.iter().zip(&all) {
        let h = app.host_row(*id).await.expect("host");
        assert_stored(&h, f, seen);
    }
    assert_eq!(app.host_row(silent).await.as_ref(), Some(&before));
}

/// Events for one host within a batch count in order: its last hello's
/// facts are stored, and a disconnect after a hello leaves it offline
/// with that hello's facts.
#[tokio::test]
async fn a_hosts_last_event_in_a_batch_wins() {
    let app = TestApp::spawn().await;
    let (back, _) = app.add_host_direct("back").await;
    let (gone, _) = app.add_host_direct("gone").await;
    let (other, _) = app.add_host_direct("other").await;
    let presence = &app.state().presence;
    let (first, second) = (
        facts(1),
        HelloFacts {
            agent_version: "1.5.0".into(),
            ..facts(2)
        },
    );
    let t0 = app.clock.now_ms();
    // Polled in order: each sends its event when first polled.
    let (a, _, b, c, _) = futures_util::join!(
        presence.hello(back, first.clone()),
        async { presence.offline(back) },
        presence.hello(back, second.clone()),
        presence.hello(gone, facts(3)),
        async { presence.offline(gone) },
    );
    let d = presence.hello(other, facts(4)).await;
    for r in [a, b, c, d] {
        r.expect("hello recorded");
    }
    let seen = (t0, app.clock.now_ms());

    assert_stored(&app.host_row(back).await.unwrap(), &second, seen);
    assert_stored(&app.host_row(other).await.unwrap(), &facts(4), seen);
    // The offline is applied before `other`'s hello is answered: events go
    // through the writer in order.
    let g = app.host_row(gone).await.unwrap();
    assert!(!g.online, "{g:?}");
    assert_eq!(g.hostname, facts(3).hostname);
    assert!(
        g.last_seen_at.is_some_and(|t| seen.0 <= t && t <= seen.1),
        "{g:?}"
    );
}
