//! The engine on a virtual clock and the memory store: `aftercare simulate` and every test.
//!
//! Events are applied in the order given, each at its own `time` (the clock never runs
//! backwards: a late event is applied at the current instant, as `run` would). Between
//! events the clock jumps from one due wake-up to the next, so 90 days take no time.

mod parallel;

use std::io::{BufRead, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Customer, Decision, Engine};
use crate::event::Event;
use crate::experiments::Tally;
use crate::store::memory::MemoryStore;
use crate::time::Period;

/// What a replay did, for the summary line and `--report`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub lines: u64,
    pub bad_lines: u64,
    pub stats: Stats,
    /// The experiments' counts over every customer at the end of the replay.
    pub tally: Tally,
    /// The first and last event's times, and the clock at the end.
    pub span: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub end: Option<DateTime<Utc>>,
}

impl Summary {
    /// The experiments' figures at the end of the replay; the history's span gives the entry
    /// rate.
    pub fn report(&self, catalog: &crate::sequence::Catalog) -> crate::experiments::Report {
        let now = self.end.unwrap_or_default();
        let days = span_days(self.span).unwrap_or(0.0);
        self.tally.report(catalog, now, Some(days))
    }
}

/// How many days the events span, first to last.
fn span_days(span: Option<(DateTime<Utc>, DateTime<Utc>)>) -> Option<f64> {
    span.map(|(first, last)| (last - first).num_seconds() as f64 / 86_400.0)
}

/// Counts every customer of `store` for the experiments' figures at `now`.
pub(crate) fn tally(
    store: &MemoryStore,
    catalog: &crate::sequence::Catalog,
    now: DateTime<Utc>,
) -> Tally {
    let mut tally = Tally::default();
    for c in store.customers() {
        let relationship = c.profile.relationship.as_deref();
        tally.add_customer(&c.experiments, relationship, &c.profile.id, catalog, now);
    }
    tally
}

pub use parallel::replay_parallel;

/// Replays JSON Lines events from `input`, writes one JSON line per decision to `output`, and
/// runs timers until the last event plus `until`. Bad lines go to `on_bad` (line number,
/// reason) and are skipped.
pub fn replay(
    sim: &mut Simulator,
    mut input: impl BufRead,
    output: &mut impl Write,
    until: Period,
    mut on_bad: impl FnMut(u64, &str),
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let mut out = Vec::new();
    let mut lines = LineWriter::default();
    let mut buf = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        buf.clear();
        if read_line(&mut input, &mut buf)? == 0 {
            break;
        }
        number += 1;
        let line = buf.trim_ascii_end();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        match Event::from_structured(line) {
            Ok(ev) => sim.push_event(ev, &mut out),
            Err(e) => {
                summary.bad_lines += 1;
                on_bad(number, &e.to_string());
            }
        }
        lines.write_all(output, &mut out)?;
    }
    if let Some(last) = sim.last_event() {
        sim.advance_to(last + until.0, &mut out);
        lines.write_all(output, &mut out)?;
    }
    summary.stats = sim.stats;
    summary.span = sim.first_event.zip(sim.last_event);
    summary.end = sim.now;
    summary.tally = tally(&sim.store, &sim.engine.catalog, sim.now.unwrap_or_default());
    Ok(summary)
}

/// Reads one line into `buf` (appended), keeping at most one byte more than an event may
/// have: the rest of a longer line is read and dropped, so a line of gigabytes costs no
/// memory (its event is refused as oversized). The bytes the line took in the input.
pub(crate) fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let keep = crate::event::MAX_EVENT_BYTES + 1;
    let start = buf.len();
    let mut total = 0;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (line, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        let room = keep.saturating_sub(buf.len() - start);
        buf.extend_from_slice(&line[..line.len().min(room)]);
        let n = line.len();
        input.consume(n);
        total += n;
        if done {
            return Ok(total);
        }
    }
}

/// Writes decisions as SPEC §5 lines; consecutive lines mostly share `at`, so its text is kept.
#[derive(Default)]
pub(crate) struct LineWriter {
    at: Option<DateTime<Utc>>,
    at_text: String,
}

impl LineWriter {
    pub(crate) fn write_all(
        &mut self,
        w: &mut impl Write,
        decisions: &mut Vec<Decision>,
    ) -> std::io::Result<()> {
        for d in decisions.drain(..) {
            if self.at != Some(d.at) {
                self.at = Some(d.at);
                self.at_text = crate::time::rfc3339(d.at);
            }
            d.write_json(&self.at_text, w)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }
}

pub struct Simulator {
    engine: Engine,
    store: MemoryStore,
    now: Option<DateTime<Utc>>,
    /// Latest event time seen: `--until` counts from here.
    last_event: Option<DateTime<Utc>>,
    first_event: Option<DateTime<Utc>>,
    pub stats: Stats,
    /// The engine's reorder intervals, kept up as events come (`after: auto`).
    watch: Option<crate::engine::intervals::Watch>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub duplicates: u64,
    /// Events older than `policy.max_event_age` when applied (the clock had passed them):
    /// they enrol nobody in marketing. Worth a warning in a replay.
    pub backfilled: u64,
    pub wakeups: u64,
    pub decisions: u64,
}

impl Simulator {
    pub fn new(engine: Engine) -> Simulator {
        Simulator {
            watch: crate::engine::intervals::Watch::of(&engine),
            engine,
            store: MemoryStore::default(),
            now: None,
            last_event: None,
            first_event: None,
            stats: Stats::default(),
        }
    }

    pub fn now(&self) -> Option<DateTime<Utc>> {
        self.now
    }

    pub fn last_event(&self) -> Option<DateTime<Utc>> {
        self.last_event
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.store.customer(id)
    }

    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The experiments' figures now: every customer counted at the clock's instant, the
    /// entry rate over the events' span.
    pub fn report(&self) -> crate::experiments::Report {
        let now = self.now.unwrap_or_default();
        let catalog = &self.engine.catalog;
        let days = span_days(self.first_event.zip(self.last_event));
        tally(&self.store, catalog, now).report(catalog, now, days)
    }

    /// Takes over the state and clock of `old` (a deploy: new sequence files, same customers;
    /// journeys in flight stay on their pinned versions).
    pub fn adopt(&mut self, old: Simulator) {
        self.store = old.store;
        self.now = old.now;
        self.last_event = old.last_event;
        self.first_event = old.first_event;
        self.stats = old.stats;
        // The orders seen so far still count; the new files may watch other categories.
        self.engine.intervals = old.engine.intervals;
        self.watch = old
            .watch
            .filter(|_| self.watch.is_some())
            .or(self.watch.take());
    }

    /// Records a permanent delivery failure for the customer's address.
    pub fn bounce(&mut self, customer: &str) {
        let id: Arc<str> = customer.into();
        Engine::mark_bounced(self.store.customer_mut(&id));
    }

    /// An operator's pause, resume or cancel of one of the customer's journeys, now.
    pub fn control(
        &mut self,
        customer: &str,
        journey: crate::engine::JourneyId,
        op: crate::engine::Control,
        out: &mut Vec<Decision>,
    ) -> Result<(), crate::engine::ControlError> {
        let now = self.now.unwrap_or_default();
        let slot = self.store.slot_of(&customer.into());
        let before = out.len();
        let r = self
            .engine
            .control(self.store.customer_at(slot), journey, op, now, out);
        self.stats.decisions += (out.len() - before) as u64;
        self.store.reschedule(slot);
        r
    }

    /// Runs due wake-ups before the event's time, then applies the event (once per key).
    pub fn push_event(&mut self, ev: Event, out: &mut Vec<Decision>) {
        self.run_until(ev.time, true, out);
        let now = self.now.map_or(ev.time, |n| n.max(ev.time));
        self.now = Some(now);
        self.last_event = Some(self.last_event.map_or(ev.time, |t| t.max(ev.time)));
        self.first_event = Some(self.first_event.map_or(ev.time, |t| t.min(ev.time)));
        if !self.store.first_sight(&ev.source, &ev.id) {
            self.stats.duplicates += 1;
            return;
        }
        self.stats.events += 1;
        if now - ev.time > self.engine.policy.max_event_age.0 {
            self.stats.backfilled += 1;
        }
        if let Some(w) = &mut self.watch {
            w.event(&ev, now);
        }
        let slot = self.store.slot_of(&ev.subject);
        let late = now > ev.time;
        let ev = Arc::new(ev);
        let before = out.len();
        let c = self.store.customer_at(slot);
        self.engine.handle_event(c, &ev, now, out);
        if late {
            // A late event's effects that are already due run now; an on-time event's wait
            // in the queue until every event of this instant has been applied (SPEC: ties).
            self.engine.wake(c, now, out);
        }
        self.stats.decisions += (out.len() - before) as u64;
        self.store.reschedule(slot);
    }

    /// Runs every wake-up due at or before `t`, each at its own instant; the clock ends at `t`.
    pub fn advance_to(&mut self, t: DateTime<Utc>, out: &mut Vec<Decision>) {
        self.run_until(t, false, out);
        self.now = Some(self.now.map_or(t, |n| n.max(t)));
    }

    fn run_until(&mut self, limit: DateTime<Utc>, strict: bool, out: &mut Vec<Decision>) {
        while let Some((at, slot)) = self.store.pop_due(limit, strict) {
            let now = self.now.map_or(at, |n| n.max(at));
            self.now = Some(now);
            self.stats.wakeups += 1;
            let before = out.len();
            self.engine.wake(self.store.customer_at(slot), now, out);
            self.stats.decisions += (out.len() - before) as u64;
            self.store.reschedule(slot);
        }
    }
}
