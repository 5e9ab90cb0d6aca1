//! What a set of sequences may cost when it runs, checked when it loads (SPEC §7).
//!
//! - A cycle of `start` steps in which no step waits would enrol a customer again and again
//!   at one instant: refused.
//! - Every template and expression is evaluated once against a sample customer under the
//!   fuel and recursion limits: one that does not finish, includes itself or recurses without
//!   end is refused now, naming its file, rather than failing at its first customer.

use std::collections::HashMap;
use std::sync::Arc;

use minijinja::Value;

use super::diag::{Diagnostic, Pos};
use super::raw::Sp;
use super::{Action, Sequence, Timing};
use crate::engine::context::Ctx;
use crate::engine::{Customer, Journey, JourneyId, State};
use crate::event::Event;
use crate::template::Templates;

/// Diagnostics for every `start` step on a cycle of sequences that start each other with no
/// wait in between. `starts` holds each sequence's `start` targets with their positions, in
/// step order.
pub fn start_cycles(
    current: &[Arc<Sequence>],
    starts: &HashMap<Arc<str>, Vec<Sp<String>>>,
) -> Vec<Diagnostic> {
    let edges = instant_starts(current, starts);
    let path_of: HashMap<&str, &str> = current
        .iter()
        .map(|s| (&*s.name, s.path.as_str()))
        .collect();
    let mut out = Vec::new();
    let mut names: Vec<&str> = edges.keys().copied().collect();
    names.sort();
    let mut reported: Vec<(&str, Pos)> = Vec::new();
    for start in names {
        // The shortest way back to `start`, breadth first.
        let Some(cycle) = shortest_cycle(start, &edges) else {
            continue;
        };
        let text = names_around(&cycle, start);
        for (from, _, pos) in &cycle {
            if reported.contains(&(from, *pos)) {
                continue;
            }
            reported.push((from, *pos));
            let path = path_of.get(from).copied().unwrap_or(from);
            out.push(cycle_diagnostic(path, *pos, &text));
        }
    }
    out
}

/// Edges: sequence → (target, position of its `start`), for the starts reached without a wait.
fn instant_starts<'a>(
    current: &'a [Arc<Sequence>],
    starts: &HashMap<Arc<str>, Vec<Sp<String>>>,
) -> HashMap<&'a str, Vec<(&'a str, Pos)>> {
    let mut edges: HashMap<&str, Vec<(&str, Pos)>> = HashMap::new();
    for seq in current {
        let positions = starts.get(&seq.name).map(Vec::as_slice).unwrap_or_default();
        let mut k = 0;
        for step in &seq.steps {
            let waits = match &step.timing {
                Timing::Now => false,
                Timing::Wait(p) => !p.is_zero(),
                Timing::WaitFor(w) => !w.timeout.is_zero(),
            };
            if waits {
                break;
            }
            match &step.action {
                Some(Action::Start { sequence }) => {
                    let pos = positions.get(k).map_or(Pos::START, |p| p.pos);
                    edges.entry(&seq.name).or_default().push((sequence, pos));
                    k += 1;
                }
                Some(Action::Exit) => break,
                // A branch's jumps: forward ones are walked on; a backward one without a
                // wait is refused by the compiler.
                Some(Action::Email { .. } | Action::Webhook { .. } | Action::Branch(_)) | None => {}
            }
        }
    }
    edges
}

/// The sequences on `cycle`, in order, back to `start`.
fn names_around<'a>(cycle: &[(&'a str, &'a str, Pos)], start: &'a str) -> Vec<&'a str> {
    cycle
        .iter()
        .map(|(from, _, _)| *from)
        .chain([start])
        .collect()
}

/// The diagnostic for a `start` at `pos` in `path` on the cycle `text` (its sequences, in order).
fn cycle_diagnostic(path: &str, pos: Pos, text: &[&str]) -> Diagnostic {
    Diagnostic::new(
        path,
        pos,
        format!(
            "`start` closes a cycle of sequences that start each other without waiting: {}",
            text.join(" → ")
        ),
    )
    .hint("add a `wait` before one of these `start` steps: each would enrol the customer again at the same instant")
}

/// The edges of the shortest cycle through `start`: (from, to, position of the `start`).
fn shortest_cycle<'a>(
    start: &'a str,
    edges: &HashMap<&'a str, Vec<(&'a str, Pos)>>,
) -> Option<Vec<(&'a str, &'a str, Pos)>> {
    let mut came_from: HashMap<&str, (&str, Pos)> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for (to, pos) in edges.get(at).map(Vec::as_slice).unwrap_or_default() {
            if *to == start {
                let mut cycle = vec![(at, *to, *pos)];
                let mut back = at;
                while back != start {
                    let (prev, p) = came_from[back];
                    cycle.push((prev, back, p));
                    back = prev;
                }
                cycle.reverse();
                return Some(cycle);
            }
            if !came_from.contains_key(to) {
                came_from.insert(to, (at, *pos));
                queue.push_back(to);
            }
        }
    }
    None
}

/// Every template and expression tried against the sample customer.
pub fn check(current: &[Arc<Sequence>], templates: &Templates) -> Vec<Diagnostic> {
    let sample = Sample::new();
    let mut out = templates.check_budget(&sample.template_context());
    for seq in current {
        let ctx = sample.expression_context(seq);
        for e in expressions(seq) {
            if let Err(err) = e.eval_budgeted(ctx.clone()) {
                out.push(
                    Diagnostic::new(
                        &seq.path,
                        Pos::START,
                        format!("the expression `{e}` does not finish within its budget: {err}"),
                    )
                    .hint(
                        "an expression decides one thing; loops over large ranges belong nowhere",
                    ),
                );
            }
        }
    }
    out
}

/// A sequence's expressions: its trigger's, its pause's, then each step's, in step order.
fn expressions(seq: &Sequence) -> Vec<&super::Expr> {
    let mut exprs = Vec::new();
    exprs.extend(seq.trigger.when.as_ref());
    exprs.extend(seq.pause_when.as_ref());
    for step in &seq.steps {
        exprs.extend(step.skip_when.as_ref());
        if let Timing::WaitFor(w) = &step.timing {
            exprs.extend(w.when.as_ref());
        }
        exprs.extend(step.goal.as_ref().and_then(|g| g.when.as_ref()));
    }
    exprs
}

/// What templates see for the sample customer (also the fuzzer's context).
pub fn sample_context() -> Value {
    Sample::new().template_context()
}

/// A customer as templates and expressions see one: an order of two items, delivered, and
/// an open ticket.
struct Sample {
    customer: Customer,
    event: Arc<Event>,
}

const SAMPLE_EVENTS: [&str; 4] = [
    r#"{"specversion":"1.0","id":"s1","source":"/validate","type":"order.placed","time":"2024-01-01T10:00:00Z","subject":"sample",
        "data":{"order_id":"o1","total":"129.00","currency":"USD","customer":{"email":"sample@example.com","name":"Sam Sample","locale":"en-US","timezone":"UTC"},
        "items":[{"sku":"cam-1","name":"Camera","category":"camera","quantity":1,"unit_price":"119.00"},
                 {"sku":"card-1","name":"Memory card","category":"accessory","quantity":2,"unit_price":"5.00"}]}}"#,
    r#"{"specversion":"1.0","id":"s2","source":"/validate","type":"order.shipped","time":"2024-01-02T10:00:00Z","subject":"sample",
        "data":{"order_id":"o1","carrier":"UPS","tracking_number":"1Z999","tracking_url":"https://example.com/t/1Z999"}}"#,
    r#"{"specversion":"1.0","id":"s3","source":"/validate","type":"order.delivered","time":"2024-01-04T10:00:00Z","subject":"sample",
        "data":{"order_id":"o1"}}"#,
    r#"{"specversion":"1.0","id":"s4","source":"/validate","type":"support.ticket_opened","time":"2024-01-05T10:00:00Z","subject":"sample",
        "data":{"ticket_id":"t1","order_id":"o1","subject":"Lens cap"}}"#,
];

impl Sample {
    fn new() -> Sample {
        let mut customer = Customer::new("sample".into());
        let mut last = None;
        for text in SAMPLE_EVENTS {
            if let Ok(e) = Event::from_structured(text.as_bytes()) {
                let e = Arc::new(e);
                customer.apply(&e);
                last = Some(e);
            }
        }
        let event = last.unwrap_or_else(|| {
            Arc::new(Event {
                id: "s".into(),
                source: "/validate".into(),
                kind: "customer.updated".into(),
                time: chrono::DateTime::UNIX_EPOCH,
                subject: "sample".into(),
                customer: None,
                data: crate::event::EventData::CustomerUpdated,
            })
        });
        Sample { customer, event }
    }

    fn template_context(&self) -> Value {
        let mut ctx = Ctx::new(
            &self.customer.profile,
            None,
            self.customer.order("o1"),
            None,
        );
        ctx.unsubscribe_url = Value::from("https://example.com/u/sample");
        ctx.preferences_url = Value::from("https://example.com/preferences/sample");
        ctx.coupon = Ctx::coupon(Some("TRI-SAMPLE42"));
        ctx.into_value()
    }

    fn expression_context(&self, seq: &Arc<Sequence>) -> Value {
        let journey = Journey {
            id: JourneyId::derive(&[&seq.name, "sample"]),
            sequence: seq.clone(),
            order_id: Some("o1".into()),
            started_at: self.event.time,
            step: 0,
            state: State::Paused,
            backfill: false,
            held: false,
        };
        Ctx::new(
            &self.customer.profile,
            Some(&self.event),
            self.customer.order("o1"),
            Some(&journey),
        )
        .into_value()
    }
}
