//! `replay` on several cores, with output identical to the sequential replay.
//!
//! Customers never affect each other, so each worker owns a partition of the customers and
//! runs the same engine on them. What must stay global is the order of the replay:
//! - the clock: every worker sees every event's time (a "tick"), so each wake-up runs at the
//!   instant the sequential replay would give it;
//! - dedupe and first-seen order: decided by the reader, which sees every event;
//! - output order: each decision is tagged with where the sequential replay would have made
//!   it — (tick, wake-ups before the tick's event / the event, due, first-seen ordinal) — and
//!   the reader merges the workers' already-sorted outputs by that tag.
//!
//! Per batch of lines: parse in parallel, route on the reader, process in parallel, merge.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::ops::Range;
use std::sync::{Arc, mpsc};

use chrono::{DateTime, Utc};

use super::{LineWriter, Summary};
use crate::engine::{Decision, Engine};
use crate::event::{Event, EventError};
use crate::store::memory::{FxBuild, MemoryStore, digest};
use crate::time::Period;

const BATCH: usize = 8192;

/// Where a decision falls in the sequential replay's order.
/// (tick, 0 = wake-up before the tick's event / 1 = the event, due, ordinal)
type Tag = (u64, u8, DateTime<Utc>, u32);

/// Replays like [`super::replay`], spreading customers over one thread per engine.
pub fn replay_parallel(
    engines: Vec<Engine>,
    mut input: impl BufRead,
    output: &mut impl Write,
    until: Period,
    mut on_bad: impl FnMut(u64, &str),
) -> std::io::Result<Summary> {
    let mut reader = Router::new(&engines);
    let mut summary = Summary::default();
    // Threads and buffers live for the whole replay: per-batch threads lose their allocator
    // caches, and per-batch buffers were reallocated (and their pages zeroed) every time.
    std::thread::scope(|scope| -> std::io::Result<()> {
        let mut pool = Pool::spawn(scope, engines);
        while pool.read(&mut input)? {
            summary.lines += pool.lines.len() as u64;
            pool.parse()?;
            pool.route(&mut reader, &mut summary, &mut on_bad)?;
            pool.run()?;
            merge(&mut pool.outputs, output)?;
        }
        if let Some(last) = reader.last_event {
            pool.finish(reader.ticks, last + until.0)?;
            merge(&mut pool.outputs, output)?;
            summary.end = Some(last + until.0);
        }
        summary.span = reader.first_event.zip(reader.last_event);
        pool.hang_up(&mut summary);
        Ok(())
    })?;
    summary.stats.events = reader.events;
    summary.stats.duplicates = reader.duplicates;
    summary.stats.backfilled = reader.backfilled;
    Ok(summary)
}

/// The reader's side of the workers: a job and a reply channel to each, and the buffers that
/// go back and forth between them, reused from batch to batch.
struct Pool {
    links: Vec<(mpsc::Sender<Job>, mpsc::Receiver<Reply>)>,
    /// The batch's lines, one after another; `lines` has their numbers and ranges in it.
    text: Arc<Vec<u8>>,
    lines: Arc<Vec<(u64, Range<usize>)>>,
    /// Lines read so far, blank ones included.
    number: u64,
    /// Each worker's share of the batch, parsed.
    parsed: Vec<Vec<(u64, Result<Event, EventError>)>>,
    ticks: Arc<Vec<Tick>>,
    /// Each worker's events of the batch.
    mine: Vec<Vec<(u64, Event, u32)>>,
    /// Each worker's output of the batch.
    outputs: Vec<Batch>,
}

impl Pool {
    /// Starts a worker on `scope` for each engine.
    fn spawn<'scope>(scope: &'scope std::thread::Scope<'scope, '_>, engines: Vec<Engine>) -> Pool {
        let n = engines.len().max(1);
        let mut links = Vec::with_capacity(n);
        for engine in engines {
            let (job_tx, job_rx) = mpsc::channel::<Job>();
            let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
            scope.spawn(move || Worker::new(engine).serve(job_rx, reply_tx));
            links.push((job_tx, reply_rx));
        }
        Pool {
            links,
            text: Arc::new(Vec::with_capacity(BATCH * 400)),
            lines: Arc::new(Vec::with_capacity(BATCH)),
            number: 0,
            parsed: (0..n).map(|_| Vec::new()).collect(),
            ticks: Arc::new(Vec::with_capacity(BATCH)),
            mine: (0..n).map(|_| Vec::with_capacity(BATCH)).collect(),
            outputs: (0..n).map(|_| Batch::default()).collect(),
        }
    }

    /// Reads the next batch of lines; false at the end of input.
    fn read(&mut self, input: &mut impl BufRead) -> std::io::Result<bool> {
        let (Some(t), Some(l)) = (Arc::get_mut(&mut self.text), Arc::get_mut(&mut self.lines))
        else {
            return Err(std::io::Error::other("batch buffers still shared"));
        };
        read_batch(input, t, l, &mut self.number)
    }

    /// Has each worker parse its share of the batch's lines, into `parsed`.
    fn parse(&mut self) -> std::io::Result<()> {
        let count = self.lines.len();
        let chunk = count.div_ceil(self.parsed.len());
        for (w, ((tx, _), into)) in self.links.iter().zip(self.parsed.iter_mut()).enumerate() {
            let part = (w * chunk).min(count)..((w + 1) * chunk).min(count);
            let into = std::mem::take(into);
            send(
                tx,
                Job::Parse {
                    text: self.text.clone(),
                    lines: self.lines.clone(),
                    part,
                    into,
                },
            )?;
        }
        for ((_, rx), into) in self.links.iter().zip(self.parsed.iter_mut()) {
            match rx.recv() {
                Ok(Reply::Parsed(p)) => *into = p,
                _ => return Err(gone()),
            }
        }
        Ok(())
    }

    /// Has the reader split the parsed batch into ticks and each worker's events.
    fn route(
        &mut self,
        reader: &mut Router,
        summary: &mut Summary,
        on_bad: &mut impl FnMut(u64, &str),
    ) -> std::io::Result<()> {
        let Some(ticks) = Arc::get_mut(&mut self.ticks) else {
            return Err(std::io::Error::other("tick buffer still shared"));
        };
        reader.route(&mut self.parsed, ticks, &mut self.mine, summary, on_bad);
        Ok(())
    }

    /// Has each worker go through the batch's ticks with its events, into `outputs`.
    fn run(&mut self) -> std::io::Result<()> {
        let jobs = self.mine.iter_mut().zip(self.outputs.iter_mut());
        for ((tx, _), (events, batch)) in self.links.iter().zip(jobs) {
            let events = std::mem::take(events);
            send(
                tx,
                Job::Run {
                    ticks: self.ticks.clone(),
                    events,
                    batch: std::mem::take(batch),
                },
            )?;
        }
        self.collect()
    }

    /// Has each worker run its wake-ups after the last tick until `end`, into `outputs`.
    fn finish(&mut self, tick: u64, end: DateTime<Utc>) -> std::io::Result<()> {
        for ((tx, _), batch) in self.links.iter().zip(self.outputs.iter_mut()) {
            send(
                tx,
                Job::Finish {
                    tick,
                    end,
                    batch: std::mem::take(batch),
                },
            )?;
        }
        self.collect()
    }

    /// Each worker's reply to a run: its output, and its event buffer back for reuse.
    fn collect(&mut self) -> std::io::Result<()> {
        for (w, (_, rx)) in self.links.iter().enumerate() {
            match rx.recv() {
                Ok(Reply::Ran(batch, events)) => {
                    self.outputs[w] = batch;
                    self.mine[w] = events;
                }
                _ => return Err(gone()),
            }
        }
        Ok(())
    }

    /// Hangs up on every worker and adds up the counts each reports as it stops.
    fn hang_up(self, summary: &mut Summary) {
        for (tx, rx) in self.links {
            drop(tx);
            if let Ok(Reply::Stats(wakeups, decisions, tally)) = rx.recv() {
                summary.stats.wakeups += wakeups;
                summary.stats.decisions += decisions;
                summary.tally.merge(*tally);
            }
        }
    }
}

/// Reads up to `BATCH` non-blank lines into `text`; false at the end of input.
fn read_batch(
    input: &mut impl BufRead,
    text: &mut Vec<u8>,
    lines: &mut Vec<(u64, Range<usize>)>,
    number: &mut u64,
) -> std::io::Result<bool> {
    text.clear();
    lines.clear();
    while lines.len() < BATCH {
        let start = text.len();
        if super::read_line(input, text)? == 0 {
            break;
        }
        *number += 1;
        if text[start..].iter().all(u8::is_ascii_whitespace) {
            text.truncate(start);
        } else {
            lines.push((*number, start..text.len()));
        }
    }
    Ok(!lines.is_empty())
}

/// What the reader asks of a worker.
enum Job {
    /// Parse `lines[part]` of `text` (into the empty buffer `into`, reused).
    Parse {
        text: Arc<Vec<u8>>,
        lines: Arc<Vec<(u64, Range<usize>)>>,
        part: Range<usize>,
        into: Vec<(u64, Result<Event, EventError>)>,
    },
    /// Go through `ticks`, handling `events` (this worker's); format into `batch`.
    Run {
        ticks: Arc<Vec<Tick>>,
        events: Vec<(u64, Event, u32)>,
        batch: Batch,
    },
    /// Wake-ups until `end`, after the last tick.
    Finish {
        tick: u64,
        end: DateTime<Utc>,
        batch: Batch,
    },
}

enum Reply {
    Parsed(Vec<(u64, Result<Event, EventError>)>),
    /// The batch output, and the (emptied) event buffer back for reuse.
    Ran(Batch, Vec<(u64, Event, u32)>),
    /// Wake-ups and decisions, when the reader hangs up.
    /// Wake-ups, decisions and the experiments' counts of the worker's customers.
    Stats(u64, u64, Box<crate::experiments::Tally>),
}

/// Formatted lines, and which tag each range of bytes carries.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    tags: Vec<(Tag, Range<usize>)>,
}

fn gone() -> std::io::Error {
    std::io::Error::other("a simulate worker stopped")
}

fn send(tx: &mpsc::Sender<Job>, job: Job) -> std::io::Result<()> {
    tx.send(job).map_err(|_| gone())
}

/// One event's time as every worker sees it.
struct Tick {
    index: u64,
    time: DateTime<Utc>,
}

/// The reader's global state: dedupe, first-seen order, the clock's input.
#[derive(Default)]
struct Router {
    seen: HashSet<u128>,
    ordinals: HashMap<Arc<str>, u32, FxBuild>,
    ticks: u64,
    events: u64,
    duplicates: u64,
    backfilled: u64,
    max_event_age: chrono::Duration,
    last_event: Option<DateTime<Utc>>,
    first_event: Option<DateTime<Utc>>,
    /// The reorder intervals the workers' engines share, kept up as events are read.
    watch: Option<crate::engine::intervals::Watch>,
}

impl Router {
    /// The reader for `engines`: the first one's `max_event_age` (they share one policy)
    /// tells which events are backfilled.
    fn new(engines: &[Engine]) -> Router {
        Router {
            max_event_age: engines
                .first()
                .map_or(chrono::Duration::zero(), |e| e.policy.max_event_age.0),
            watch: engines
                .first()
                .and_then(crate::engine::intervals::Watch::of),
            ..Router::default()
        }
    }

    /// Splits a parsed batch into ticks (for all) and events (for their owner); `parsed` is
    /// left empty for reuse.
    fn route(
        &mut self,
        parsed: &mut [Vec<(u64, Result<Event, EventError>)>],
        ticks: &mut Vec<Tick>,
        mine: &mut [Vec<(u64, Event, u32)>],
        summary: &mut Summary,
        on_bad: &mut impl FnMut(u64, &str),
    ) {
        ticks.clear();
        let workers = mine.len() as u32;
        for (number, p) in parsed.iter_mut().flat_map(|p| p.drain(..)) {
            let ev = match p {
                Ok(ev) => ev,
                Err(e) => {
                    summary.bad_lines += 1;
                    on_bad(number, &e.to_string());
                    continue;
                }
            };
            let index = self.ticks;
            self.ticks += 1;
            ticks.push(Tick {
                index,
                time: ev.time,
            });
            self.last_event = Some(self.last_event.map_or(ev.time, |t| t.max(ev.time)));
            self.first_event = Some(self.first_event.map_or(ev.time, |t| t.min(ev.time)));
            if !self.seen.insert(digest(&ev.source, &ev.id)) {
                self.duplicates += 1;
                continue;
            }
            self.events += 1;
            if self
                .last_event
                .is_some_and(|clock| clock - ev.time > self.max_event_age)
            {
                self.backfilled += 1;
            }
            if let (Some(w), Some(clock)) = (&mut self.watch, self.last_event) {
                w.event(&ev, clock);
            }
            let next = self.ordinals.len() as u32;
            let ordinal = *self.ordinals.entry(ev.subject.clone()).or_insert(next);
            mine[(ordinal % workers) as usize].push((index, ev, ordinal));
        }
    }
}

struct Worker {
    engine: Engine,
    store: MemoryStore,
    now: Option<DateTime<Utc>>,
    wakeups: u64,
    decisions: u64,
    out: Vec<Decision>,
    writer: LineWriter,
    batch: Batch,
}

impl Worker {
    fn new(engine: Engine) -> Worker {
        Worker {
            engine,
            store: MemoryStore::default(),
            now: None,
            wakeups: 0,
            decisions: 0,
            out: Vec::new(),
            writer: LineWriter::default(),
            batch: Batch::default(),
        }
    }

    /// Answers jobs until the reader hangs up, then reports its counts.
    fn serve(mut self, jobs: mpsc::Receiver<Job>, replies: mpsc::Sender<Reply>) {
        while let Ok(job) = jobs.recv() {
            let reply = match job {
                Job::Parse {
                    text,
                    lines,
                    part,
                    mut into,
                } => {
                    into.extend(lines[part].iter().map(|(n, r)| {
                        (*n, Event::from_structured(text[r.clone()].trim_ascii_end()))
                    }));
                    Reply::Parsed(into)
                }
                Job::Run {
                    ticks,
                    mut events,
                    batch,
                } => {
                    self.start(batch);
                    self.run(&ticks, &mut events);
                    Reply::Ran(std::mem::take(&mut self.batch), events)
                }
                Job::Finish { tick, end, batch } => {
                    self.start(batch);
                    self.wakes(tick, end, false);
                    self.now = Some(self.now.map_or(end, |n| n.max(end)));
                    Reply::Ran(std::mem::take(&mut self.batch), Vec::new())
                }
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
        let now = self.now.unwrap_or_default();
        let tally = super::tally(&self.store, &self.engine.catalog, now);
        let _ = replies.send(Reply::Stats(self.wakeups, self.decisions, Box::new(tally)));
    }

    fn start(&mut self, mut batch: Batch) {
        batch.bytes.clear();
        batch.tags.clear();
        self.batch = batch;
    }

    /// The batch: for every tick, wake-ups before it, then its event if it is ours.
    fn run(&mut self, ticks: &[Tick], events: &mut Vec<(u64, Event, u32)>) {
        let mut events = events.drain(..).peekable();
        for tick in ticks {
            self.wakes(tick.index, tick.time, true);
            self.now = Some(self.now.map_or(tick.time, |n| n.max(tick.time)));
            if let Some((_, ev, ordinal)) = events.next_if(|(i, _, _)| *i == tick.index) {
                self.handle(tick.index, ev, ordinal);
            }
        }
    }

    fn handle(&mut self, tick: u64, ev: Event, ordinal: u32) {
        let Some(now) = self.now else {
            return;
        };
        let slot = self.store.slot_with(&ev.subject, ordinal);
        let late = now > ev.time;
        let ev = Arc::new(ev);
        let c = self.store.customer_at(slot);
        self.engine.handle_event(c, &ev, now, &mut self.out);
        if late {
            // As the sequential replay: a late event's due effects run at once.
            self.engine.wake(c, now, &mut self.out);
        }
        self.store.reschedule(slot);
        self.emit((tick, 1, now, ordinal));
    }

    /// Wake-ups due before `limit` (or at it, if not `strict`), tagged for tick `tick`.
    fn wakes(&mut self, tick: u64, limit: DateTime<Utc>, strict: bool) {
        while let Some((at, slot)) = self.store.pop_due(limit, strict) {
            let now = self.now.map_or(at, |n| n.max(at));
            self.now = Some(now);
            self.wakeups += 1;
            self.engine
                .wake(self.store.customer_at(slot), now, &mut self.out);
            self.store.reschedule(slot);
            let ordinal = self.store.ordinal(slot);
            self.emit((tick, 0, at, ordinal));
        }
    }

    fn emit(&mut self, tag: Tag) {
        if self.out.is_empty() {
            return;
        }
        self.decisions += self.out.len() as u64;
        let start = self.batch.bytes.len();
        // Writing into a Vec cannot fail.
        let _ = self.writer.write_all(&mut self.batch.bytes, &mut self.out);
        self.batch.tags.push((tag, start..self.batch.bytes.len()));
    }
}

/// Writes the workers' batch output in sequential order.
fn merge(outputs: &mut [Batch], output: &mut impl Write) -> std::io::Result<()> {
    let mut next = vec![0usize; outputs.len()];
    loop {
        let best = outputs
            .iter()
            .enumerate()
            .filter_map(|(w, b)| b.tags.get(next[w]).map(|(tag, _)| (tag, w)))
            .min();
        let Some((_, w)) = best else {
            return Ok(());
        };
        let range = outputs[w].tags[next[w]].1.clone();
        output.write_all(&outputs[w].bytes[range])?;
        next[w] += 1;
    }
}
