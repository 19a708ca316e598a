//! `linkrift serve`: wires the link service and the HTTP API together, and shuts both down
//! cleanly on SIGTERM or Ctrl-C (draining first with `drain_on_shutdown`), or when the
//! node learns it is no longer a member: after a leave it stops; when it was replaced
//! while away it wipes its data and starts again, joining the cluster as a new node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use linkrift_actors::domain::{canonical_host, UrlPolicy};
use linkrift_actors::service::{LinkService, ServiceConfig};
use linkrift_actors::{CacheConfig, Departure};
use linkrift_api::{ApiConfig, AppState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::config::Config;

/// Runs a node until it is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("raft_commit_duration_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ],
        )
        .context("commit buckets")?
        .build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http))?;
    let http = listener.local_addr()?;
    let https = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::https::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let scheme = if https.is_some() { "https" } else { "http" };
    // The certificate loads now, before anything else starts: a node with a bad one stops
    // here and says which file is wrong.
    let listener = match https {
        Some(files) => Public::Tls(
            crate::https::TlsListener::new(listener, files)
                .context("loading the HTTPS certificate")?,
        ),
        None => Public::Plain(listener),
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{http}"));
    // Links back at this node loop: its public URL's host, and the address it listens on
    // (unless that is every address).
    let mut own_hosts: Vec<String> = url::Url::parse(&public_url)
        .ok()
        .and_then(|u| u.host_str().and_then(canonical_host))
        .into_iter()
        .collect();
    if !http.ip().is_unspecified() {
        let ip = match http.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        own_hosts.extend(canonical_host(&ip));
    }
    let tls = match (
        &config.node_tls_ca,
        &config.node_tls_cert,
        &config.node_tls_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => Some(
            linkrift_raft::transport::tls::Tls::load(linkrift_raft::transport::tls::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("loading the TLS files for the peer and cluster ports")?,
        ),
        _ => {
            if config.node_plaintext {
                tracing::warn!("node_plaintext: traffic between nodes is not encrypted, only the cluster secret authenticates it; for development only");
            }
            None
        }
    };
    let service = LinkService::open(ServiceConfig {
        tls,
        data_dir: config.data_dir.clone(),
        peer_addr: config.peer,
        cluster_addr: config.cluster,
        http_addr: http.to_string(),
        join: config.join,
        replication_factor: config.replication_factor,
        cache: CacheConfig {
            capacity: config.near_cache_capacity,
            ttl: Duration::from_millis(config.near_cache_ttl_ms),
            negative_ttl: Duration::from_millis(config.near_cache_negative_ttl_ms),
        },
        dead_after: Duration::from_millis(config.dead_after_ms),
        replica_max_lag: (config.replica_max_lag_ms > 0)
            .then(|| Duration::from_millis(config.replica_max_lag_ms)),
        postgres_url: config.postgres_url.clone(),
        click_ip: linkrift_actors::IpPolicy {
            v4_bits: config.click_ip_v4_bits,
            v6_bits: config.click_ip_v6_bits,
        },
        geoip_database: config.geoip_database.clone(),
        clickhouse: config
            .clickhouse_url
            .clone()
            .map(|url| linkrift_actors::ClickHouseConfig {
                url,
                database: config.clickhouse_database.clone(),
                user: config.clickhouse_user.clone(),
                password: config.clickhouse_password.clone(),
                ca: config.clickhouse_ca.clone(),
            }),
        click_spool_max_bytes: config.click_spool_max_bytes,
        raft: linkrift_actors::service::RaftConfig {
            snapshot_after_entries: config.snapshot_after_entries,
            ..Default::default()
        },
        // A node with no cluster secret is one node alone: nobody can join it (joining needs
        // the same secret on both sides), so its peer and cluster ports take a random one
        // that no other process holds, rather than an empty key anyone could use.
        cluster_secret: match &config.cluster_secret {
            Some(secret) => secret.clone().into_bytes(),
            None => rand::random::<[u8; 32]>().to_vec(),
        },
        shard_count: config.shard_count,
        code_length: config.code_length,
        url_policy: UrlPolicy {
            extra_schemes: config.allowed_schemes.clone(),
            own_hosts,
        },
        ..ServiceConfig::default()
    })
    .await
    .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;

    if let Some(key) = service
        .ensure_admin_key(config.admin_key.as_deref())
        .await
        .context("creating the first admin key")?
    {
        // Printed once, on stdout, so it does not end up in log files.
        println!("admin key (shown once, store it now): {}", key.reveal());
    }

    let service = Arc::new(service);
    let api_config = Arc::new(ApiConfig {
        public_url,
        max_body_bytes: config.max_body_bytes,
        redirect_cache_seconds: config.redirect_cache_seconds,
        country_header: config
            .country_header
            .as_deref()
            .and_then(|h| axum::http::HeaderName::try_from(h).ok()),
        click_capture: config.click_capture,
        metrics_key: config
            .metrics_key
            .as_deref()
            .map(linkrift_actors::domain::ApiKeyHash::of),
    });
    let state = AppState::new(linkrift_api::Shared {
        service: service.clone(),
        redirect: Arc::new(linkrift_api::redirect::Prepared::new(&api_config)),
        config: api_config,
        metrics,
        limits: Arc::new(linkrift_api::limits::RateLimits::new(
            &linkrift_api::limits::RateConfig {
                per_key: rate(config.api_rate_per_key, config.api_rate_burst_seconds),
                per_ip: rate(config.api_rate_per_ip, config.api_rate_burst_seconds),
                redirects_per_ip: rate(config.redirect_rate_per_ip, config.api_rate_burst_seconds),
            },
        )),
    });
    tracing::info!(%http, scheme, node = service.node_id(), peer = %service.peer_addr(), cluster = %service.cluster_addr(), data_dir = %config.data_dir.display(), "linkrift serving");
    println!(
        "linkrift serving {scheme}://{http} with data in {} (node {}, peer {}, cluster {})",
        config.data_dir.display(),
        service.node_id(),
        service.peer_addr(),
        service.cluster_addr()
    );
    tokio::spawn(fail_stop(service.storage_fault()));
    service.spawn_task("metrics upkeep", metrics_upkeep(state.metrics.clone()));
    let mut departures = service.departure();
    let departure = std::sync::Arc::new(std::sync::Mutex::new(None::<Departure>));
    let stop = {
        let service = service.clone();
        let departure = departure.clone();
        let drain = config.drain_on_shutdown;
        async move {
            tokio::select! {
                _ = shutdown_signal() => {
                    if drain {
                        tracing::info!("draining before shutting down");
                        if let Err(e) = service.drain_for_shutdown(Duration::from_secs(30)).await {
                            tracing::warn!(error = %e, "stopping without a complete drain");
                        }
                    }
                }
                d = departed(&mut departures) => {
                    *departure.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                }
            }
        }
    };
    let app =
        linkrift_api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    match listener {
        Public::Plain(plain) => axum::serve(plain, app).with_graceful_shutdown(stop).await,
        // (`tap_io` only for axum's client-address plumbing, which it has for any listener
        // that way.)
        Public::Tls(tls) => {
            axum::serve(axum::serve::ListenerExt::tap_io(tls, |_| {}), app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
    .context("serving HTTP")?;

    tracing::info!("shutting down");
    let left = matches!(
        *departure.lock().unwrap_or_else(|p| p.into_inner()),
        Some(Departure::Left)
    );
    if left {
        // Nothing starts this node again to send what its spool holds: send it now.
        match service.ship_clicks(CLICKS_SHIPPED_WITHIN).await {
            Ok(()) => tracing::info!("every spooled click is in ClickHouse"),
            Err(n) => tracing::error!(
                clicks = n,
                spool = %config.data_dir.join("click-spool").display(),
                "ClickHouse did not take every spooled click within {CLICKS_SHIPPED_WITHIN:?}: \
                 they are not counted, and stay in the spool"
            ),
        }
    }
    tokio::time::timeout(Duration::from_secs(30), service.shutdown())
        .await
        .context("shutdown took longer than 30 s")?;
    tracing::info!("stopped");
    let departure = departure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match departure {
        None => Ok(()),
        Some(Departure::Left) => {
            println!(
                "this node has left the cluster; its data directory {} can be deleted",
                config.data_dir.display()
            );
            Ok(())
        }
        Some(Departure::Replaced { members }) => rejoin(&config, &members),
    }
}

/// How long a node that has left waits for ClickHouse to take its spooled clicks.
const CLICKS_SHIPPED_WITHIN: Duration = Duration::from_secs(60);

/// The public listener: plain HTTP, or HTTPS (`tls_cert`, `tls_key`).
enum Public {
    Plain(tokio::net::TcpListener),
    Tls(crate::https::TlsListener),
}

/// Wipes the data of a node that was replaced while it was away, and starts again (the same
/// process, re-executed) joining the cluster through one of `members` as a new node.
fn rejoin(config: &Config, members: &[String]) -> anyhow::Result<()> {
    let Some(seed) = members.first() else {
        anyhow::bail!("this node was replaced, and no active member is known to join through");
    };
    let dir = &config.data_dir;
    // The identity file goes last: a crash part-way leaves a directory that still says
    // whose it is (and learns again that it was replaced), never data without an identity.
    let identity = dir.join(linkrift_actors::service::IDENTITY_FILE);
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path == identity {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("wiping {}", path.display()))?;
    }
    linkrift_raft::durable::sync_dir(dir).with_context(|| format!("wiping {}", dir.display()))?;
    std::fs::remove_file(&identity).with_context(|| format!("wiping {}", identity.display()))?;
    linkrift_raft::durable::sync_dir(dir).with_context(|| format!("wiping {}", dir.display()))?;
    println!(
        "this node was replaced while it was away; its data is wiped, and it joins again through {seed}"
    );
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut old = std::env::args_os().skip(1);
    while let Some(arg) = old.next() {
        match arg.to_str() {
            Some("--join") => {
                old.next();
            }
            Some(a) if a.starts_with("--join=") => {}
            _ => args.push(arg),
        }
    }
    args.push("--join".into());
    args.push(seed.into());
    let exe = std::env::current_exe().context("finding this program to start it again")?;
    let error =
        std::os::unix::process::CommandExt::exec(std::process::Command::new(exe).args(args));
    Err(error).context("starting again to rejoin")
}

/// How long a node whose storage failed goes on answering (not ready, reads and writes
/// passed to other nodes) before it exits: long enough for in-flight requests to be
/// answered and for a probe to see `/readyz` fail with the reason.
const FAIL_STOP_GRACE: Duration = Duration::from_secs(1);
/// The exit status of a node whose storage failed (`EX_IOERR`).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Exits the process once the node's storage has failed: sled keeps failing after its first
/// I/O error and openraft has stopped the group that met it, so only a restart (on a
/// healthy disk) recovers. Nothing is flushed on the way out: nothing written can be
/// trusted to have reached the disk, and everything acknowledged already has.
async fn fail_stop(fault: linkrift_raft::StorageFault) {
    let reason = fault.tripped().await;
    tokio::time::sleep(FAIL_STOP_GRACE).await;
    eprintln!("linkrift: storage failed ({reason}); exiting with status {EXIT_STORAGE_FAILED} so that a supervisor restarts this node");
    std::process::exit(EXIT_STORAGE_FAILED);
}

/// How often the recorder's histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histograms' recorded samples into their buckets every few seconds. The
/// recorder keeps each sample until then (`build_recorder` starts no upkeep of its own, as
/// `install` would): without this, a node under load that nobody scrapes grows by 8 bytes
/// per sample (a Raft commit's duration, say) until the next scrape. (The request
/// metrics are bucket counts per thread, in `linkrift_api::stripes`, and need none.)
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Resolves when the node learns it is no longer a member.
async fn departed(departures: &mut tokio::sync::watch::Receiver<Option<Departure>>) -> Departure {
    loop {
        let seen = departures.borrow_and_update().clone();
        if let Some(d) = seen {
            return d;
        }
        if departures.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A rate of `per_second` (none for 0) with bursts of `burst_seconds`.
fn rate(per_second: u32, burst_seconds: u32) -> Option<linkrift_api::limits::Rate> {
    (per_second > 0).then_some(linkrift_api::limits::Rate {
        per_second,
        burst_seconds,
    })
}
