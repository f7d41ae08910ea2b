//! 2. Dashboard at scale: 10,000 hosts in the database, every third one
//! behind the server's version. Latency (p50/p99, one logged-in client,
//! sequential requests over a kept-alive connection) of `/`,
//! `/?updates=behind`, `/api/hosts?updates=behind`, and of the hosts-behind
//! count (`store::hosts::behind_count`, the query behind the amber tile,
//! called in-process through sea-orm), on SQLite and on Postgres. Baseline,
//! interleaved request by request: the raw SQL each one runs, sent by this
//! tool straight to the same database (no HTTP, no session check, no ORM,
//! no HTML).
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use restic_manager::store;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{
    Ctx, checks,
    procs::Server,
    report::{Goal, Row},
    say, seed,
    stats::Latency,
};

const OLD: &str = "v0.0.1-bench-old";
const COLUMNS: &str =
    "id, name, hostname, os, arch, agent_version, online, last_seen_at, secret_hash, created_at";

struct Raw {
    list_all: String,
    list_behind: String,
    count_all: String,
    count_online: String,
    count_behind: String,
}

impl Raw {
    fn new(version: &str) -> Raw {
        let behind = format!(
            "agent_version <> '' AND agent_version <> '{}'",
            version.replace('\'', "''")
        );
        Raw {
            list_all: format!("SELECT {COLUMNS} FROM hosts ORDER BY name LIMIT 100 OFFSET 0"),
            list_behind: format!(
                "SELECT {COLUMNS} FROM hosts WHERE {behind} ORDER BY name LIMIT 100 OFFSET 0"
            ),
            count_all: "SELECT COUNT(*) FROM hosts".into(),
            count_online: "SELECT COUNT(*) FROM hosts WHERE online = TRUE".into(),
            count_behind: format!("SELECT COUNT(*) FROM hosts WHERE {behind}"),
        }
    }
}

async fn rows(db: &DatabaseConnection, sql: &str) -> Result<usize> {
    let rs = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    // Decode every column, as the server's ORM does.
    for r in &rs {
        let _: i64 = r.try_get_by_index(0)?;
        for i in 1..6 {
            let _: String = r.try_get_by_index(i)?;
        }
        let _: bool = r.try_get_by_index(6)?;
        let _: Option<i64> = r.try_get_by_index(7)?;
        let _: Option<String> = r.try_get_by_index(8)?;
        let _: i64 = r.try_get_by_index(9)?;
    }
    Ok(rs.len())
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let r = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("COUNT returned no row")?;
    Ok(r.try_get_by_index(0)?)
}

/// The raw queries each measured item runs, in the handler's order.
async fn raw_for(db: &DatabaseConnection, q: &Raw, item: usize) -> Result<()> {
    match item {
        0 => {
            rows(db, &q.list_all).await?;
            count(db, &q.count_all).await?; // total for the filter (none)
            count(db, &q.count_all).await?;
            count(db, &q.count_online).await?;
            count(db, &q.count_behind).await?;
        }
        1 => {
            rows(db, &q.list_behind).await?;
            count(db, &q.count_behind).await?; // total for the filter
            count(db, &q.count_all).await?;
            count(db, &q.count_online).await?;
            count(db, &q.count_behind).await?;
        }
        2 => {
            rows(db, &q.list_behind).await?;
        }
        _ => {
            count(db, &q.count_behind).await?;
        }
    }
    Ok(())
}

const ITEMS: [&str; 4] = [
    "GET /",
    "GET /?updates=behind",
    "GET /api/hosts?updates=behind",
    "hosts-behind count",
];
const PATHS: [&str; 3] = ["/", "/?updates=behind", "/api/hosts?updates=behind"];

async fn get(c: &reqwest::Client, url: &str) -> Result<String> {
    let r = c
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    checks::expect_success(&format!("GET {url}"), status, &body)?;
    Ok(body)
}

/// The pages show what was seeded: 100 rows, the right behind count, only
/// hosts behind under the filter.
async fn validate(
    ctx: &Ctx,
    c: &reqwest::Client,
    base: &str,
    db: &DatabaseConnection,
    q: &Raw,
    behind: usize,
) -> Result<()> {
    let sel = |s: &str| scraper::Selector::parse(s).expect("static selector");
    let home = scraper::Html::parse_document(&get(c, &format!("{base}/")).await?);
    let rows_n = home.select(&sel("tr[data-testid=host-row]")).count();
    ensure!(
        rows_n == 100,
        "GET / shows {rows_n} host rows, expected 100"
    );
    let tile: String = home
        .select(&sel("[data-testid=hosts-behind-tile] .tile-value"))
        .next()
        .context("GET / shows no hosts-behind tile")?
        .text()
        .collect();
    ensure!(
        tile.trim() == behind.to_string(),
        "GET / says {} hosts behind, {behind} were seeded",
        tile.trim()
    );
    let page = scraper::Html::parse_document(&get(c, &format!("{base}/?updates=behind")).await?);
    let versions: Vec<String> = page
        .select(&sel("tr[data-testid=host-row] [data-testid=agent-version]"))
        .map(|e| e.text().collect::<String>().trim().to_string())
        .collect();
    ensure!(
        versions.len() == 100 && versions.iter().all(|v| v == OLD),
        "GET /?updates=behind shows {} rows, not 100 hosts at {OLD}",
        versions.len()
    );
    let api: Vec<serde_json::Value> =
        serde_json::from_str(&get(c, &format!("{base}/api/hosts?updates=behind")).await?)?;
    ensure!(
        api.len() == 100
            && api
                .iter()
                .all(|h| h["update_available"] == true && h["agent_version"] == OLD),
        "GET /api/hosts?updates=behind returned {} hosts, not 100 behind",
        api.len()
    );
    let n = store::hosts::behind_count(db, &ctx.version).await?;
    ensure!(
        n as usize == behind,
        "behind_count says {n}, {behind} were seeded"
    );
    let raw = count(db, &q.count_behind).await?;
    ensure!(
        raw as usize == behind,
        "raw behind count says {raw}, {behind} were seeded"
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn backend(ctx: &Ctx, name: &str, pg: Option<&str>) -> Result<Vec<Row>> {
    let n = ctx.opts.dashboard_hosts;
    let runs = ctx.opts.runs_or(5);
    let requests = ctx.opts.dashboard_requests.max(1);
    let dir = ctx.dir(&format!("dashboard-{name}"))?;
    let db = seed::open(&dir, pg).await?;
    seed::hosts(&db, n, |i| {
        if i % 3 == 0 {
            OLD.to_string()
        } else {
            ctx.version.clone()
        }
    })
    .await?;
    db.close().await?;
    let behind = n.div_ceil(3);
    let mut server = Server::start(&ctx.bins, &dir, pg, &[]).await?;
    let url = match pg {
        Some(u) => u.to_string(),
        None => restic_manager::config::default_database_url(&dir),
    };
    let db = Database::connect(url.as_str()).await?;
    let q = Raw::new(&ctx.version);
    let c = server.admin().await?;
    validate(ctx, &c, &server.url, &db, &q, behind).await?;

    let mut page = vec![(Vec::new(), Vec::new()); ITEMS.len()];
    let mut raw = vec![(Vec::new(), Vec::new()); ITEMS.len()];
    // Warm caches and connections, then measure.
    for round in 0..=runs {
        let reps = if round == 0 { 20 } else { requests };
        let mut p_samples = vec![Vec::with_capacity(reps); ITEMS.len()];
        let mut r_samples = vec![Vec::with_capacity(reps); ITEMS.len()];
        for _ in 0..reps {
            for item in 0..ITEMS.len() {
                let t = Instant::now();
                if item < PATHS.len() {
                    get(&c, &format!("{}{}", server.url, PATHS[item])).await?;
                } else {
                    store::hosts::behind_count(&db, &ctx.version).await?;
                }
                p_samples[item].push(ms(t.elapsed()));
                let t = Instant::now();
                raw_for(&db, &q, item).await?;
                r_samples[item].push(ms(t.elapsed()));
            }
        }
        server.proc.check_alive()?;
        if round == 0 {
            continue;
        }
        for item in 0..ITEMS.len() {
            let p = Latency::of(&p_samples[item]).context("no samples")?;
            let r = Latency::of(&r_samples[item]).context("no samples")?;
            say!(
                "dashboard {name} run {round}/{runs}: {} p50 {:.2} ms p99 {:.2} ms (raw SQL p50 {:.2} p99 {:.2})",
                ITEMS[item],
                p.p50,
                p.p99,
                r.p50,
                r.p99
            );
            page[item].0.push(p.p50);
            page[item].1.push(p.p99);
            raw[item].0.push(r.p50);
            raw[item].1.push(r.p99);
        }
    }
    db.close().await?;
    server.proc.kill();
    let section = format!("2. dashboard, {n} hosts, {name}");
    let note = format!("{requests} requests/run");
    let mut out = Vec::new();
    for item in 0..ITEMS.len() {
        let goal = if item < PATHS.len() {
            Goal::Below(50.0)
        } else {
            Goal::None
        };
        out.push(
            Row::new(
                &section,
                &format!("{} p50", ITEMS[item]),
                "ms",
                page[item].0.clone(),
            )
            .baseline("raw SQL", raw[item].0.clone())
            .note(note.clone()),
        );
        out.push(
            Row::new(
                &section,
                &format!("{} p99", ITEMS[item]),
                "ms",
                page[item].1.clone(),
            )
            .baseline("raw SQL", raw[item].1.clone())
            .goal(goal),
        );
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = backend(ctx, "SQLite", None).await?;
    if ctx.opts.skip_postgres {
        say!("dashboard: Postgres skipped (--skip-postgres)");
        return Ok(rows);
    }
    let (url, name) = seed::postgres_database(&ctx.opts.pg_url).await?;
    let r = backend(ctx, "Postgres", Some(&url)).await;
    seed::drop_postgres_database(&ctx.opts.pg_url, &name).await;
    rows.extend(r?);
    Ok(rows)
}
