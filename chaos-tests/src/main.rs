//! `linkrift-chaos`: starts real `linkrift` nodes on 127.0.0.x with a throwaway
//! PostgreSQL and ClickHouse, runs a recorded workload while faults are injected, then
//! checks the history, the mirror and the clicks. Prints its seed; takes it back from
//! `LINKRIFT_CHAOS_SEED`. A failed run keeps its directory (logs, history, faults).
//!
//! The nodes must be built with the `failpoints` feature (`scripts/chaos` does that).

mod cgroup;
mod check;
mod cluster;
mod disk;
mod history;
mod nemesis;
mod net;
mod times;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use sqlx::Row;

use cluster::{Cluster, Launch, ADMIN_KEY};
use history::{Call, FaultRecord, Op, Ret};
use linkrift_testkit::clickhouse::ClickHouse;
use linkrift_testkit::postgres::Postgres;
use nemesis::{Env, Fault};
use workload::{micros, value_of, Workload};

/// How a run is shaped.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Profile {
    /// 3 nodes (and one that joins and leaves), one round of every fault (`--minutes 1`):
    /// about 10 minutes in all.
    Ci,
    /// 5 nodes, rounds of every fault (also remove-wipe-rejoin) for 30 minutes.
    Long,
}

#[derive(Debug, Parser)]
#[command(about = "Break a Linkrift cluster and check that nothing acknowledged is lost")]
struct Args {
    #[arg(long, value_enum, default_value = "ci")]
    profile: Profile,
    /// The seed (also LINKRIFT_CHAOS_SEED); random when not given.
    #[arg(long, env = "LINKRIFT_CHAOS_SEED")]
    seed: Option<u64>,
    /// The `linkrift` binary, built with the `failpoints` feature.
    #[arg(long, env = "LINKRIFT_CHAOS_BIN")]
    binary: PathBuf,
    /// The `faultfs` program: each node's data directory goes on a mount of its own, and
    /// the rounds include power cuts (one member, and every member at once).
    #[arg(long, env = "LINKRIFT_CHAOS_FAULTFS")]
    faultfs: Option<PathBuf>,
    /// Only these faults (by the name the run prints, e.g. `PowerCutAll`); repeatable.
    #[arg(long)]
    only: Vec<String>,
    /// Where runs keep their directories.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Minutes of faults: rounds start until they are over (1 for ci, 30 for long).
    #[arg(long)]
    minutes: Option<u64>,
    /// Keep the run's directory even when it passes.
    #[arg(long)]
    keep: bool,
    /// A deliberate bug armed on every node (`mutation.ack_before_sync`, `.skip_dedupe`,
    /// `.drop_click`): the run passes only when its anomalies show it (see `--expect`).
    #[arg(long)]
    mutation: Option<String>,
    /// With `--mutation`: words an anomaly must contain for the bug to count as caught
    /// (repeatable: any of them; any anomaly when not given).
    #[arg(long, requires = "mutation")]
    expect: Vec<String>,
}

/// The shards of the run's cluster.
const SHARDS: u32 = 8;

/// The staleness bound a read is held to, once the faults in between are over: the
/// nodes' `replica_max_lag_ms` and the near cache's TTL (5 s each by default: the
/// documented bounds) and a second of slack.
const STALE_BOUND_US: u64 = 6_000_000;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    println!("chaos seed {seed} (run again with LINKRIFT_CHAOS_SEED={seed})");
    let root = args
        .out
        .join(format!("{:?}-{seed}", args.profile).to_lowercase());
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("create the run directory");
    let root = root.canonicalize().unwrap();
    // Dropping the run (interrupted, or past its deadline) stops every process it started
    // and removes its packet-filter rules.
    let deadline = match args.profile {
        Profile::Ci => Duration::from_secs(minutes(&args) * 60 + 20 * 60),
        Profile::Long => Duration::from_secs(minutes(&args) * 60 + 30 * 60),
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(deadline, run(&args, seed, root.clone())) => {
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("the run took longer than {deadline:?}")))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let (Some(mutation), Ok(anomalies)) = (&args.mutation, &outcome) {
        // A run with a deliberate bug passes when it is caught.
        let expect = &args.expect;
        let matching = caught(expect, anomalies);
        println!(
            "chaos {:?} seed {seed} with {mutation}: {} anomalies, {matching} of them matching {expect:?}",
            args.profile,
            anomalies.len(),
        );
        for a in anomalies.iter().take(20) {
            println!("  - {a}");
        }
        if matching == 0 {
            println!(
                "the deliberate bug {mutation} was NOT caught; logs kept in {}",
                root.display()
            );
            std::process::exit(1);
        }
        println!("the deliberate bug {mutation} was caught");
        if !args.keep {
            let _ = std::fs::remove_dir_all(&root);
        }
        return;
    }
    match outcome {
        Ok(anomalies) if anomalies.is_empty() => {
            println!("chaos {:?} seed {seed}: no anomalies", args.profile);
            if !args.keep {
                let _ = std::fs::remove_dir_all(&root);
            }
        }
        Ok(anomalies) => {
            println!(
                "chaos {:?} seed {seed}: {} anomalies",
                args.profile,
                anomalies.len()
            );
            for a in anomalies.iter().take(50) {
                println!("  - {a}");
            }
            println!("logs, history and faults kept in {}", root.display());
            std::process::exit(1);
        }
        Err(e) => {
            println!(
                "chaos {:?} seed {seed}: the run failed: {e:#}",
                args.profile
            );
            println!("logs kept in {}", root.display());
            std::process::exit(2);
        }
    }
}

/// How many of `anomalies` contain one of `expect` (all of them when it is empty).
fn caught(expect: &[String], anomalies: &[String]) -> usize {
    anomalies
        .iter()
        .filter(|a| expect.is_empty() || expect.iter().any(|e| a.contains(e.as_str())))
        .count()
}

/// Minutes of faults.
fn minutes(args: &Args) -> u64 {
    args.minutes.unwrap_or(match args.profile {
        Profile::Ci => 1,
        Profile::Long => 30,
    })
}

/// The run; its anomalies. Everything it started is stopped when it returns.
async fn run(args: &Args, seed: u64, root: PathBuf) -> Result<Vec<String>> {
    let (count, hold) = match args.profile {
        Profile::Ci => (3, Duration::from_secs(10)),
        Profile::Long => (5, Duration::from_secs(20)),
    };
    let pg = Postgres::start();
    let ch = ClickHouse::start().await;
    let common = vec![
        "--shard-count".to_string(),
        SHARDS.to_string(),
        "--log".into(),
        "info".into(),
        "--postgres-url".into(),
        pg.url.clone(),
        "--clickhouse-url".into(),
        ch.url.clone(),
    ];
    let binary = args.binary.canonicalize().context("the linkrift binary")?;
    let faultfs = match &args.faultfs {
        Some(path) => Some(path.canonicalize().context("the faultfs binary")?),
        None => None,
    };
    let mut cluster = Cluster::new(binary, faultfs, root.clone(), count, common, seed)?;
    cluster.mutation = args.mutation.clone();
    for i in 1..=count {
        cluster.start(i, &Launch::default())?;
        if i == 1 {
            cluster.wait_settled(&[1], Duration::from_secs(60)).await?;
        }
    }
    let members: Vec<usize> = (1..=count).collect();
    cluster
        .wait_settled(&members, Duration::from_secs(180))
        .await?;
    // The node that joins and leaves, declared now so that the workload sends it its
    // share of the traffic: refused while it is not running, answered once it serves.
    let spare = cluster.add()?;
    let urls = cluster.urls();
    let t0 = Instant::now();
    let mut env = Env {
        cluster,
        net: net::Net::new()?,
        pg,
        ch,
        t0,
        t0_unix_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        members,
        spare: Some(spare),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        hold,
        calm: Duration::from_secs(8),
    };
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let budget = match args.profile {
        Profile::Ci => Duration::from_secs(minutes(args) * 60 + 10 * 60),
        Profile::Long => Duration::from_secs(minutes(args) * 60 + 15 * 60),
    };
    let load = Workload::start(
        urls,
        seed,
        t0,
        6,
        2,
        Instant::now() + budget,
        unexpected.clone(),
    );
    // Some traffic before the first fault.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut faults = Vec::new();
    let until = t0 + Duration::from_secs(minutes(args) * 60);
    loop {
        let mut round = Fault::round(
            &mut env.rng,
            matches!(args.profile, Profile::Long),
            env.cluster.has_power_disks(),
        );
        round.retain(|f| args.only.is_empty() || args.only.contains(&f.name()));
        for fault in round {
            let record = env.run(fault).await;
            println!(
                "{:>7.1} s  {:<28} fired {:<5} settled {:<5} {}",
                record.end as f64 / 1e6,
                record.name,
                record.fired,
                record.settled,
                record.detail
            );
            let settled = record.settled;
            faults.push(record);
            if !settled {
                println!("the cluster did not settle: no more faults, checking what there is");
                break;
            }
        }
        let unsettled = faults.iter().any(|f| !f.settled);
        if Instant::now() >= until || unsettled {
            break;
        }
    }
    let faults_end = micros(t0);
    let mut anomalies = Vec::new();
    // Reads and writes must succeed again on every member.
    match recover(&env, Duration::from_secs(60)).await {
        Ok(took) => {
            println!("reads and writes succeed on every node {took:.1?} after the last fault")
        }
        Err(e) => anomalies.push(format!("not recovered after the faults: {e:#}")),
    }
    let (history, resent) = load.finish().await;
    let finals = final_reads(&env, &history, t0, &mut anomalies).await;
    let final_ops: Vec<Op> = finals
        .iter()
        .map(|(code, (value, invoke, complete))| Op {
            process: 0,
            node: 0,
            code: code.clone(),
            call: Call::Read,
            ret: Ret::Read(*value),
            redirect: false,
            invoke: *invoke,
            complete: Some(*complete),
            version: None,
            attempts: 1,
            tag: None,
        })
        .collect();
    save(&root, &history, &faults)?;
    let final_values: BTreeMap<String, Option<u64>> = finals
        .iter()
        .map(|(c, (v, _, _))| (c.clone(), *v))
        .collect();

    anomalies.extend(check::check_linearizable(&history, &final_ops));
    anomalies.extend(check::check_lost(&history, &final_values));
    anomalies.extend(check::check_phantoms(&history));
    let windows: Vec<(u64, u64)> = faults.iter().map(|f| (f.start, f.end)).collect();
    // The later of `a` and the end of the last fault in force between `a` and `b`.
    let calm = |a: u64, b: u64| {
        windows
            .iter()
            .filter(|&&(s, e)| s <= b && e >= a)
            .map(|&(_, e)| e)
            .fold(a, u64::max)
    };
    let (stale, held) = check::check_stale(&history, STALE_BOUND_US, calm);
    anomalies.extend(stale);
    // A deliberate bug caught already need not wait for the slow checks (up to 120 s
    // each).
    let clicks = if args.mutation.is_some() && caught(&args.expect, &anomalies) > 0 {
        "(not checked: the deliberate bug was caught)".to_string()
    } else {
        anomalies.extend(check_mirror(&env, &final_values).await);
        let (clicks, click_anomalies) = check_clicks(&env, &history, &faults).await;
        anomalies.extend(click_anomalies);
        clicks
    };
    for f in faults.iter().filter(|f| !f.fired) {
        anomalies.push(format!("fault {} did not fire: {}", f.name, f.detail));
    }
    for f in faults.iter().filter(|f| !f.settled) {
        anomalies.push(format!(
            "the cluster did not settle within 120 s after {}: {}",
            f.name,
            f.unsettled.as_deref().unwrap_or("?")
        ));
    }
    for f in &faults {
        for exit in &f.unplanned_exits {
            anomalies.push(format!("after {}: {exit}", f.name));
        }
    }
    anomalies.extend(env.cluster.deaths_in_logs());
    anomalies.extend(unexpected.lock().unwrap().iter().take(20).cloned());
    std::fs::write(root.join("anomalies.txt"), anomalies.join("\n"))?;

    let count = |f: &dyn Fn(&Op) -> bool| history.iter().filter(|o| f(o)).count();
    println!(
        "operations {} (writes {}: acknowledged {}, unknown {}, sent again {} after an unknown outcome and \
         {resent} after an answer, \
         If-Match {} of which refused {}; API reads {}, consistent {}; redirects {}), \
         codes {}, faults {} ({} fired), reads held to the staleness bound {held}, \
         clicks {clicks}, anomalies {}, {:.0} s of faults",
        history.len(),
        count(&|o| !o.call.is_read()),
        count(&|o| !o.call.is_read() && o.complete.is_some()),
        count(&|o| !o.call.is_read() && o.complete.is_none()),
        count(&|o| o.attempts > 1),
        count(&|o| matches!(o.call, Call::UpdateIf(..))),
        count(&|o| o.ret == Ret::Mismatch),
        count(&|o| o.call.is_read() && !o.redirect),
        count(&|o| o.call == Call::ReadConsistent),
        count(&|o| o.redirect),
        finals.len(),
        faults.len(),
        faults.iter().filter(|f| f.fired).count(),
        anomalies.len(),
        faults_end as f64 / 1e6
    );
    Ok(anomalies)
}

/// Codes `prefix` and a number, one in each of `shards` shards.
fn one_per_shard(prefix: &str, shards: u32) -> Vec<String> {
    (0..shards)
        .map(|s| {
            (0u32..)
                .map(|n| format!("{prefix}x{n}"))
                .find(|code| linkrift_model::shard::shard_of(code, shards) == s)
                .unwrap()
        })
        .collect()
}

/// Waits until a create through each member in every shard is acknowledged and read back
/// on every member; how long that took.
async fn recover(env: &Env, within: Duration) -> Result<Duration> {
    let began = Instant::now();
    let deadline = began + within;
    let http = &env.cluster.http;
    let codes = env.members.iter().flat_map(|&i| {
        one_per_shard(&format!("recovered{i}"), SHARDS)
            .into_iter()
            .map(move |c| (i, c))
    });
    for (i, code) in codes {
        let url = format!("https://recovered.example/{code}");
        loop {
            let r = http
                .post(env.cluster.nodes[i - 1].url("/v1/links"))
                .bearer_auth(ADMIN_KEY)
                .json(&serde_json::json!({ "url": url, "code": code }))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 201 || r.status() == 409) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no create through node {i} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for &j in &env.members {
            loop {
                let r = http
                    .get(env.cluster.nodes[j - 1].url(&format!("/v1/links/{code}")))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {j} does not read {code} within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(began.elapsed())
}

/// Each code's final state, once every member answers the same: (value, invoke, complete).
async fn final_reads(
    env: &Env,
    history: &[Op],
    t0: Instant,
    anomalies: &mut Vec<String>,
) -> BTreeMap<String, (Option<u64>, u64, u64)> {
    let codes: BTreeSet<&str> = history.iter().map(|o| o.code.as_str()).collect();
    let mut finals = BTreeMap::new();
    // One deadline for all codes: members that diverged for good (as replicas that lost
    // acknowledged entries do) must not cost 30 s a code.
    let deadline = Instant::now() + Duration::from_secs(30);
    for code in codes {
        loop {
            let invoke = micros(t0);
            let mut answers = Vec::new();
            for &i in &env.members {
                let r = env
                    .cluster
                    .http
                    .get(env.cluster.nodes[i - 1].url(&format!("/v1/links/{code}")))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await;
                answers.push(match r {
                    Ok(r) if r.status() == 404 => Some(None),
                    Ok(r) if r.status() == 200 => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        Some(body["url"].as_str().and_then(value_of))
                    }
                    _ => None,
                });
            }
            let complete = micros(t0);
            let agreed = answers.iter().all(|a| a.is_some() && *a == answers[0]);
            if agreed {
                finals.insert(code.to_string(), (answers[0].unwrap(), invoke, complete));
                break;
            }
            if Instant::now() >= deadline {
                anomalies.push(format!(
                    "members still disagree on {code} after 30 s of final reads: {answers:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    finals
}

/// The mirror's rows for the workload's codes must come to equal the final state.
async fn check_mirror(env: &Env, finals: &BTreeMap<String, Option<u64>>) -> Vec<String> {
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.pg.url)
        .await
    {
        Ok(p) => p,
        Err(e) => return vec![format!("cannot reach the mirror: {e}")],
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows =
            sqlx::query("SELECT code, url, deleted FROM links WHERE code ~ '^k[0-9]+g[0-9]+$'")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        let mirror: BTreeMap<String, Option<u64>> = rows
            .iter()
            .map(|r| {
                let url: String = r.get("url");
                let deleted: bool = r.get("deleted");
                (r.get("code"), if deleted { None } else { value_of(&url) })
            })
            .collect();
        let differ: Vec<String> = finals
            .iter()
            .filter(|(code, v)| mirror.get(*code).copied().unwrap_or(None) != **v)
            .map(|(code, v)| format!("{code}: cluster {v:?}, mirror {:?}", mirror.get(code)))
            .collect();
        if differ.is_empty() {
            return vec![];
        }
        if Instant::now() >= deadline {
            return vec![format!(
                "the Postgres mirror differs from the cluster on {} codes after 120 s, e.g. {:?}",
                differ.len(),
                &differ[..differ.len().min(5)]
            )];
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every acknowledged redirect must have exactly one click in ClickHouse, found by its tag,
/// except those a node answered in the documented loss window before it crashed
/// (docs/RELIABILITY.md); no click for a 404 or an unanswered request, none counted twice.
async fn check_clicks(env: &Env, history: &[Op], faults: &[FaultRecord]) -> (String, Vec<String>) {
    // The documented loss window of a crash: the queue taken every 50 ms and the batch
    // written every second; two seconds leaves room for a slow disk.
    let window = 2_000_000;
    let crashes: Vec<(usize, u64)> = faults.iter().flat_map(|f| f.crashes.clone()).collect();
    let sql = format!(
        "SELECT referer, short_code, count() FROM linkrift.clicks FINAL \
         WHERE referer LIKE '{}%' GROUP BY referer, short_code",
        workload::TAG_PREFIX
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    loop {
        let clicks = env.ch.try_query(&sql).await.map(|rows| parse_clicks(&rows));
        let account = clicks
            .as_ref()
            .ok()
            .map(|c| check::account_clicks(history, c, &crashes, window));
        let total: Option<u64> = clicks.as_ref().ok().map(|c| c.values().map(|v| v.1).sum());
        // Settled: none missing, and the same total as a second ago (spools drained, no
        // late duplicate).
        let settled = account
            .as_ref()
            .is_some_and(|a| a.missing.is_empty() && total == last);
        if settled || Instant::now() >= deadline {
            let Some(a) = account else {
                return (
                    "none".into(),
                    vec![format!("cannot read the clicks: {clicks:?}")],
                );
            };
            let summary = format!(
                "{} of {} acknowledged redirects ({} lost in the {} s before a crash of their node)",
                total.unwrap_or(0),
                a.acknowledged,
                a.lost_to_crashes,
                window / 1_000_000
            );
            let mut anomalies = a.wrong;
            if !a.missing.is_empty() {
                // Where and when they were answered: node, and the run's 10-second slice.
                let by_tag: BTreeMap<u64, &Op> =
                    history.iter().filter_map(|o| Some((o.tag?, o))).collect();
                let mut slices: BTreeMap<(usize, u64), usize> = BTreeMap::new();
                for tag in &a.missing {
                    if let Some(o) = by_tag.get(tag) {
                        *slices
                            .entry((o.node, o.end() / 10_000_000 * 10))
                            .or_default() += 1;
                    }
                }
                let slices: Vec<String> = slices
                    .iter()
                    .map(|((node, s), n)| format!("node {node} {s}-{} s: {n}", s + 10))
                    .collect();
                anomalies.push(format!(
                    "{} acknowledged redirects have no click after 120 s and no crash of \
                     their node to explain it ({}), e.g. tags {:?}",
                    a.missing.len(),
                    slices.join(", "),
                    &a.missing[..a.missing.len().min(10)]
                ));
            }
            return (summary, anomalies);
        }
        last = total;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// ClickHouse's rows (referer, short code, count; tab-separated) by tag.
/// A tag counted under two codes keeps both, joined by `|` (no code has one).
fn parse_clicks(rows: &str) -> check::Clicks {
    let mut clicks = check::Clicks::new();
    for line in rows.lines() {
        let mut cells = line.split('\t');
        let (Some(referer), Some(code), Some(count)) = (cells.next(), cells.next(), cells.next())
        else {
            continue;
        };
        let (Some(tag), Ok(count)) = (
            referer
                .strip_prefix(workload::TAG_PREFIX)
                .and_then(|t| t.parse::<u64>().ok()),
            count.trim().parse::<u64>(),
        ) else {
            continue;
        };
        let entry = clicks.entry(tag).or_insert_with(|| (String::new(), 0));
        if !entry.0.is_empty() {
            entry.0.push('|');
        }
        entry.0.push_str(code);
        entry.1 += count;
    }
    clicks
}

/// Writes the history (JSON lines) and the faults into the run's directory.
fn save(root: &std::path::Path, history: &[Op], faults: &[FaultRecord]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(root.join("history.jsonl"))?);
    for op in history {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    std::fs::write(root.join("faults.json"), serde_json::to_vec_pretty(faults)?)?;
    Ok(())
}
