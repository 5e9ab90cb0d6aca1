//! Who is held out and which variant a customer gets (SPEC §8): deterministic, the same in
//! `simulate` and `run`, and independent of the sequence's version, so an edit never
//! reshuffles the groups.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Customer, Engine};
use crate::event::Event;
use crate::sequence::{Measure, Sequence, Variant};

/// Buckets a holdout share is counted in: `holdout` basis points hold out buckets below it.
pub const BUCKETS: u64 = 10_000;

/// The first 8 bytes, big-endian, of SHA-256 of the parts joined by `:`.
fn hash(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The customer's bucket in the sequence's experiment: SHA-256 of
/// `"{salt}:{sequence name}:{customer id}"`, modulo [`BUCKETS`].
pub fn bucket(salt: &str, sequence: &str, customer: &str) -> u64 {
    hash(&[salt, sequence, customer]) % BUCKETS
}

/// A share as basis points: `10%` → 1000, `12.5%` → 1250, `0%` → 0 (two decimals at most);
/// `None` for anything else or above 100%.
pub fn parse_share(text: &str) -> Option<u32> {
    let number = text.strip_suffix('%')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, frac) = match number.split_once('.') {
        Some((whole, frac)) if frac.len() <= 2 && digits(frac) => (whole, frac),
        Some(_) => return None,
        None => (number, ""),
    };
    if !digits(whole) {
        return None;
    }
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    let points = whole.parse::<u32>().ok()? * 100 + frac;
    (points <= 10_000).then_some(points)
}

/// `experiments.global_holdout`: customers held out of every marketing sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalHoldout {
    /// In basis points (1 to 5,000).
    pub share: u32,
    pub salt: std::sync::Arc<str>,
}

impl GlobalHoldout {
    /// Why the customer is in the global holdout group (SHA-256 of
    /// `"{global_salt}:{customer id}"`, modulo [`BUCKETS`]), or `None`.
    pub fn holds(&self, customer: &str) -> Option<String> {
        let b = hash(&[&self.salt, customer]) % BUCKETS;
        (b < u64::from(self.share)).then(|| {
            format!(
                "held out of all marketing: bucket {b:04} < {:04}",
                self.share
            )
        })
    }
}

/// Why the customer is held out of `seq`'s marketing emails (`held out: bucket 0371 < 1000`),
/// or `None` when they are treated.
pub fn held_out(seq: &Sequence, customer: &str) -> Option<String> {
    let x = seq.experiment.as_ref().filter(|x| x.holdout > 0)?;
    let b = bucket(&x.salt, &seq.name, customer);
    (b < u64::from(x.holdout)).then(|| format!("held out: bucket {b:04} < {:04}", x.holdout))
}

/// The variant of a split step the customer gets: SHA-256 of
/// `"{salt}:{sequence name}:{step id}:{customer id}"` modulo the sum of the weights, walking
/// the variants in file order. `None` for a step that is not split.
pub fn variant<'s>(seq: &'s Sequence, step: usize, customer: &str) -> Option<&'s Variant> {
    let variants = &seq.steps.get(step)?.variants;
    let total: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = hash(&[seq.salt(), &seq.name, &seq.steps[step].id, customer]) % total;
    variants.iter().find(|v| {
        let inside = at < u64::from(v.weight);
        at = at.saturating_sub(u64::from(v.weight));
        inside
    })
}

/// A customer's place in one sequence's experiment, fixed at their first entry (intention to
/// treat: a later entry, or a later change of the holdout share, does not move them). Measures
/// count from `at`, the entry's trigger time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub sequence: Arc<str>,
    /// The salt the groups were drawn with: a new salt is a new experiment.
    pub salt: Arc<str>,
    pub held_out: bool,
    pub at: DateTime<Utc>,
    /// Measures met, each at most once: the earliest event that met it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub converted: Vec<Converted>,
    /// The variant of each split step the customer was sent, and whether that step's goal
    /// followed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantSent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Converted {
    pub measure: Arc<str>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantSent {
    pub step: Arc<str>,
    pub variant: Arc<str>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub goal: bool,
}

impl Assignment {
    /// Whether the window of `m` is closed at `now`: only closed windows are counted.
    pub fn closed(&self, m: &Measure, now: DateTime<Utc>) -> bool {
        self.at + m.within.0 <= now
    }

    pub fn met(&self, measure: &str) -> bool {
        self.met_at(measure).is_some()
    }

    pub fn met_at(&self, measure: &str) -> Option<DateTime<Utc>> {
        self.converted
            .iter()
            .find(|c| *c.measure == *measure)
            .map(|c| c.at)
    }

    /// Whether this is the customer's place in `seq`'s experiment as drawn now (its salt).
    fn is_of(&self, seq: &Sequence) -> bool {
        *self.sequence == *seq.name && *self.salt == *seq.salt()
    }

    /// Records `measure` met at `at`, unless it was met earlier.
    fn convert(&mut self, measure: &Arc<str>, at: DateTime<Utc>) {
        if self.met_at(measure).is_some_and(|t| t <= at) {
            return;
        }
        self.converted.retain(|c| c.measure != *measure);
        self.converted.push(Converted {
            measure: measure.clone(),
            at,
        });
    }
}

/// Whether a sequence keeps assignments: it has an experiment or a split step.
pub fn is_experiment(seq: &Sequence) -> bool {
    seq.experiment.is_some() || seq.steps.iter().any(|s| !s.variants.is_empty())
}

/// The group a customer entering `seq` is in, for the `enter` line: `held out: bucket 0371 <
/// 1000` or `treated: bucket 5234 ≥ 1000`; `None` without a holdout.
pub fn group_of(seq: &Sequence, customer: &str) -> Option<String> {
    let x = seq.experiment.as_ref().filter(|x| x.holdout > 0)?;
    let b = bucket(&x.salt, &seq.name, customer);
    Some(match b < u64::from(x.holdout) {
        true => format!("held out: bucket {b:04} < {:04}", x.holdout),
        false => format!("treated: bucket {b:04} ≥ {:04}", x.holdout),
    })
}

impl Engine {
    /// Records the customer's group in `seq`'s experiment at their first entry (trigger time
    /// `at`). A customer in the global holdout is not counted in a sequence's experiment: they
    /// are held out of every marketing sequence alike.
    pub(super) fn assign(&self, c: &mut Customer, seq: &Sequence, at: DateTime<Utc>) {
        if !is_experiment(seq) {
            return;
        }
        if let Some(i) = c.experiments.iter().position(|a| a.is_of(seq)) {
            // An earlier entry that arrived late is the first: the window counts from it.
            if at < c.experiments[i].at {
                c.experiments[i].at = at;
                self.orders_since(c, i, seq);
            }
            return;
        }
        let global = self.policy.global_holdout.as_ref();
        if !seq.category.is_transactional()
            && global.is_some_and(|g| g.holds(&c.profile.id).is_some())
        {
            return;
        }
        c.experiments.push(Assignment {
            sequence: seq.name.clone(),
            salt: seq.salt().into(),
            held_out: held_out(seq, &c.profile.id).is_some(),
            at,
            converted: Vec::new(),
            variants: Vec::new(),
        });
        let i = c.experiments.len() - 1;
        self.orders_since(c, i, seq);
    }

    /// Counts, for assignment `i`, the orders the customer already placed within a measure's
    /// window (`order.placed` measures without `when`, whose events the orders keep): an
    /// order that overtook the entry counts as it would have in order.
    fn orders_since(&self, c: &mut Customer, i: usize, seq: &Sequence) {
        let Some(x) = &seq.experiment else {
            return;
        };
        for m in x
            .measures
            .iter()
            .filter(|m| &*m.event == "order.placed" && m.when.is_none())
        {
            let at = c.experiments[i].at;
            let first = c
                .orders
                .iter()
                .filter_map(|o| o.placed_at)
                .filter(|t| at < *t && *t <= at + m.within.0)
                .min();
            if let Some(first) = first {
                c.experiments[i].convert(&m.name, first);
            }
        }
    }

    /// Counts `ev` for the measures it meets: its event type, after the entry and within the
    /// window, `when` true. The sequence's current version names the measures.
    pub(super) fn measure(&self, c: &mut Customer, ev: &Arc<Event>) {
        for i in 0..c.experiments.len() {
            let a = &c.experiments[i];
            let Some(seq) = self.catalog.get(&a.sequence) else {
                continue;
            };
            let Some(x) = seq.experiment.as_ref().filter(|x| *x.salt == *a.salt) else {
                continue;
            };
            for m in &x.measures {
                let a = &c.experiments[i];
                let meets = *m.event == *ev.kind
                    && a.at < ev.time
                    && ev.time <= a.at + m.within.0
                    && a.met_at(&m.name).is_none_or(|t| ev.time < t);
                if meets && self.passes(m.when.as_ref(), c, Some(ev), None) {
                    c.experiments[i].convert(&m.name, ev.time);
                }
            }
        }
    }

    /// Notes the variant of a split step sent to the customer (the first send of that step).
    pub(super) fn variant_sent(&self, c: &mut Customer, seq: &Sequence, step: &Arc<str>, id: &str) {
        let Some(a) = c.experiments.iter_mut().find(|a| a.is_of(seq)) else {
            return;
        };
        if !a.variants.iter().any(|v| v.step == *step) {
            a.variants.push(VariantSent {
                step: step.clone(),
                variant: id.into(),
                goal: false,
            });
        }
    }

    /// Notes that a split step's goal was met.
    pub(super) fn variant_goal(&self, c: &mut Customer, seq: &Sequence, step: &str) {
        let sent = c
            .experiments
            .iter_mut()
            .filter(|a| a.is_of(seq))
            .flat_map(|a| a.variants.iter_mut())
            .find(|v| *v.step == *step);
        if let Some(v) = sent {
            v.goal = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket is SPEC §8's formula, checked against an independent SHA-256: Python's
    /// `int.from_bytes(hashlib.sha256(b"2026q4:camera-education:c1").digest()[:8], "big") % 10000`.
    #[test]
    fn buckets_are_the_specs_formula() {
        assert_eq!(bucket("2026q4", "camera-education", "c1"), PYTHON_C1);
        assert_eq!(bucket("2026q4", "camera-education", "c2"), PYTHON_C2);
        assert_ne!(
            bucket("2026q4", "camera-education", "c1"),
            bucket("2027q1", "camera-education", "c1")
        );
    }

    #[test]
    fn shares_are_percentages_with_two_decimals_at_most() {
        for (text, points) in [
            ("10%", Some(1000)),
            ("12.5%", Some(1250)),
            ("0.01%", Some(1)),
            ("0%", Some(0)),
            ("100%", Some(10_000)),
        ] {
            assert_eq!(parse_share(text), points, "{text}");
        }
        for bad in [
            "10",
            "101%",
            "1.234%",
            "-1%",
            "1e1%",
            "%",
            ".5%",
            "5.%",
            "1000000000000%",
        ] {
            assert_eq!(parse_share(bad), None, "{bad}");
        }
    }

    const PYTHON_C1: u64 = 2837;
    const PYTHON_C2: u64 = 875;
}
