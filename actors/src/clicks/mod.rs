//! Click analytics: every redirect's click, counted off the hot path.
//!
//! - [`event`]: from what a redirect saw ([`event::RawClick`], copied without parsing) to
//!   the event that is stored ([`event::ClickEvent`]): id, truncated IP, device, browser,
//!   OS, bot flag, referer host, language, country.
//! - [`clickhouse`]: the ClickHouse store (`--clickhouse-url`), and [`spool`], where its
//!   batches wait on local disk until ClickHouse has them.
//! - [`rollup`]: the embedded store (hourly roll-ups in sled), used when no ClickHouse is
//!   configured.
//!
//! The click actor is a task fed through a bounded queue: a redirect pushes its click onto
//! a vector under a short lock and never waits; a full queue (100,000 clicks) drops the
//! click and counts it (`clicks_dropped_total{reason="queue_full"}`). No task is woken per
//! click: the task takes the whole queue every 50 ms (sooner when a batch's worth waits),
//! describes the clicks, and writes them in batches of up to 5,000, or every second: into
//! the embedded store (which logs each batch, synced, and adds it up in memory), or into
//! the spool, from which a second task (the shipper) sends them to ClickHouse oldest first.
//! (ractor's mailboxes are unbounded and wake the actor per message, which is why this is a
//! plain task.) Clicks still queued or batched when a node crashes are lost: at most a
//! second's worth. A node that stops cleanly writes them first.

pub mod clickhouse;
pub mod event;
pub mod rollup;
pub mod spool;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use self::clickhouse::ClickHouse;
use event::{ClickEvent, Countries, Describer, IpPolicy, RawClick};
use rollup::Rollups;
use spool::Spool;

/// Clicks waiting to be described, at most.
pub const QUEUE: usize = 100_000;
/// Clicks written at once, at most.
pub const BATCH: usize = 5_000;
/// How long a click may wait for its batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The shipper's longest wait between attempts while ClickHouse fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// ClickHouse failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A link's clicks over a time range, from either store: what stats are built from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Clicks per hour (the hour's start, Unix milliseconds).
    pub hours: BTreeMap<i64, u64>,
    /// Clicks per dimension (see [`rollup::DIMENSIONS`]) and value.
    pub dims: BTreeMap<String, BTreeMap<String, u64>>,
    /// Distinct visitors (truncated address and user agent).
    pub unique_visitors: u64,
}

/// Where a node's clicks go.
#[derive(Clone)]
pub enum ClickSink {
    /// Hourly roll-ups in the node's own database.
    Embedded(Rollups),
    /// ClickHouse, through a spool on local disk.
    ClickHouse {
        /// The store.
        store: Box<ClickHouse>,
        /// The spool's directory.
        spool_dir: PathBuf,
        /// The spool's bound, in bytes.
        spool_max_bytes: u64,
    },
}

/// Clicks handed over by redirects, waiting for the click task. A redirect only pushes
/// onto a vector under a lock that is never held for long: no task is woken per click (the
/// task takes the whole vector every 50 ms, or when a batch's worth waits).
struct Queue {
    clicks: Mutex<Vec<RawClick>>,
    full: Notify,
}

/// How often the click task takes what redirects handed over.
const TAKE_EVERY: Duration = Duration::from_millis(50);

/// The hot path's handle on the click actor.
#[derive(Clone)]
pub struct Clicks {
    queue: Arc<Queue>,
    /// Asks the task to write what it has, and answers when done.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    stop: tokio_util::sync::CancellationToken,
}

/// Where the describing task puts its batches.
enum Writer {
    Embedded(Rollups),
    Spool {
        spool: Arc<Mutex<Spool>>,
        spooled: Arc<Notify>,
    },
}

impl Clicks {
    /// Starts the click actor (and, for ClickHouse, its shipper) writing to `sink`.
    ///
    /// A batch that cannot be written (to the roll-up log or the spool) trips `fault`: the
    /// node stops, rather than go on dropping every click. Both run under `tasks`.
    pub fn start(
        sink: ClickSink,
        ip: IpPolicy,
        countries: Option<Countries>,
        fault: linkrift_raft::StorageFault,
        tasks: &crate::tasks::Tasks,
    ) -> std::io::Result<Self> {
        // Every series exists from the start, so rates and alerts see zeros, not gaps.
        metrics::counter!("clicks_enqueued_total").increment(0);
        metrics::counter!("clicks_ingested_total").increment(0);
        for reason in [
            "queue_full",
            "spool_full",
            "spool_corrupt",
            "store_error",
            "stopped",
        ] {
            metrics::counter!("clicks_dropped_total", "reason" => reason).increment(0);
        }
        let queue = Arc::new(Queue {
            clicks: Mutex::new(Vec::new()),
            full: Notify::new(),
        });
        let (flushes, flush_rx) = mpsc::channel(16);
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = match sink {
            ClickSink::Embedded(rollups) => Writer::Embedded(rollups),
            ClickSink::ClickHouse {
                store,
                spool_dir,
                spool_max_bytes,
            } => {
                let spool = Arc::new(Mutex::new(Spool::open(&spool_dir, spool_max_bytes)?));
                let spooled = Arc::new(Notify::new());
                metrics::counter!("clicks_ingest_errors_total").increment(0);
                report_spool(&spool.lock().expect("spool lock"));
                let (to_ship, shipped) = (spool.clone(), spooled.clone());
                tasks.spawn_graceful("ship clicks to ClickHouse", move |stop| {
                    ship(*store, to_ship, shipped, stop)
                });
                Writer::Spool { spool, spooled }
            }
        };
        tasks.spawn(
            "click writer",
            run(
                queue.clone(),
                flush_rx,
                writer,
                Describer::new(ip, countries),
                fault,
            ),
        );
        Ok(Self {
            queue,
            flushes,
            stop,
        })
    }

    /// Hands a click over without waiting.
    pub fn record(&self, click: RawClick) {
        if self.stop.is_cancelled() {
            metrics::counter!("clicks_dropped_total", "reason" => "stopped").increment(1);
            return;
        }
        let waiting = {
            let mut clicks = self.queue.clicks.lock().expect("click queue lock");
            if clicks.len() >= QUEUE {
                None
            } else {
                clicks.push(click);
                Some(clicks.len())
            }
        };
        match waiting {
            None => {
                metrics::counter!("clicks_dropped_total", "reason" => "queue_full").increment(1)
            }
            Some(BATCH) => self.queue.full.notify_one(),
            Some(_) => {}
        }
    }

    /// Writes every click handed over so far to the store, or to the spool for ClickHouse.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Flushes, and takes no click after; what is spooled and not sent when the node's tasks
    /// stop is sent at the next start.
    pub async fn stop(&self) {
        self.flush().await;
        self.stop.cancel();
    }
}

async fn run(
    queue: Arc<Queue>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    writer: Writer,
    mut describer: Describer,
    fault: linkrift_raft::StorageFault,
) {
    let mut batch: Vec<ClickEvent> = Vec::with_capacity(BATCH);
    let mut taken: Vec<RawClick> = Vec::new();
    let mut written = tokio::time::Instant::now();
    loop {
        let answer = tokio::select! {
            _ = tokio::time::sleep(TAKE_EVERY) => None,
            _ = queue.full.notified() => None,
            asked = flushes.recv() => match asked {
                Some(answer) => Some(answer),
                // Every handle is gone: the service has stopped.
                None => return,
            },
        };
        std::mem::swap(
            &mut *queue.clicks.lock().expect("click queue lock"),
            &mut taken,
        );
        metrics::counter!("clicks_enqueued_total").increment(taken.len() as u64);
        for (i, raw) in taken.drain(..).enumerate() {
            // Describing a click takes about a microsecond: let the redirects sharing this
            // worker thread go first every so often.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            batch.push(describer.describe(raw));
            if batch.len() >= BATCH {
                write(
                    &writer,
                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                    &fault,
                )
                .await;
                written = tokio::time::Instant::now();
            }
        }
        if !batch.is_empty() && (answer.is_some() || written.elapsed() >= FLUSH_EVERY) {
            write(
                &writer,
                std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                &fault,
            )
            .await;
            written = tokio::time::Instant::now();
        }
        if let Some(answer) = answer {
            let _ = answer.send(());
        }
    }
}

async fn write(writer: &Writer, events: Vec<ClickEvent>, fault: &linkrift_raft::StorageFault) {
    let n = events.len() as u64;
    let written = match writer {
        Writer::Embedded(rollups) => {
            let rollups = rollups.clone();
            tokio::task::spawn_blocking(move || rollups.record(&events).map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        }
        Writer::Spool { spool, spooled } => {
            let spool = spool.clone();
            let pushed = tokio::task::spawn_blocking(move || {
                let mut spool = spool.lock().expect("spool lock");
                let pushed = spool.push_kept(Arc::new(events));
                report_spool(&spool);
                pushed.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            spooled.notify_one();
            pushed
        }
    };
    match written {
        Ok(true) => {
            if matches!(writer, Writer::Embedded(_)) {
                metrics::counter!("clicks_ingested_total").increment(n);
            }
        }
        Ok(false) => {
            tracing::warn!(
                clicks = n,
                "the click spool is full (click_spool_max_bytes): clicks dropped"
            );
            metrics::counter!("clicks_dropped_total", "reason" => "spool_full").increment(n);
        }
        Err(e) => {
            tracing::error!(error = %e, clicks = n, "could not store clicks");
            metrics::counter!("clicks_dropped_total", "reason" => "store_error").increment(n);
            let source = match writer {
                Writer::Embedded(_) => "click_log",
                Writer::Spool { .. } => "click_spool",
            };
            fault.report(source, &e);
        }
    }
}

fn report_spool(spool: &Spool) {
    metrics::gauge!("clicks_spooled").set(spool.events() as f64);
    metrics::gauge!("clicks_spool_bytes").set(spool.bytes() as f64);
    let lag = spool.oldest_ms().map_or(0.0, |t| {
        (linkrift_model::now_ms() - t).max(0) as f64 / 1000.0
    });
    metrics::gauge!("clicks_ingest_lag_seconds").set(lag);
}

/// Sends spooled batches to ClickHouse, oldest first, until each is acknowledged.
async fn ship(
    store: ClickHouse,
    spool: Arc<Mutex<Spool>>,
    spooled: Arc<Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut migrated = false;
    let mut backoff = Duration::from_millis(100);
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        let attempt = async {
            if !migrated {
                store.migrate().await?;
                migrated = true;
            }
            let next = {
                let spool = spool.clone();
                tokio::task::spawn_blocking(move || spool.lock().expect("spool lock").oldest())
                    .await
                    .expect("reading the spool")
            };
            let Some((seq, batch)) = next else {
                return Ok(false);
            };
            store.insert(&batch).await?;
            metrics::counter!("clicks_ingested_total").increment(batch.len() as u64);
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || {
                let mut spool = spool.lock().expect("spool lock");
                if let Err(e) = spool.remove(seq) {
                    tracing::error!(error = %e, "could not remove a sent click batch; it will be sent again");
                }
                report_spool(&spool);
            })
            .await
            .expect("updating the spool");
            Ok::<bool, clickhouse::StoreError>(true)
        };
        let attempt = tokio::select! {
            result = attempt => result,
            _ = stop.cancelled() => return,
        };
        match attempt {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => {
                report_spool(&spool.lock().expect("spool lock"));
                tokio::select! {
                    _ = tokio::time::timeout(FLUSH_EVERY, spooled.notified()) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                metrics::counter!("clicks_ingest_errors_total").increment(1);
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(error = %e, "clicks wait in the spool until ClickHouse takes them");
                    last_log = Some(tokio::time::Instant::now());
                }
                report_spool(&spool.lock().expect("spool lock"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
