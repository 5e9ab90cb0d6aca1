//! The outbox worker: claims queued emails, renders and sends them concurrently, and records
//! how each ended.
//!
//! - **Claims** are leases in the store (`claimed_until`), so several instances share the
//!   outbox and no lock is held across an SMTP call.
//! - **Rendering** happens here, at send time, from the customer and order as they are now; a
//!   template error is recorded on the timeline and logged, never a crash. The sending rules
//!   that can change after an email was queued (an unsubscribe, a bounce) are checked again.
//! - **Sending** runs up to `mail.concurrency` at once, paced by `mail.rate_limit`, each under
//!   its own deadline.
//! - **Outcomes** are recorded in batches, one transaction each: sent; 4xx or connection
//!   trouble → retried with exponential backoff and jitter, inside the step's send window,
//!   until `mail.retry.give_up_after`; 5xx → the address is marked bounced.
//!
//! A row is marked sent only after the transport accepted it, so a crash between the two
//! re-sends at most the emails in flight (same Message-ID) and never loses one.

use super::Shutdown;
use crate::clock::Clock;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use minijinja::{Value, context};
use tokio::sync::{Notify, mpsc};

use crate::config;
use crate::engine::context::Ctx;
use crate::engine::{Engine, Profile};
use crate::mail::transport::{Failure, Plan, SendError, Transport};
use crate::mail::{Composer, Outgoing};
use crate::sequence::Sequence;
use crate::service::metrics::Metrics;
use crate::service::reload::Live;
use crate::service::versions::Kept;
use crate::store::record::profile_and_orders;
use crate::store::{Delivery, OutboxRow, Store};

/// How often the outbox is looked at when nobody signals new work.
const POLL: Duration = Duration::from_millis(200);

pub struct Sender {
    pub store: Box<dyn Store>,
    /// The engine's catalog and policy: templates, send windows, quiet hours, timezones.
    pub engine: Arc<Engine>,
    pub composer: Composer,
    pub transport: Plan,
    pub settings: config::Delivery,
    /// Decide and record everything, send nothing.
    pub dry_run: bool,
    /// Signalled when new emails are queued, so they go out without waiting for the poll.
    pub wake: Arc<Notify>,
    pub observe: Observe,
    /// What time it is (leases, retries, send windows).
    pub clock: Arc<dyn Clock>,
}

/// What the worker reports to and follows while `run` runs.
#[derive(Default, Clone)]
pub struct Observe {
    pub metrics: Arc<Metrics>,
    /// Hot reloads: templates and send windows of the new catalog.
    pub live: Option<Arc<Live>>,
    /// Where a store that keeps failing shows (`/readyz`).
    pub health: Option<Arc<super::health::Health>>,
}

impl Observe {
    fn store_failing(&self, error: &str) {
        if let Some(h) = &self.health {
            h.failing(super::health::component::OUTBOX, error, STORE_RETRY);
        } else {
            tracing::warn!(error, "outbox: store unavailable; retrying");
        }
    }

    fn store_ok(&self) {
        if let Some(h) = &self.health {
            h.recovered(super::health::component::OUTBOX);
        }
    }
}

/// What a lease keeps, past the longest send, for the outcome to be recorded.
const RECORD_ROOM: Duration = Duration::from_secs(30);

/// Slack in a lease for the pacer's timer firing late: a send due at the end of the pace
/// horizon still starts.
const LEASE_SLACK: Duration = Duration::from_secs(5);

/// How far ahead of the pacer emails are claimed (or `send_timeout`, if shorter).
const PACE_HORIZON: Duration = Duration::from_secs(1);

/// The wait before the store is tried again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// What preparing a row gave: a message to send, or an outcome already.
enum Prepared {
    Send {
        mail: Outgoing,
        address: String,
        profile: Arc<Profile>,
        sequence: Option<Arc<Sequence>>,
    },
    Done(Delivery),
}

impl Sender {
    /// The outbox worker for `config` as `run` builds it — its composer (signing key, DKIM)
    /// and transport — sending for real, not woken, observed by nothing, on the system clock:
    /// the caller changes what it needs.
    pub fn new(
        config: &crate::config::Config,
        delivery: config::Delivery,
        store: Box<dyn Store>,
        engine: Arc<Engine>,
    ) -> anyhow::Result<Sender> {
        Ok(Sender {
            store,
            engine,
            composer: super::composer(config, &delivery)?,
            transport: super::transport(config, &delivery)?,
            settings: delivery,
            dry_run: false,
            wake: Arc::default(),
            observe: Observe::default(),
            clock: crate::clock::system(),
        })
    }

    /// Sends until `stop`, then waits for the sends in flight and records them.
    pub fn run(self, stop: &Shutdown) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("outbox-send")
            .enable_all()
            .build()?;
        let Sender {
            store,
            engine,
            composer,
            transport,
            settings,
            dry_run,
            wake,
            observe,
            clock,
        } = self;
        // The SMTP pool is created and dropped in the runtime's context.
        let _inside = rt.enter();
        let mut worker = Worker {
            store,
            engine,
            composer,
            transport: Arc::new(transport.open()),
            settings,
            dry_run,
            wake,
            seen: observe.live.as_ref().map_or(0, |l| l.generation()),
            observe,
            kept: Kept::default(),
            clock,
        };
        worker.serve(&rt, stop);
        Ok(())
    }
}

/// The sender inside its runtime, with the transport open.
struct Worker {
    store: Box<dyn Store>,
    engine: Arc<Engine>,
    composer: Composer,
    transport: Arc<Transport>,
    settings: config::Delivery,
    dry_run: bool,
    wake: Arc<Notify>,
    observe: Observe,
    /// The catalog generation the engine was built from.
    seen: u64,
    /// Versions no longer loaded, revived from the store: their emails render with the
    /// templates kept with them.
    kept: Kept,
    clock: Arc<dyn Clock>,
}

impl Worker {
    /// The loop runs on the outbox thread, outside the runtime: the store's clients block
    /// (PostgreSQL's runs a runtime of its own). Sends run on the runtime's threads; the loop
    /// enters the runtime only to pace them and to wait.
    fn serve(&mut self, rt: &tokio::runtime::Runtime, stop: &Shutdown) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(OutboxRow, Delivery)>();
        match self.store.release_stale_claims() {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                emails = n,
                "claims left by a crash released: sending them again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "releasing stale claims failed; they expire with their lease")
            }
        }
        let mut in_flight = 0usize;
        let mut finished: Vec<(OutboxRow, Delivery)> = Vec::new();
        let mut pacer = Pacer::new(self.settings.rate_limit);
        loop {
            if let Some(catalog) = self
                .observe
                .live
                .as_ref()
                .and_then(|l| l.changed(&mut self.seen))
            {
                self.engine = Arc::new(Engine::new(catalog, self.engine.policy.clone()));
            }
            let stopping = stop.is_triggered();
            while let Ok(done) = done_rx.try_recv() {
                in_flight -= 1;
                finished.push(done);
            }
            if !finished.is_empty() {
                match self.store.finish_emails(self.clock.now(), &finished) {
                    Ok(fenced) => {
                        self.observe.store_ok();
                        if !fenced.is_empty() {
                            tracing::warn!(
                                emails = fenced.len(),
                                "outcomes not recorded: their claims had expired and been taken by another claim"
                            );
                            // Not this worker's to report: the current claim reports its own.
                            for &i in fenced.iter().rev() {
                                finished.remove(i);
                            }
                        }
                        log_outcomes(&finished);
                        self.observe.metrics.delivered(&finished, self.clock.now());
                        finished.clear();
                    }
                    Err(e) => {
                        // Kept and recorded on the next pass; the claims outlive the wait.
                        self.observe
                            .store_failing(&format!("recording deliveries: {e}"));
                        std::thread::sleep(STORE_RETRY);
                        continue;
                    }
                }
            }
            if stopping && in_flight == 0 {
                return;
            }
            // Only what can start within a second at the current pace is claimed: every
            // send then starts, and ends, well inside its claim's lease, and the loop is
            // never held by the pacer for long before it records what finished.
            let room = self.settings.concurrency.saturating_sub(in_flight);
            let free = room.min(pacer.slots(self.pace_horizon()));
            // Waiting for the pacer, not for a send to end: wake when a slot comes in reach.
            let paced = room > 0 && free == 0;
            let mut claimed = 0;
            if !stopping && free > 0 {
                match self
                    .store
                    .claim_emails(self.clock.now(), free, self.lease())
                {
                    Ok(rows) => {
                        self.observe.store_ok();
                        claimed = rows.len();
                        for row in rows {
                            match self.prepare(&row) {
                                Prepared::Done(d) => finished.push((row, d)),
                                Prepared::Send {
                                    mail,
                                    address,
                                    profile,
                                    sequence,
                                } => {
                                    rt.block_on(pacer.wait());
                                    if !self.may_start(&row) {
                                        // Left to expire and be claimed again: a send that
                                        // could outlast its lease might be sent twice.
                                        tracing::warn!(key = %row.key, "claim too close to its end to start a send; left for the next claim");
                                        continue;
                                    }
                                    in_flight += 1;
                                    let transport = self.transport.clone();
                                    let done = done_tx.clone();
                                    let deadline = self.settings.send_timeout;
                                    let outcome = Outcome {
                                        settings: self.settings.clone(),
                                        engine: self.engine.clone(),
                                        clock: self.clock.clone(),
                                        sequence,
                                    };
                                    let metrics = self.observe.metrics.clone();
                                    let span = tracing::debug_span!(
                                        "send",
                                        sequence = %row.sequence,
                                        step = %row.step,
                                        journey = %row.journey,
                                        customer = %crate::service::trace::hashed(&row.customer),
                                        attempt = row.attempts + 1,
                                        smtp.code = tracing::field::Empty,
                                        outcome = tracing::field::Empty,
                                    );
                                    rt.spawn(async move {
                                        let started = std::time::Instant::now();
                                        let result = transport.send(&mail, deadline).await;
                                        metrics
                                            .send_seconds
                                            .observe(started.elapsed().as_secs_f64());
                                        match &result {
                                            Ok(()) => {
                                                span.record("smtp.code", 250);
                                                span.record("outcome", "accepted");
                                            }
                                            Err(e) => {
                                                if let Some(code) = e.code {
                                                    span.record("smtp.code", code);
                                                }
                                                span.record(
                                                    "outcome",
                                                    tracing::field::debug(e.failure),
                                                );
                                            }
                                        }
                                        drop(span);
                                        let delivery =
                                            outcome.of(&row, &mail, &address, &profile, result);
                                        // The receiver lives as long as anything is in flight.
                                        let _ = done.send((row, delivery));
                                    });
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.observe.store_failing(&format!("claiming emails: {e}"));
                        std::thread::sleep(STORE_RETRY);
                        continue;
                    }
                }
            }
            if claimed > 0 || !finished.is_empty() {
                continue;
            }
            let wake = self.wake.clone();
            rt.block_on(async {
                tokio::select! {
                    Some(done) = done_rx.recv() => {
                        in_flight -= 1;
                        finished.push(done);
                    }
                    _ = wake.notified() => {}
                    _ = stop.triggered(), if !stopping => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = pacer.opens(self.pace_horizon()), if paced => {}
                }
            });
        }
    }

    /// How far ahead of the pacer emails are claimed.
    fn pace_horizon(&self) -> Duration {
        self.settings.send_timeout.min(PACE_HORIZON)
    }

    /// A claim outlives the latest start of its send (at most `send_timeout` after the claim,
    /// see [`Worker::pace_horizon`]), the longest send (its deadline) and the recording of the
    /// outcome, with slack for a timer that fires late ([`Worker::may_start`] does not
    /// count it).
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.send_timeout * 2 + RECORD_ROOM + LEASE_SLACK)
            .unwrap_or(chrono::Duration::minutes(5))
    }

    /// Whether a send started now ends, at its deadline, with room left in the claim's lease
    /// to record the outcome. A send never starts on a claim that could expire under it.
    fn may_start(&self, row: &OutboxRow) -> bool {
        let needed = chrono::Duration::from_std(self.settings.send_timeout + RECORD_ROOM)
            .unwrap_or(chrono::Duration::MAX);
        self.clock
            .now()
            .checked_add_signed(needed)
            .is_some_and(|end| end <= row.claimed_until)
    }

    /// Renders and composes the email, or says why it will not be sent.
    fn prepare(&mut self, row: &OutboxRow) -> Prepared {
        let now = self.clock.now();
        let failed = |error: String| Prepared::Done(Delivery::Failed { error });
        // The database, not the email: try again shortly rather than give the email up.
        let unavailable = |e: crate::store::StoreError| {
            Prepared::Done(Delivery::Retry {
                error: format!("store: {e}"),
                at: now + chrono::Duration::seconds(30),
            })
        };
        let stored = match self.store.load(&row.customer) {
            Ok(Some(s)) => s,
            Ok(None) => return failed("customer not found".into()),
            Err(e) => return unavailable(e),
        };
        let store = &mut self.store;
        let sequence =
            match self
                .kept
                .resolve(&self.engine.catalog, &row.sequence, &row.version, || {
                    store.version(&row.sequence, &row.version)
                }) {
                Ok(s) => s,
                Err(e) => return unavailable(e),
            };
        let (profile, orders) = match profile_and_orders(&stored) {
            Ok(p) => p,
            Err(e) => return failed(format!("stored customer unreadable: {e}")),
        };
        // Rules that may have changed since the email was queued: the engine's.
        if let Err(reason) = self
            .engine
            .still_sendable(&profile, &row.category, row.transactional)
        {
            return Prepared::Done(Delivery::Suppressed { reason });
        }
        let Some(to) = profile.email.as_deref().map(str::to_string) else {
            return failed("no email address".into());
        };
        if !row.transactional {
            match self
                .store
                .is_erased(&self.composer.signer.address_hash(&to))
            {
                Ok(false) => {}
                Ok(true) => {
                    return Prepared::Done(Delivery::Suppressed {
                        reason: "address erased: marketing resumes only when the customer subscribes again".into(),
                    });
                }
                Err(e) => return unavailable(e),
            }
        }
        let order = row
            .order_id
            .as_deref()
            .and_then(|id| orders.into_iter().find(|o| &*o.id == id))
            .map(Arc::new);
        let locale = profile.locale.as_deref().map(str::to_string);
        let name = profile.name.as_deref().map(str::to_string);
        let profile = Arc::new(profile);
        let links = self.composer.links(&row.customer, &row.category);
        let mut ctx = Ctx::new(&profile, None, order.as_ref(), None);
        ctx.journey = context! { id => &row.journey, sequence => &row.sequence, step => &row.step };
        ctx.unsubscribe_url = Value::from(links.unsubscribe_url.clone());
        ctx.preferences_url = Value::from(links.preferences_url.clone());
        let templates = sequence
            .as_ref()
            .map_or(&self.engine.catalog.templates, |s| &s.templates);
        let rendered = match templates.render(&row.template, locale.as_deref(), &ctx.into_value()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sequence = %row.sequence, step = %row.step, template = %row.template, error = %e, "template error at send time");
                if e.over_budget {
                    self.observe.metrics.templates_failed.inc();
                }
                return failed(format!("template error: {e}"));
            }
        };
        let mail = match self
            .composer
            .compose(row, name.as_deref(), &to, &rendered, &links)
        {
            Ok(m) => m,
            Err(e) => return failed(e.to_string()),
        };
        if self.dry_run {
            return Prepared::Done(Delivery::DryRun {
                message_id: mail.message_id,
            });
        }
        Prepared::Send {
            mail,
            address: to,
            profile,
            sequence,
        }
    }
}

/// Turns a send's result into the outcome to record (in the sending task).
struct Outcome {
    settings: config::Delivery,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    /// The email's sequence at its journey's version, when known.
    sequence: Option<Arc<Sequence>>,
}

impl Outcome {
    fn of(
        &self,
        row: &OutboxRow,
        mail: &Outgoing,
        address: &str,
        profile: &Arc<Profile>,
        result: Result<(), SendError>,
    ) -> Delivery {
        let e = match result {
            Ok(()) => {
                return Delivery::Sent {
                    message_id: mail.message_id.clone(),
                };
            }
            Err(e) => e,
        };
        match e.failure {
            Failure::Permanent => {
                return Delivery::Bounced {
                    error: e.message,
                    address: address.to_string(),
                };
            }
            Failure::Refused => {
                return Delivery::Failed {
                    error: format!("refused: {}", e.message),
                };
            }
            Failure::Transient | Failure::Ambiguous => {}
        }
        let now = self.clock.now();
        let attempts = row.attempts + 1;
        let give_up = chrono::Duration::from_std(self.settings.give_up_after)
            .unwrap_or(chrono::Duration::days(5));
        let wait = backoff(
            &self.settings,
            attempts,
            jitter_seed(&row.key, attempts, now),
        );
        let mut at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
        if let Some(slot) = self.window_slot(row, profile, at) {
            at = slot;
        }
        if at > row.created_at + give_up {
            return Delivery::Failed {
                error: format!(
                    "gave up after {attempts} attempts over {}: {}",
                    crate::time::Period(give_up),
                    e.message
                ),
            };
        }
        let error = match e.failure {
            Failure::Ambiguous => format!("ambiguous: {}", e.message),
            _ => e.message,
        };
        Delivery::Retry { error, at }
    }

    /// The retry moved into the step's send window (and out of quiet hours for marketing).
    fn window_slot(
        &self,
        row: &OutboxRow,
        profile: &Arc<Profile>,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let seq = self.sequence.as_ref()?;
        let step = seq.step_index(&row.step)?;
        self.engine.send_slot(profile, seq, step, at)
    }
}

/// The wait before attempt `attempts + 1`: `first`, doubled each time, at most `max`, with
/// ±20% jitter so a relay that comes back is not hit by every email at once.
pub fn backoff(s: &config::Delivery, attempts: u32, seed: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let base = s
        .retry_first
        .saturating_mul(1u32 << doublings.min(20))
        .min(s.retry_max);
    let jitter = 0.8 + 0.4 * ((seed % 10_000) as f64 / 10_000.0);
    base.mul_f64(jitter).min(s.retry_max)
}

fn jitter_seed(key: &str, attempts: u32, now: DateTime<Utc>) -> u64 {
    let mut h = DefaultHasher::new();
    (key, attempts, now.timestamp_subsec_nanos()).hash(&mut h);
    h.finish()
}

fn log_outcomes(done: &[(OutboxRow, Delivery)]) {
    for (row, d) in done {
        match d {
            Delivery::Sent { .. } | Delivery::DryRun { .. } => {}
            Delivery::Retry { error, at } => {
                tracing::info!(key = %row.key, sequence = %row.sequence, step = %row.step, attempt = row.attempts + 1, %error, next = %crate::time::rfc3339(*at), "email deferred")
            }
            Delivery::Failed { error } => {
                tracing::warn!(key = %row.key, sequence = %row.sequence, step = %row.step, %error, "email failed")
            }
            Delivery::Bounced { error, .. } => {
                tracing::warn!(key = %row.key, sequence = %row.sequence, step = %row.step, %error, "address bounced")
            }
            Delivery::Suppressed { reason } => {
                tracing::info!(key = %row.key, sequence = %row.sequence, step = %row.step, %reason, "email suppressed at send time")
            }
        }
    }
}

/// Paces sends to at most `rate` per second (0: no limit).
struct Pacer {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            // A rate so high that its interval rounds to nothing is no limit.
            interval: (rate > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / rate))
                .filter(|i| !i.is_zero()),
            next: tokio::time::Instant::now(),
        }
    }

    /// How many sends may start within `horizon` from now.
    fn slots(&self, horizon: Duration) -> usize {
        let Some(interval) = self.interval else {
            return usize::MAX;
        };
        let now = tokio::time::Instant::now();
        let start = self.next.max(now);
        let Some(room) = (now + horizon).checked_duration_since(start) else {
            return 0;
        };
        ((room.as_secs_f64() / interval.as_secs_f64()) as usize).saturating_add(1)
    }

    /// Resolves when a send may start within `horizon` (never, without a rate limit: the
    /// worker then claims whenever it has room).
    async fn opens(&self, horizon: Duration) {
        match self.interval {
            Some(_) => {
                let at = self.next.checked_sub(horizon).unwrap_or(self.next);
                tokio::time::sleep_until(at).await
            }
            None => std::future::pending().await,
        }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = tokio::time::Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Policy;

    fn settings() -> config::Delivery {
        crate::config::Config::default().delivery().unwrap()
    }

    #[test]
    fn backoff_doubles_from_first_up_to_max_with_jitter_within_a_fifth() {
        let s = settings(); // 5m first, 1h max
        let mins = |attempts, seed| backoff(&s, attempts, seed).as_secs_f64() / 60.0;
        for seed in [0, 4_999, 9_999, 123_456_789] {
            let first = mins(1, seed);
            assert!((4.0..=6.0).contains(&first), "{first}");
            let second = mins(2, seed);
            assert!((8.0..=12.0).contains(&second), "{second}");
            // 5m * 2^4 = 80m, capped at 60m, then jitter; never above max.
            let fifth = mins(5, seed);
            assert!((48.0..=60.0).contains(&fifth), "{fifth}");
            assert!(mins(40, seed) <= 60.0);
        }
        // The jitter spreads retries: different seeds, different waits.
        assert_ne!(backoff(&s, 1, 1), backoff(&s, 1, 7_777));
    }

    fn mail() -> Outgoing {
        Outgoing {
            key: "j:s".into(),
            message_id: "<j.s@example.com>".into(),
            envelope: lettre::address::Envelope::new(None, vec!["a@example.com".parse().unwrap()])
                .unwrap(),
            bytes: Vec::new(),
        }
    }

    fn row(created_at: DateTime<Utc>, attempts: u32) -> OutboxRow {
        OutboxRow {
            key: "j:s".into(),
            customer: "c1".into(),
            journey: "j".into(),
            sequence: "unknown".into(),
            version: "v".into(),
            step: "s".into(),
            order_id: None,
            template: "t".into(),
            category: "review".into(),
            transactional: false,
            created_at,
            attempts,
            claim: 1,
            claimed_until: created_at,
        }
    }

    #[test]
    fn the_pacer_counts_the_sends_that_can_start_within_a_horizon() {
        let secs = Duration::from_secs;
        assert_eq!(Pacer::new(1.0).slots(secs(3)), 4);
        assert_eq!(Pacer::new(0.2).slots(secs(1)), 1);
        assert_eq!(Pacer::new(0.0).slots(secs(1)), usize::MAX);
        assert_eq!(Pacer::new(1e12).slots(secs(1)), usize::MAX);
        // The next slot is 5 s away: nothing starts within 1 s, two within 6 s.
        let mut p = Pacer::new(0.2);
        p.next = tokio::time::Instant::now() + secs(5);
        assert_eq!(p.slots(secs(1)), 0);
        assert_eq!(p.slots(secs(11)), 2);
    }

    #[test]
    fn failures_become_retries_bounces_or_give_ups() {
        let empty = std::env::temp_dir().join(format!("aftercare-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let (catalog, _) = crate::sequence::Catalog::load(&empty).unwrap();
        let catalog = Arc::new(catalog);
        let now: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let outcome = Outcome {
            settings: settings(),
            engine: Arc::new(Engine::new(catalog, Policy::default())),
            clock: Arc::new(crate::clock::ManualClock::new(now)),
            sequence: None,
        };
        let mail = mail();
        let profile = Arc::new(Profile::default());
        let err = |failure, message: &str| {
            Err(SendError {
                failure,
                code: None,
                message: message.into(),
            })
        };
        match outcome.of(
            &row(now, 0),
            &mail,
            "a@example.com",
            &profile,
            err(Failure::Transient, "451 later"),
        ) {
            Delivery::Retry { error, at } => {
                assert_eq!(error, "451 later");
                assert!(
                    at >= now + chrono::Duration::minutes(4)
                        && at <= now + chrono::Duration::minutes(7)
                );
            }
            d => panic!("{d:?}"),
        }
        // An expired deadline may have been accepted: retried, and said so.
        match outcome.of(
            &row(now, 0),
            &mail,
            "a@example.com",
            &profile,
            err(Failure::Ambiguous, "no answer"),
        ) {
            Delivery::Retry { error, .. } => assert_eq!(error, "ambiguous: no answer"),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            outcome.of(
                &row(now, 0),
                &mail,
                "a@example.com",
                &profile,
                err(Failure::Permanent, "550 no such user")
            ),
            Delivery::Bounced {
                error: "550 no such user".into(),
                address: "a@example.com".into()
            }
        );
        // Still failing five days after it was queued: given up.
        let old = now - chrono::Duration::days(5);
        assert_eq!(
            outcome.of(
                &row(old, 40),
                &mail,
                "a@example.com",
                &profile,
                err(Failure::Transient, "421 busy")
            ),
            Delivery::Failed {
                error: "gave up after 41 attempts over 5d: 421 busy".into()
            }
        );
    }

    #[test]
    fn a_retry_waits_for_the_steps_send_window_in_the_customers_timezone() {
        let dir = std::env::temp_dir().join(format!("aftercare-window-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates/t")).unwrap();
        std::fs::write(
            dir.join("w.yaml"),
            "name: w\ncategory: news\ntrigger: { event: order.placed }\nsteps:\n  - id: s\n    send_window: \"0 9 * * *\"\n    email: { template: t/a }\n",
        )
        .unwrap();
        std::fs::write(dir.join("templates/t/a.subject.j2"), "A").unwrap();
        std::fs::write(dir.join("templates/t/a.html.j2"), "<p>a</p>").unwrap();
        let (catalog, diags) = crate::sequence::Catalog::load(&dir).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let sequence = catalog.get("w").unwrap().clone();
        let version = sequence.version.to_string();
        // 19:00 in Seoul.
        let now: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let outcome = Outcome {
            settings: crate::config::Config::default().delivery().unwrap(),
            engine: Arc::new(Engine::new(Arc::new(catalog), Policy::default())),
            clock: Arc::new(crate::clock::ManualClock::new(now)),
            sequence: Some(sequence),
        };
        let row = OutboxRow {
            sequence: "w".into(),
            version,
            template: "t/a".into(),
            category: "news".into(),
            ..row(now, 0)
        };
        let mail = mail();
        let profile = Profile {
            timezone: Some(chrono_tz::Asia::Seoul),
            ..Default::default()
        };
        let failed = Err(SendError {
            failure: Failure::Transient,
            code: Some(451),
            message: "451 later".into(),
        });
        let Delivery::Retry { at, .. } =
            outcome.of(&row, &mail, "a@example.com", &Arc::new(profile), failed)
        else {
            panic!("not a retry");
        };
        // 09:00 in Seoul, the first one after the backoff (about 5 minutes from 19:00).
        assert_eq!(at, "2026-03-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_lets_through_at_most_rate_per_second() {
        let mut pacer = Pacer::new(4.0);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..9 {
            pacer.wait().await;
            times.push((tokio::time::Instant::now() - start).as_millis());
        }
        assert_eq!(times, [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]);
        // No limit: no waiting.
        let mut free = Pacer::new(0.0);
        let t = tokio::time::Instant::now();
        for _ in 0..100 {
            free.wait().await;
        }
        assert_eq!(tokio::time::Instant::now(), t);
    }
}
