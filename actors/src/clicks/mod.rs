//! Click analytics: every redirect's click, counted off the hot path.
//!
//! - [`event`]: from what a redirect saw ([`event::Seen`], then [`event::RawClick`]) to
//!   the event that is stored ([`event::ClickEvent`]): id, truncated IP, device, browser,
//!   OS, bot flag, referer host, language, country.
//! - [`clickhouse`]: the ClickHouse store (`--clickhouse-url`), and [`spool`], where its
//!   batches wait on local disk until ClickHouse has them.
//! - [`rollup`]: the embedded store (hourly roll-ups in sled), used when no ClickHouse is
//!   configured.
//!
//! The click thread is fed through slots: a redirect locks its own thread's slot (no other
//! core takes it), interns the header texts it saw there (a click owns no string), pushes
//! the click and never waits; a slot holding 100,000 clicks drops the next and counts it
//! (`clicks_dropped_total{reason="queue_full"}`). Nothing is woken per click: the thread
//! takes every slot's clicks every 50 ms (sooner when one holds a batch's worth), describes
//! them, and writes them in batches of up to 5,000, or every second: into the embedded
//! store (which logs each batch, synced, and adds it up in memory), or into the spool,
//! from which a task (the shipper) sends them to ClickHouse oldest first. The thread runs at
//! nice [`CLICK_THREAD_NICE`], so that a saturated CPU runs redirects first. Clicks still
//! queued or batched when a node crashes are lost: at most a second's worth. A node that
//! stops cleanly writes them first.

pub mod clickhouse;
pub mod event;
pub mod rollup;
pub mod spool;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use self::clickhouse::ClickHouse;
use event::{ClickEvent, Countries, Describer, IpPolicy, RawClick, Seen};
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

/// How often the click thread takes what redirects handed over.
const TAKE_EVERY: Duration = Duration::from_millis(50);

/// The click thread's niceness: above the request path's 0, so that on a saturated CPU the
/// kernel runs redirects first, yet with about a quarter of the CPU's weight when both want
/// it (nice 5 weighs 335 against 1,024), more than the 15 % describing and storing clicks
/// took in the profile; at nice 10 (weight 110) and 19 (weight 15) it fell behind and
/// dropped clicks (BENCHMARKS).
pub const CLICK_THREAD_NICE: i32 = 5;

/// Most distinct texts a slot keeps interned (it starts over when full).
const INTERNED: usize = 1024;

/// Slots at most: redirects on different threads use different slots.
const MAX_SLOTS: usize = 16;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot (modulo the number of slots): threads are dealt slots in turn.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

/// One slot of the hand-over: the clicks of the threads dealt it, and the texts they
/// share. Aligned to its own cache lines, so that slots of different cores never share one.
#[repr(align(128))]
struct Slot(Mutex<Buffer>);

#[derive(Default)]
struct Buffer {
    clicks: Vec<RawClick>,
    texts: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl Buffer {
    /// `text`, cut to `max` bytes, as the slot's one shared copy.
    fn intern(&mut self, text: Option<&str>, max: usize) -> Option<Arc<str>> {
        let text = event::clipped(text?, max);
        if let Some(kept) = self.texts.get(text) {
            return Some(kept.clone());
        }
        if self.texts.len() >= INTERNED {
            self.texts.clear();
        }
        let kept: Arc<str> = Arc::from(text);
        self.texts.insert(kept.clone());
        Some(kept)
    }
}

/// Clicks handed over by redirects, waiting for the click thread. A redirect locks only
/// its thread's slot, which no other core uses; the click thread takes each slot's clicks
/// every 50 ms (or at once when one slot holds a batch's worth).
struct Queue {
    slots: Box<[Slot]>,
    /// Wakes the click thread.
    wake: std_mpsc::Sender<Command>,
    /// Counted when a click is refused.
    dropped_full: metrics::Counter,
    dropped_stopped: metrics::Counter,
    stopped: AtomicBool,
}

enum Command {
    /// A slot holds a batch's worth.
    Take,
    /// Write everything handed over, then answer.
    Flush(oneshot::Sender<()>),
    /// Write everything handed over, then end.
    Stop,
}

/// The hot path's handle on the click thread.
#[derive(Clone)]
pub struct Clicks {
    queue: Arc<Queue>,
    /// The ClickHouse spool, and what the shipper signals after each batch it sent.
    spool: Option<(Arc<Mutex<Spool>>, Arc<Notify>)>,
}

/// Where the click thread puts its batches.
enum Writer {
    Embedded(Rollups),
    Spool {
        spool: Arc<Mutex<Spool>>,
        spooled: Arc<Notify>,
    },
}

impl Clicks {
    /// Starts the click thread (and, for ClickHouse, the shipper task) writing to `sink`.
    ///
    /// A batch that cannot be written (to the roll-up log or the spool) trips `fault`: the
    /// node stops, rather than go on dropping every click. The thread belongs to a task of
    /// `tasks`, which stops it (after it has written what it holds) at shutdown.
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
        let mut shipping = None;
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
                let sent = Arc::new(Notify::new());
                let (to_ship, shipped, sent_one) = (spool.clone(), spooled.clone(), sent.clone());
                tasks.spawn_graceful("ship clicks to ClickHouse", move |stop| {
                    ship(*store, to_ship, shipped, sent_one, stop)
                });
                shipping = Some((spool.clone(), sent));
                Writer::Spool { spool, spooled }
            }
        };
        let slots = std::thread::available_parallelism()
            .map_or(2, |n| n.get() * 2)
            .clamp(2, MAX_SLOTS);
        let (wake, commands) = std_mpsc::channel();
        let queue = Arc::new(Queue {
            slots: (0..slots).map(|_| Slot(Mutex::default())).collect(),
            wake: wake.clone(),
            dropped_full: metrics::counter!("clicks_dropped_total", "reason" => "queue_full"),
            dropped_stopped: metrics::counter!("clicks_dropped_total", "reason" => "stopped"),
            stopped: AtomicBool::new(false),
        });
        let describer = Describer::new(ip, countries);
        // The thread holds the queue only while it takes from it: once every handle is
        // gone (a node dropped without a shutdown, as in tests), it ends.
        let taken_from = Arc::downgrade(&queue);
        let thread = std::thread::Builder::new()
            .name("click writer".into())
            .spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(
                    Some(rustix::thread::gettid()),
                    CLICK_THREAD_NICE,
                ) {
                    tracing::warn!(error = %e, "could not lower the click thread's priority");
                }
                run(&taken_from, &commands, &writer, describer, &fault)
            })?;
        let stopping = queue.clone();
        tasks.spawn_graceful("click writer", move |stop| async move {
            stop.cancelled().await;
            stopping.stopped.store(true, Ordering::Relaxed);
            let _ = wake.send(Command::Stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        });
        Ok(Self {
            queue,
            spool: shipping,
        })
    }

    /// Hands a click over without waiting: a lock no other core takes, and no string
    /// copied that this slot has seen recently.
    pub fn record(&self, seen: Seen<'_>) {
        let queue = &*self.queue;
        if queue.stopped.load(Ordering::Relaxed) {
            queue.dropped_stopped.increment(1);
            return;
        }
        let slot = &queue.slots[SLOT.with(|s| *s) % queue.slots.len()];
        let waiting = {
            let mut buffer = slot.0.lock().expect("click slot lock");
            if buffer.clicks.len() >= QUEUE {
                None
            } else {
                let click = RawClick {
                    code: seen.code.shared(),
                    shard: seen.shard,
                    at_ms: seen.at_ms,
                    ip: seen.ip,
                    user_agent: buffer.intern(seen.user_agent, event::MAX_USER_AGENT),
                    referer: buffer.intern(seen.referer, event::MAX_REFERER),
                    accept_language: buffer.intern(seen.accept_language, event::MAX_LANGUAGES),
                    country: buffer.intern(seen.country, event::MAX_COUNTRY),
                };
                buffer.clicks.push(click);
                Some(buffer.clicks.len())
            }
        };
        match waiting {
            None => queue.dropped_full.increment(1),
            Some(BATCH) => {
                let _ = queue.wake.send(Command::Take);
            }
            Some(_) => {}
        }
    }

    /// Writes every click handed over so far to the store, or to the spool for ClickHouse.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.wake.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Flushes, then waits (up to `within`) until ClickHouse has taken every spooled batch:
    /// for a node that is leaving, whose spool no later start would send. Clicks still
    /// spooled at the deadline, if any, as an error (with the embedded store, nothing waits).
    pub async fn ship_all(&self, within: Duration) -> Result<(), u64> {
        self.flush().await;
        let Some((spool, sent)) = &self.spool else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Asked for before the check, so a batch sent in between is not missed.
            let one_sent = sent.notified();
            let left = spool.lock().expect("spool lock").events();
            if left == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, one_sent).await.is_err() {
                return Err(left);
            }
        }
    }

    /// Flushes, and takes no click after; what is spooled and not sent when the node's tasks
    /// stop is sent at the next start.
    pub async fn stop(&self) {
        self.flush().await;
        self.queue.stopped.store(true, Ordering::Relaxed);
    }
}

/// The click thread: takes what the slots hold, describes it, and writes it in batches.
fn run(
    queue: &std::sync::Weak<Queue>,
    commands: &std_mpsc::Receiver<Command>,
    writer: &Writer,
    mut describer: Describer,
    fault: &linkrift_raft::StorageFault,
) {
    let enqueued = metrics::counter!("clicks_enqueued_total");
    let mut batch: Vec<ClickEvent> = Vec::with_capacity(BATCH);
    let mut taken: Vec<RawClick> = Vec::new();
    let mut written = std::time::Instant::now();
    // Clicks the deliberate bug `mutation.drop_click` has seen.
    let mut seen_by_bug = 0u64;
    loop {
        let command = match commands.recv_timeout(TAKE_EVERY) {
            Ok(command) => Some(command),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            // The queue holds a sender: it is gone with it, below.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Every handle is gone (a node dropped without a shutdown): end.
        let Some(queue) = queue.upgrade() else {
            return;
        };
        for slot in &*queue.slots {
            std::mem::swap(
                &mut slot.0.lock().expect("click slot lock").clicks,
                &mut taken,
            );
            enqueued.increment(taken.len() as u64);
            if linkrift_raft::failpoint::mutated(linkrift_raft::failpoint::DROP_CLICK) {
                // The deliberate bug: one click in 500 vanishes without a trace.
                taken.retain(|_| {
                    seen_by_bug += 1;
                    seen_by_bug % 500 != 0
                });
            }
            for raw in taken.drain(..) {
                batch.push(describer.describe(raw));
                if batch.len() >= BATCH {
                    write(writer, &mut batch, fault);
                    written = std::time::Instant::now();
                }
            }
        }
        let now = matches!(command, Some(Command::Flush(_) | Command::Stop));
        if !batch.is_empty() && (now || written.elapsed() >= FLUSH_EVERY) {
            write(writer, &mut batch, fault);
            written = std::time::Instant::now();
        }
        match command {
            Some(Command::Flush(answer)) => {
                let _ = answer.send(());
            }
            Some(Command::Stop) => return,
            Some(Command::Take) | None => {}
        }
    }
}

/// Writes `events` and empties it (keeping its allocation when the store does not keep the
/// batch: freeing a megabyte per batch made the allocator consolidate its free lists).
fn write(writer: &Writer, events: &mut Vec<ClickEvent>, fault: &linkrift_raft::StorageFault) {
    let n = events.len() as u64;
    let written = match writer {
        Writer::Embedded(rollups) => {
            let recorded = rollups.record(events).map_err(|e| e.to_string());
            events.clear();
            recorded
        }
        Writer::Spool { spool, spooled } => {
            let events = std::mem::replace(events, Vec::with_capacity(BATCH));
            let pushed = {
                let mut spool = spool.lock().expect("spool lock");
                let pushed = spool.push_kept(Arc::new(events));
                report_spool(&spool);
                pushed.map_err(|e| e.to_string())
            };
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

/// Sends spooled batches to ClickHouse, oldest first, until each is acknowledged; tells
/// `sent` after each one.
async fn ship(
    store: ClickHouse,
    spool: Arc<Mutex<Spool>>,
    spooled: Arc<Notify>,
    sent: Arc<Notify>,
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
            sent.notify_waiters();
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
