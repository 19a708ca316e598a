//! Click analytics: every redirect's click, counted off the hot path.
//!
//! - [`event`]: from what a redirect saw ([`event::RawClick`], copied without parsing) to
//!   the event that is stored ([`event::ClickEvent`]): id, truncated IP, device, browser,
//!   OS, bot flag, referer host, language, country.
//! - [`rollup`]: the embedded store (hourly roll-ups in sled), used when no ClickHouse is
//!   configured.
//!
//! The click actor is a task fed by a bounded channel: a redirect hands its click over with
//! `try_send` and never waits; a full queue drops the click and counts it
//! (`clicks_dropped_total{reason="queue_full"}`). (ractor's mailboxes are unbounded, which is
//! why this one is a plain channel.) The task describes clicks and writes them in batches of
//! up to 5,000, or every second. Clicks still queued or batched when a node crashes are
//! lost: at most a second's worth plus the queue.

pub mod event;
pub mod rollup;

use std::time::Duration;

use tokio::sync::mpsc;

use event::{Agents, ClickEvent, IpPolicy, RawClick};
use rollup::Rollups;

/// Clicks waiting to be described, at most.
pub const QUEUE: usize = 100_000;
/// Clicks written at once, at most.
pub const BATCH: usize = 5_000;
/// How long a click may wait for its batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The hot path's handle on the click actor.
#[derive(Clone)]
pub struct Clicks {
    queue: mpsc::Sender<RawClick>,
}

impl Clicks {
    /// Starts the click actor writing to `rollups`.
    pub fn start(rollups: Rollups, ip: IpPolicy) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, rollups, ip));
        Self { queue }
    }

    /// Hands a click over without waiting.
    pub fn record(&self, click: RawClick) {
        match self.queue.try_send(click) {
            Ok(()) => metrics::counter!("clicks_enqueued_total").increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("clicks_dropped_total", "reason" => "queue_full").increment(1)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!("clicks_dropped_total", "reason" => "stopped").increment(1)
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<RawClick>, rollups: Rollups, ip: IpPolicy) {
    let mut agents = Agents::default();
    let mut batch: Vec<ClickEvent> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (open, ticked) = tokio::select! {
            click = rx.recv() => match click {
                Some(raw) => {
                    batch.push(ClickEvent::describe(raw, &mut agents, ip));
                    (true, false)
                }
                None => (false, false),
            },
            _ = tick.tick() => (true, true),
        };
        if batch.len() >= BATCH || (!batch.is_empty() && (ticked || !open)) {
            flush(&rollups, &mut batch).await;
        }
        if !open {
            return;
        }
    }
}

async fn flush(rollups: &Rollups, batch: &mut Vec<ClickEvent>) {
    let events = std::mem::take(batch);
    let n = events.len() as u64;
    let rollups = rollups.clone();
    let written = tokio::task::spawn_blocking(move || rollups.record(&events)).await;
    match written {
        Ok(Ok(())) => metrics::counter!("clicks_ingested_total").increment(n),
        Ok(Err(e)) => {
            tracing::error!(error = %e, clicks = n, "could not store clicks");
            metrics::counter!("clicks_dropped_total", "reason" => "store_error").increment(n);
        }
        Err(e) => {
            tracing::error!(error = %e, clicks = n, "the click store task failed");
            metrics::counter!("clicks_dropped_total", "reason" => "store_error").increment(n);
        }
    }
}
