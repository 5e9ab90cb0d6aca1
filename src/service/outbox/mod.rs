//! The outbox worker: claims queued emails (and webhook posts, SPEC §9), renders and sends
//! them concurrently, and records how each ended. A post goes the way of an email: the same
//! claims, rules checked again, retries and outcomes; it skips the relay's pacer.
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

//!
//! Split by responsibility: this module is the worker (claims, pacing, the sending loop,
//! recording); `prepare` makes a claimed email ready to send; `retry` turns how a send
//! ended into the outcome to record.

mod prepare;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use self::prepare::{Payload, Prepared};
use self::retry::Outcome;
pub use self::retry::backoff;
use super::{Shutdown, StartError, StartResult};
use crate::clock::Clock;
use crate::config;
use crate::engine::Engine;
use crate::mail::Composer;
use crate::mail::transport::{Plan, SendError, Transport};
use crate::service::metrics::Metrics;
use crate::service::reload::Live;
use crate::service::versions::Kept;
use crate::store::{Delivery, OutboxRow, Store};
use crate::webhook::Poster;

/// How often the outbox is looked at when nobody signals new work.
const POLL: Duration = Duration::from_millis(200);

pub struct Sender {
    pub store: Box<dyn Store>,
    /// The engine's catalog and policy: templates, send windows, quiet hours, timezones.
    pub engine: Arc<Engine>,
    pub composer: Composer,
    pub transport: Plan,
    /// Where webhook steps post.
    pub poster: Arc<Poster>,
    pub settings: config::Delivery,
    /// Decide and record everything, send nothing.
    pub dry_run: bool,
    /// Signalled when new emails are queued, so they go out without waiting for the poll.
    pub wake: Arc<Notify>,
    pub observe: Observe,
    /// What time it is (leases, retries, send windows).
    pub clock: Arc<dyn Clock>,
    /// Where the sends run: built with the worker, so a start that cannot have one fails.
    rt: tokio::runtime::Runtime,
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

impl Sender {
    /// The outbox worker for `config` as `run` builds it — its composer (signing key, DKIM)
    /// and transport — sending for real, not woken, observed by nothing, on the system clock:
    /// the caller changes what it needs.
    pub fn new(
        config: &crate::config::Config,
        delivery: config::Delivery,
        store: Box<dyn Store>,
        engine: Arc<Engine>,
    ) -> StartResult<Sender> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("outbox-send")
            .enable_all()
            .build()
            .map_err(StartError::io("starting the outbox's runtime"))?;
        let endpoints = config
            .settings()
            .map_err(|p| StartError::settings(&p))?
            .webhooks;
        let poster =
            Poster::new(endpoints).map_err(|e| StartError::Config(format!("webhooks: {e}")))?;
        Ok(Sender {
            store,
            engine,
            composer: super::composer(config, &delivery)?,
            transport: super::transport(config, &delivery)?,
            poster: Arc::new(poster),
            settings: delivery,
            dry_run: false,
            wake: Arc::default(),
            observe: Observe::default(),
            clock: crate::clock::system(),
            rt,
        })
    }

    /// Sends until `stop`, then waits for the sends in flight and records them.
    pub fn run(self, stop: &Shutdown) {
        let Sender {
            store,
            engine,
            composer,
            transport,
            poster,
            settings,
            dry_run,
            wake,
            observe,
            clock,
            rt,
        } = self;
        // The SMTP pool is created and dropped in the runtime's context.
        let _inside = rt.enter();
        let mut worker = Worker {
            store,
            engine,
            composer,
            transport: Arc::new(transport.open()),
            poster,
            settings,
            dry_run,
            wake,
            seen: observe.live.as_ref().map_or(0, |l| l.generation()),
            observe,
            kept: Kept::default(),
            clock,
        };
        worker.serve(&rt, stop);
    }
}

/// The sender inside its runtime, with the transport open.
struct Worker {
    store: Box<dyn Store>,
    engine: Arc<Engine>,
    composer: Composer,
    transport: Arc<Transport>,
    poster: Arc<Poster>,
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
        self.release_stale_claims();
        let mut sends = Sends::new(self.settings.rate_limit);
        loop {
            self.follow_reloads();
            let stopping = stop.is_triggered();
            sends.collect();
            if !sends.finished.is_empty() && !self.record(&mut sends.finished) {
                // Kept and recorded on the next pass; the claims outlive the wait. Not cut
                // short by a stop: what finished must still be recorded.
                std::thread::sleep(STORE_RETRY);
                continue;
            }
            if stopping && sends.in_flight == 0 {
                return;
            }
            // Only what can start within a second at the current pace is claimed: every
            // send then starts, and ends, well inside its claim's lease, and the loop is
            // never held by the pacer for long before it records what finished.
            let room = self.settings.concurrency.saturating_sub(sends.in_flight);
            let free = room.min(sends.pacer.slots(self.pace_horizon()));
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
                            self.start(rt, row, &mut sends);
                        }
                    }
                    Err(e) => {
                        self.observe.store_failing(&format!("claiming emails: {e}"));
                        // Cut short by a stop: nothing is claimed once stopping.
                        stop.wait_timeout(STORE_RETRY);
                        continue;
                    }
                }
            }
            if claimed == 0 && sends.finished.is_empty() {
                self.idle(rt, stop, stopping, paced, &mut sends);
            }
        }
    }

    /// Claims a crash left are this instance's to send again.
    fn release_stale_claims(&mut self) {
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
    }

    /// A hot reload's templates and send windows, once it happened.
    fn follow_reloads(&mut self) {
        if let Some(catalog) = self
            .observe
            .live
            .as_ref()
            .and_then(|l| l.changed(&mut self.seen))
        {
            self.engine = Arc::new(self.engine.reloaded(catalog));
        }
    }

    /// Records how the finished sends ended, in one transaction; false if the store failed
    /// (they are kept for the next try).
    fn record(&mut self, finished: &mut Vec<(OutboxRow, Delivery)>) -> bool {
        match self.store.finish_emails(self.clock.now(), finished) {
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
                log_outcomes(finished);
                self.observe.metrics.delivered(finished, self.clock.now());
                finished.clear();
                true
            }
            Err(e) => {
                self.observe
                    .store_failing(&format!("recording deliveries: {e}"));
                false
            }
        }
    }

    /// Prepares a claimed email and, if it is to be sent, starts its send once the pacer lets
    /// it (the pacer is the relay's: webhook posts do not wait for it).
    fn start(&mut self, rt: &tokio::runtime::Runtime, row: OutboxRow, sends: &mut Sends) {
        let (payload, profile, sequence) = match self.prepare(&row) {
            Prepared::Done(d) => return sends.finished.push((row, d)),
            Prepared::Send {
                payload,
                profile,
                sequence,
            } => (payload, profile, sequence),
        };
        if let Payload::Mail { .. } = payload {
            rt.block_on(sends.pacer.wait());
        }
        if !self.may_start(&row) {
            // Left to expire and be claimed again: a send that could outlast its lease might
            // be sent twice.
            tracing::warn!(key = %row.key, "claim too close to its end to start a send; left for the next claim");
            return;
        }
        sends.in_flight += 1;
        let attempt = Attempt {
            span: send_span(&row),
            row,
            payload,
            profile,
            outcome: Outcome {
                settings: self.settings.clone(),
                engine: self.engine.clone(),
                clock: self.clock.clone(),
                sequence,
            },
        };
        rt.spawn(attempt.run(
            Channels {
                transport: self.transport.clone(),
                poster: self.poster.clone(),
            },
            self.observe.metrics.clone(),
            sends.done.clone(),
        ));
    }

    /// Nothing to do until a send ends, new emails are queued, the pacer opens, a stop, or
    /// the poll interval.
    fn idle(
        &self,
        rt: &tokio::runtime::Runtime,
        stop: &Shutdown,
        stopping: bool,
        paced: bool,
        sends: &mut Sends,
    ) {
        let horizon = self.pace_horizon();
        rt.block_on(async {
            tokio::select! {
                Some(done) = sends.results.recv() => {
                    sends.in_flight -= 1;
                    sends.finished.push(done);
                }
                _ = self.wake.notified() => {}
                _ = stop.triggered(), if !stopping => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = sends.pacer.opens(horizon), if paced => {}
            }
        });
    }

    /// How far ahead of the pacer emails are claimed.
    fn pace_horizon(&self) -> Duration {
        self.settings.send_timeout.min(PACE_HORIZON)
    }

    /// A claim outlives the latest start of its send (at most `send_timeout` after the claim,
    /// see [`Worker::pace_horizon`]), the longest send (its deadline, an email's or a
    /// webhook's) and the recording of the outcome, with slack for a timer that fires late
    /// ([`Worker::may_start`] does not count it).
    fn lease(&self) -> chrono::Duration {
        let longest = self
            .settings
            .send_timeout
            .max(self.poster.longest_timeout());
        chrono::Duration::from_std(self.settings.send_timeout + longest + RECORD_ROOM + LEASE_SLACK)
            .unwrap_or(chrono::Duration::minutes(5))
    }

    /// Whether a send started now ends, at its deadline, with room left in the claim's lease
    /// to record the outcome. A send never starts on a claim that could expire under it.
    fn may_start(&self, row: &OutboxRow) -> bool {
        let deadline = match &row.endpoint {
            Some(e) => self.poster.timeout(e).unwrap_or(self.settings.send_timeout),
            None => self.settings.send_timeout,
        };
        let needed =
            chrono::Duration::from_std(deadline + RECORD_ROOM).unwrap_or(chrono::Duration::MAX);
        self.clock
            .now()
            .checked_add_signed(needed)
            .is_some_and(|end| end <= row.claimed_until)
    }
}

/// The sends of one worker: in flight, finished and not yet recorded, and their pace.
struct Sends {
    in_flight: usize,
    finished: Vec<(OutboxRow, Delivery)>,
    pacer: Pacer,
    /// Where each send says how it ended; the receiver lives as long as the worker.
    done: mpsc::UnboundedSender<(OutboxRow, Delivery)>,
    results: mpsc::UnboundedReceiver<(OutboxRow, Delivery)>,
}

impl Sends {
    fn new(rate: f64) -> Sends {
        let (done, results) = mpsc::unbounded_channel();
        Sends {
            in_flight: 0,
            finished: Vec::new(),
            pacer: Pacer::new(rate),
            done,
            results,
        }
    }

    /// The sends that ended since last looked at.
    fn collect(&mut self) {
        while let Ok(done) = self.results.try_recv() {
            self.in_flight -= 1;
            self.finished.push(done);
        }
    }
}

/// One email on its way to the relay, or one webhook post to its endpoint.
struct Attempt {
    row: OutboxRow,
    payload: Payload,
    profile: Arc<crate::engine::Profile>,
    outcome: Outcome,
    span: tracing::Span,
}

/// Where attempts go out: the relay and the webhook endpoints.
struct Channels {
    transport: Arc<Transport>,
    poster: Arc<Poster>,
}

impl Attempt {
    /// Sends under the deadline, then says how it ended on `done`.
    async fn run(
        self,
        channels: Channels,
        metrics: Arc<Metrics>,
        done: mpsc::UnboundedSender<(OutboxRow, Delivery)>,
    ) {
        let Attempt {
            row,
            payload,
            profile,
            outcome,
            span,
        } = self;
        let started = std::time::Instant::now();
        let result = channels.send(&payload, &outcome).await;
        metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
        record_result(&span, &payload, &result);
        drop(span);
        let address = match &payload {
            Payload::Mail { address, .. } => Some(address.as_str()),
            Payload::Post(_) => None,
        };
        let delivery = outcome.of(&row, payload.id(), address, &profile, result);
        // The receiver lives as long as the worker, which waits for every send in flight.
        let _ = done.send((row, delivery));
    }
}

impl Channels {
    /// An email to the relay under `mail.send_timeout`; a post to its endpoint under the
    /// endpoint's timeout, signed now.
    async fn send(&self, payload: &Payload, outcome: &Outcome) -> Result<(), SendError> {
        match payload {
            Payload::Mail { mail, .. } => {
                let deadline = outcome.settings.send_timeout;
                self.transport.send(mail, deadline).await
            }
            Payload::Post(post) => {
                let now = outcome.clock.now().timestamp();
                self.poster.post(post, now).await
            }
        }
    }
}

/// The reply code (SMTP's, or the HTTP status) and the outcome on the send's span.
fn record_result(span: &tracing::Span, payload: &Payload, result: &Result<(), SendError>) {
    let (field, accepted) = match payload {
        Payload::Mail { .. } => ("smtp.code", 250),
        Payload::Post(_) => ("http.status_code", 200),
    };
    match result {
        Ok(()) => {
            span.record(field, accepted);
            span.record("outcome", "accepted");
        }
        Err(e) => {
            if let Some(code) = e.code {
                span.record(field, code);
            }
            span.record("outcome", tracing::field::debug(e.failure));
        }
    }
}

/// The span of one send: a child of the span of the event that queued the email, when its
/// trace context was kept.
fn send_span(row: &OutboxRow) -> tracing::Span {
    let span = tracing::debug_span!(
        "send",
        sequence = %row.sequence,
        step = %row.step,
        journey = %row.journey,
        customer = %crate::service::trace::hashed(&row.customer),
        attempt = row.attempts + 1,
        endpoint = row.endpoint.as_deref(),
        smtp.code = tracing::field::Empty,
        http.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    crate::service::trace::continue_trace(&span, row.trace.as_deref());
    span
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
mod pacer_tests {
    use super::*;

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
