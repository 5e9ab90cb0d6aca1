//! One customer's journeys in flight, in the order they started, found the way an event or
//! the clock asks for them.
//!
//! Nearly every customer has a handful of journeys: those stay a list sized exactly
//! ([`Compact`]), scanned — nothing is cheaper at that length, and memory per customer is what
//! counts when customers number in the millions. A customer with many journeys in flight (a
//! marketplace seller, a business account ordering daily) moves to indexes kept beside the
//! journeys — by due time, by order, by the event kinds they listen to, by id — so that what
//! one event costs depends on the journeys it touches, not on how many are in flight (SPEC §7).
//!
//! Either way the engine sees the same thing: journeys in start order (the order ties are
//! decided in), and the candidates for an event as a superset of the journeys it can affect,
//! in that order. The engine's own predicates decide among them, so both forms decide alike
//! (a test runs the engine both ways and compares every decision).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::compact::Compact;
use super::journey::{Journey, JourneyId, State};
use crate::event::Event;
use crate::sequence::Timing;

/// From this many journeys on, a customer's journeys are indexed.
const MANY: usize = 64;
/// Below this many, they go back to a plain list (apart from `MANY`, so a customer hovering at
/// the threshold does not rebuild indexes at every event).
const FEW: usize = 32;

#[cfg(not(test))]
pub(super) fn thresholds() -> (usize, usize) {
    (MANY, FEW)
}

#[cfg(test)]
thread_local! {
    /// Tests run the engine with every customer indexed, and with none.
    pub(crate) static THRESHOLDS: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((MANY, FEW)) };
}

#[cfg(test)]
pub(super) fn thresholds() -> (usize, usize) {
    THRESHOLDS.with(|t| t.get())
}

/// A journey's place, valid until the next [`Journeys::push`] or [`Journeys::remove`]: look a
/// journey up again by its id ([`Journeys::find`]) after either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ji(u64);

#[derive(Debug, Clone, Default)]
pub struct Journeys(Repr);

#[derive(Debug, Clone)]
enum Repr {
    /// `Ji` is the position.
    Few(Compact<Journey>),
    /// `Ji` is the start number.
    Many(Box<Many>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Few(Compact::default())
    }
}

#[derive(Debug, Clone, Default)]
struct Many {
    /// The next start number.
    next: u64,
    all: BTreeMap<u64, Journey>,
    ids: HashMap<JourneyId, u64>,
    /// (when it is next due, start number): ties go to the one that started first.
    due: BTreeSet<(DateTime<Utc>, u64)>,
    paused: BTreeSet<u64>,
    /// per_order journeys by their order; per_customer ones in `unordered`.
    by_order: HashMap<Arc<str>, BTreeSet<u64>>,
    unordered: BTreeSet<u64>,
    /// By the event kinds each listens to: its `exit_on` and its step's `wait_for`.
    by_kind: HashMap<Arc<str>, BTreeSet<u64>>,
    /// Start numbers put or taken since the store last saved them ([`Journeys::changes`]).
    changes: Tracker,
}

/// What changed among items kept as rows, by number: tracked once the items were read from
/// stored rows or saved once (`simulate` never saves); until then every item is to be written.
#[derive(Debug, Clone, Default)]
pub(super) struct Tracker {
    dirty: BTreeSet<u64>,
    tracked: bool,
}

impl Tracker {
    /// Tracking from rows just read: nothing changed yet.
    pub(super) fn tracked() -> Tracker {
        Tracker {
            tracked: true,
            ..Tracker::default()
        }
    }

    pub(super) fn mark(&mut self, n: u64) {
        if self.tracked {
            self.dirty.insert(n);
        }
    }

    /// The numbers changed since the last call; `None` for every item (`everything`, or
    /// nothing tracked yet).
    pub(super) fn take(&mut self, everything: bool) -> Option<BTreeSet<u64>> {
        let all = everything || !self.tracked;
        self.tracked = true;
        let dirty = std::mem::take(&mut self.dirty);
        (!all).then_some(dirty)
    }
}

/// What a store keeping one row per item (journeys, orders) has to write: every item (`all`,
/// the rows kept before go), or the items changed since the last save, by number, `None` for
/// one that is gone.
#[derive(Debug)]
pub struct Changed<'a, T> {
    pub all: bool,
    pub items: Vec<(u64, Option<&'a T>)>,
}

impl Journeys {
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.all.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In start order.
    pub fn iter(&self) -> impl Iterator<Item = &Journey> {
        let (few, many) = match &self.0 {
            Repr::Few(v) => (Some(v.iter()), None),
            Repr::Many(m) => (None, Some(m.all.values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub fn find(&self, id: JourneyId) -> Option<Ji> {
        match &self.0 {
            Repr::Few(v) => v.iter().position(|j| j.id == id).map(|i| Ji(i as u64)),
            Repr::Many(m) => m.ids.get(&id).map(|n| Ji(*n)),
        }
    }

    /// Adds a journey after every other.
    pub fn push(&mut self, j: Journey) -> Ji {
        match &mut self.0 {
            Repr::Few(v) if v.len() + 1 < thresholds().0 => {
                v.push(j);
                Ji(v.len() as u64 - 1)
            }
            Repr::Few(v) => {
                let mut m = Box::new(Many::default());
                for old in std::mem::take(v).into_vec() {
                    m.insert(old);
                }
                let ji = Ji(m.insert(j));
                self.0 = Repr::Many(m);
                ji
            }
            Repr::Many(m) => Ji(m.insert(j)),
        }
    }

    pub fn remove(&mut self, ji: Ji) -> Option<Journey> {
        match &mut self.0 {
            Repr::Few(v) => (ji.0 < v.len() as u64).then(|| v.remove(ji.0 as usize)),
            Repr::Many(m) => {
                let j = m.take(ji.0);
                if m.all.len() < thresholds().1 {
                    let rest: Vec<Journey> = std::mem::take(&mut m.all).into_values().collect();
                    self.0 = Repr::Few(rest.into());
                }
                j
            }
        }
    }

    /// Changes one journey (its state, step, hold or version), keeping the indexes true;
    /// `None` if `ji` is not in flight.
    pub fn update<R>(&mut self, ji: Ji, f: impl FnOnce(&mut Journey) -> R) -> Option<R> {
        match &mut self.0 {
            Repr::Few(v) => v.get_mut(ji.0 as usize).map(f),
            Repr::Many(m) => {
                let mut j = m.take(ji.0)?;
                let r = f(&mut j);
                m.put(ji.0, j);
                Some(r)
            }
        }
    }

    /// Journeys read back from rows numbered by [`Journeys::changes`], indexed as they were
    /// (so that later changes name the same rows); sorted by number, which is start order.
    pub fn numbered(rows: Vec<(u64, Journey)>) -> Journeys {
        let mut m = Box::new(Many::default());
        for (n, j) in rows {
            m.put(n, j);
            m.next = m.next.max(n + 1);
        }
        m.changes = Tracker::tracked();
        Journeys(Repr::Many(m))
    }

    /// Indexed (many): a store keeps them as rows ([`Journeys::changes`]).
    pub fn is_indexed(&self) -> bool {
        matches!(self.0, Repr::Many(_))
    }

    /// For a store keeping one row per journey: `None` while the journeys are few (they are
    /// stored in a list with the customer); else what changed since the last call, or every
    /// journey when `everything` (none is stored as a row yet).
    pub fn changes(&mut self, everything: bool) -> Option<Changed<'_, Journey>> {
        let Repr::Many(m) = &mut self.0 else {
            return None;
        };
        Some(match m.changes.take(everything) {
            None => Changed {
                all: true,
                items: m.all.iter().map(|(n, j)| (*n, Some(j))).collect(),
            },
            Some(dirty) => Changed {
                all: false,
                items: dirty.into_iter().map(|n| (n, m.all.get(&n))).collect(),
            },
        })
    }

    /// The instant the clock next has work for one of these journeys.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        match &self.0 {
            Repr::Few(v) => v.iter().filter_map(Journey::due).min(),
            Repr::Many(m) => m.due.first().map(|(at, _)| *at),
        }
    }

    /// The journey due first at or before `now` (and strictly before `before`, when given);
    /// between journeys due at the same instant, the one that started first.
    pub fn first_due(&self, now: DateTime<Utc>, before: Option<DateTime<Utc>>) -> Option<Ji> {
        let ok = |d: DateTime<Utc>| d <= now && before.is_none_or(|b| d < b);
        match &self.0 {
            Repr::Few(v) => v
                .iter()
                .enumerate()
                .filter_map(|(i, j)| j.due().map(|d| (d, i)))
                .filter(|(d, _)| ok(*d))
                .min()
                .map(|(_, i)| Ji(i as u64)),
            Repr::Many(m) => m.due.first().filter(|(d, _)| ok(*d)).map(|(_, n)| Ji(*n)),
        }
    }

    /// The journeys an event may end, advance or otherwise concern, in start order: every
    /// journey that sees it (its order's, or any for an event about no order) and listens to
    /// its kind. A superset: the engine's own checks decide.
    pub fn concerned(&self, ev: &Event) -> Vec<JourneyId> {
        match &self.0 {
            Repr::Few(v) => v
                .iter()
                .filter(|j| sees(j, ev) && listens(j, &ev.kind))
                .map(|j| j.id)
                .collect(),
            Repr::Many(m) => {
                let none = BTreeSet::new();
                let numbers: BTreeSet<u64> = match ev.order_id() {
                    Some(o) => m
                        .by_order
                        .get(o)
                        .unwrap_or(&none)
                        .union(&m.unordered)
                        .copied()
                        .collect(),
                    None => m.by_kind.get(&*ev.kind).cloned().unwrap_or_default(),
                };
                numbers
                    .into_iter()
                    .filter_map(|n| m.all.get(&n))
                    .filter(|j| listens(j, &ev.kind))
                    .map(|j| j.id)
                    .collect()
            }
        }
    }

    /// The journeys `pause_when` holds, in start order.
    pub fn paused(&self) -> Vec<JourneyId> {
        let paused = |j: &&Journey| j.state == State::Paused && !j.held;
        match &self.0 {
            Repr::Few(v) => v.iter().filter(paused).map(|j| j.id).collect(),
            Repr::Many(m) => m
                .paused
                .iter()
                .filter_map(|n| m.all.get(n))
                .filter(paused)
                .map(|j| j.id)
                .collect(),
        }
    }

    /// A journey of the sequence called `name` for this order (or, for `None`, for no order) is
    /// in flight.
    pub fn any_of(&self, name: &str, order_id: Option<&str>) -> bool {
        let same = |j: &Journey| &*j.sequence.name == name && j.order_id.as_deref() == order_id;
        match &self.0 {
            Repr::Few(v) => v.iter().any(same),
            Repr::Many(m) => match order_id {
                Some(o) => m.by_order.get(o),
                None => Some(&m.unordered),
            }
            .is_some_and(|set| set.iter().filter_map(|n| m.all.get(n)).any(same)),
        }
    }
}

impl std::ops::Index<Ji> for Journeys {
    type Output = Journey;

    fn index(&self, ji: Ji) -> &Journey {
        match &self.0 {
            Repr::Few(v) => &v[ji.0 as usize],
            Repr::Many(m) => &m.all[&ji.0],
        }
    }
}

impl FromIterator<Journey> for Journeys {
    fn from_iter<I: IntoIterator<Item = Journey>>(iter: I) -> Journeys {
        let mut js = Journeys::default();
        for j in iter {
            js.push(j);
        }
        js
    }
}

impl Many {
    fn insert(&mut self, j: Journey) -> u64 {
        let n = self.next;
        self.next += 1;
        self.put(n, j);
        n
    }

    /// Files the journey under every index.
    fn put(&mut self, n: u64, j: Journey) {
        self.changes.mark(n);
        self.ids.insert(j.id, n);
        if let Some(at) = j.due() {
            self.due.insert((at, n));
        }
        if j.state == State::Paused {
            self.paused.insert(n);
        }
        match &j.order_id {
            Some(o) => {
                self.by_order.entry(o.clone()).or_default().insert(n);
            }
            None => {
                self.unordered.insert(n);
            }
        }
        for kind in kinds(&j) {
            self.by_kind.entry(kind.clone()).or_default().insert(n);
        }
        self.all.insert(n, j);
    }

    /// Takes the journey out of every index.
    fn take(&mut self, n: u64) -> Option<Journey> {
        let j = self.all.remove(&n)?;
        self.changes.mark(n);
        self.ids.remove(&j.id);
        if let Some(at) = j.due() {
            self.due.remove(&(at, n));
        }
        self.paused.remove(&n);
        match &j.order_id {
            Some(o) => drop_from(&mut self.by_order, o, n),
            None => {
                self.unordered.remove(&n);
            }
        }
        for kind in kinds(&j) {
            drop_from(&mut self.by_kind, kind, n);
        }
        Some(j)
    }
}

fn drop_from(map: &mut HashMap<Arc<str>, BTreeSet<u64>>, key: &str, n: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&n);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The event kinds a journey listens to: its sequence's `exit_on` and its step's `wait_for`.
fn kinds(j: &Journey) -> impl Iterator<Item = &Arc<str>> {
    let waits = match j.sequence.steps.get(j.step).map(|s| &s.timing) {
        Some(Timing::WaitFor(w)) => Some(&w.event),
        _ => None,
    };
    j.sequence.exit_on.iter().chain(waits)
}

fn listens(j: &Journey, kind: &str) -> bool {
    kinds(j).any(|k| **k == *kind)
}

/// A per_order journey sees its order's events and events about no order.
pub fn sees(j: &Journey, ev: &Event) -> bool {
    match (&j.order_id, ev.order_id()) {
        (Some(mine), Some(theirs)) => **mine == *theirs,
        _ => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use chrono::{DateTime, Duration, Utc};

    use super::THRESHOLDS;
    use crate::engine::{Control, Decision, Engine, Policy};
    use crate::event::Event;
    use crate::sequence::Catalog;
    use crate::simulate::Simulator;
    use crate::template::Templates;

    /// The starter set, with a per_customer sequence that waits for an event about no order
    /// and loops back (the paths per_order journeys do not take).
    pub(crate) fn catalog() -> Arc<Catalog> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences");
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.push((
            "care.yaml".into(),
            "name: care\ncategory: feedback\njourney: per_customer\nreenter: true\n\
             trigger: { event: support.ticket_opened }\nexit_on: [customer.unsubscribed]\n\
             steps:\n  - id: settled\n    wait_for: { event: support.ticket_resolved, timeout: 2d, on_timeout: again }\n\
             \x20   email: { template: nps/survey }\n  - id: done\n    exit: true\n\
             \x20 - id: again\n    wait_for: { event: feedback.submitted, timeout: 1d, on_timeout: skip }\n"
                .into(),
        ));
        files.sort();
        let tdir = dir.join("templates");
        let (templates, diags) = Templates::load(&tdir, "templates").unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let (catalog, diags) = Catalog::from_sources(files, templates, vec![]);
        assert!(diags.is_empty(), "{diags:?}");
        Arc::new(catalog)
    }

    /// A deterministic stream of events for a few customers with many orders each, out of
    /// order now and then: every kind the starter set and `care` react to.
    pub(crate) fn events(seed: u64, n: usize) -> Vec<Event> {
        let mut state = seed;
        let mut next = move |m: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % m
        };
        let t0: DateTime<Utc> = "2026-03-01T08:00:00Z".parse().unwrap();
        let mut at = t0;
        let mut orders = [0u64; 3];
        (0..n)
            .map(|i| {
                at += Duration::minutes(next(600) as i64);
                let c = next(3) as usize;
                let placed = orders[c];
                let order = format!("c{c}-o{}", next(placed.max(1)));
                let (kind, data) = match next(12) {
                    0..=3 => {
                        orders[c] += 1;
                        let cat = ["camera", "tripod", "lens"][next(3) as usize];
                        (
                            "order.placed",
                            format!(
                                r#"{{"order_id":"c{c}-o{placed}","total":"10","currency":"EUR","items":[{{"sku":"{cat}1","name":"n","category":"{cat}","quantity":1,"unit_price":"10"}}],"customer":{{"email":"c{c}@example.com"}}}}"#
                            ),
                        )
                    }
                    4 => (
                        "order.shipped",
                        format!(
                            r#"{{"order_id":"{order}","carrier":"UPS","tracking_number":"1Z"}}"#
                        ),
                    ),
                    5 | 6 => ("order.delivered", format!(r#"{{"order_id":"{order}"}}"#)),
                    7 => ("order.cancelled", format!(r#"{{"order_id":"{order}"}}"#)),
                    8 => (
                        "review.submitted",
                        format!(r#"{{"order_id":"{order}","sku":"camera1","rating":4}}"#),
                    ),
                    9 => (
                        ["support.ticket_opened", "support.ticket_resolved"][next(2) as usize],
                        format!(r#"{{"ticket_id":"t{}"}}"#, next(3)),
                    ),
                    10 => (
                        "feedback.submitted",
                        r#"{"kind":"nps","score":7}"#.to_string(),
                    ),
                    _ => (
                        "customer.unsubscribed",
                        r#"{"categories":["feedback"]}"#.to_string(),
                    ),
                };
                // Now and then an event a little late.
                let time = at - Duration::minutes(next(2) as i64 * 30);
                let text = format!(
                    r#"{{"specversion":"1.0","id":"e{i}","source":"/t","type":"{kind}","time":"{}","subject":"c{c}","data":{data}}}"#,
                    crate::time::rfc3339(time)
                );
                Event::from_structured(text.as_bytes()).unwrap()
            })
            .collect()
    }

    /// A decision as the differential tests compare them.
    pub(crate) fn line(d: &Decision) -> String {
        format!(
            "{} {} {} {:?} {:?} {}",
            crate::time::rfc3339(d.at),
            d.customer,
            d.sequence,
            d.step,
            d.action,
            d.reason
        )
    }

    /// Every decision of the stream, with operator holds and cancels along the way.
    fn decide(thresholds: (usize, usize), events: &[Event]) -> (Vec<Decision>, usize) {
        THRESHOLDS.with(|t| t.set(thresholds));
        let mut sim = Simulator::new(Engine::new(catalog(), Policy::default()));
        let mut out = Vec::new();
        let mut most = 0;
        for (i, e) in events.iter().enumerate() {
            sim.push_event(e.clone(), &mut out);
            let c = sim.customer(&e.subject).unwrap();
            most = most.max(c.journeys.len());
            let picked = c.journeys.iter().nth(i % 5).map(|j| (j.id, j.held));
            if i % 17 == 0
                && let Some((id, held)) = picked
            {
                let op = match i % 3 {
                    0 => Control::Cancel,
                    _ if held => Control::Resume,
                    _ => Control::Pause,
                };
                sim.control(&e.subject, id, op, &mut out).unwrap();
            }
        }
        let end = sim.now().unwrap() + Duration::days(60);
        sim.advance_to(end, &mut out);
        THRESHOLDS.with(|t| t.set((super::MANY, super::FEW)));
        (out, most)
    }

    #[test]
    fn indexed_journeys_decide_exactly_as_a_scanned_list() {
        for seed in [1, 2, 3] {
            let events = events(seed, 3_000);
            let (listed, most) = decide((usize::MAX, 0), &events);
            // Indexed from the second journey on, back to a list below two.
            let (indexed, _) = decide((2, 2), &events);
            assert!(most >= 40, "seed {seed}: at most {most} journeys at once");
            assert!(
                listed.len() > 3_000,
                "seed {seed}: {} decisions",
                listed.len()
            );
            let show = line;
            let first_difference = listed
                .iter()
                .zip(&indexed)
                .position(|(a, b)| show(a) != show(b));
            assert_eq!(
                (first_difference, listed.len()),
                (None, indexed.len()),
                "seed {seed}: {:?} vs {:?}",
                first_difference.map(|i| show(&listed[i])),
                first_difference.map(|i| show(&indexed[i]))
            );
        }
    }
}
