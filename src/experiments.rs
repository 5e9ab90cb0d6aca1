//! What the experiments earned (SPEC §8): per sequence and measure, the treated and held-out
//! groups, their conversions and rates, the uplift with Newcombe's 95% interval and the
//! z-test's p-value; per variant, its sends and goal conversions; and what the test can
//! detect.
//!
//! One implementation for every reader: `simulate --report` tallies the simulated customers,
//! `run`'s figures thread the stored ones, and both turn the [`Tally`] into a [`Report`] here.
//! Counted by intention to treat — a customer stays in the group of their first entry — and
//! only once the measure's window has closed; how many are still open is said.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::engine::customer::{HELP_COUNTS_FOR, Relationship as Helped};
use crate::engine::experiment::Assignment;
use crate::sequence::{Catalog, Sequence};
use crate::stats::{self, Count};

/// Counts per sequence, measure and group: additive, so shards of customers are tallied apart
/// and merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    measures: BTreeMap<(String, String), Groups>,
    variants: BTreeMap<(String, String, String), Count>,
    /// Per sequence: assignments whose entry was in the last 90 days, all of them, and the
    /// earliest entry.
    recent: BTreeMap<String, Entries>,
    relationship: Relationship,
    /// Customers helped who have not ordered since (a referral may yet count for them), and
    /// the latest referral each referrer made: joined in [`Tally::report`], since a referral
    /// is another customer's order.
    waiting: Vec<(Box<str>, DateTime<Utc>)>,
    referrals: HashMap<Box<str>, DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Entries {
    recent: u64,
    all: u64,
    first: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Groups {
    treated: Count,
    held_out: Count,
    open: u64,
}

/// Customers helped in the last 12 months (a support ticket resolved, or an education
/// sequence completed), and of them those who ordered again afterwards or referred someone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Relationship {
    pub helped: u64,
    pub returned: u64,
}

/// The look-back of `plan`'s entry rate.
pub const PLAN_DAYS: i64 = 90;

impl Tally {
    /// Counts one customer: their assignments and their relationship.
    pub fn add_customer(
        &mut self,
        experiments: &[Assignment],
        relationship: Option<&Helped>,
        id: &str,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) {
        for a in experiments {
            self.add(a, catalog, now);
        }
        let Some(r) = relationship else {
            return;
        };
        let last = r.last_helped_at.or(r.helped_at);
        if let Some(h) = r
            .helped_at
            .filter(|_| last.is_some_and(|l| l + HELP_COUNTS_FOR >= now))
        {
            self.relationship.helped += 1;
            match r.returned_at {
                Some(_) => self.relationship.returned += 1,
                None => self.waiting.push((id.into(), h)),
            }
        }
        if let (Some(by), Some(at)) = (&r.referred_by, r.referred_at) {
            let latest = self.referrals.entry(by.clone()).or_insert(at);
            *latest = (*latest).max(at);
        }
    }

    /// Counts one customer's assignment at `now`, against the catalog's current version of its
    /// sequence (a sequence no longer deployed, or drawn with another salt, is not counted).
    pub fn add(&mut self, a: &Assignment, catalog: &Catalog, now: DateTime<Utc>) {
        let Some(seq) = catalog.get(&a.sequence) else {
            return;
        };
        if *seq.salt() != *a.salt {
            return;
        }
        let entries = self.recent.entry(seq.name.to_string()).or_default();
        entries.all += 1;
        entries.first = Some(entries.first.map_or(a.at, |f| f.min(a.at)));
        if a.at > now - Duration::days(PLAN_DAYS) {
            entries.recent += 1;
        }
        for m in seq.experiment.iter().flat_map(|x| &x.measures) {
            let g = self
                .measures
                .entry((seq.name.to_string(), m.name.to_string()))
                .or_default();
            if !a.closed(m, now) {
                g.open += 1;
                continue;
            }
            let group = match a.held_out {
                true => &mut g.held_out,
                false => &mut g.treated,
            };
            group.n += 1;
            // Met within the window as the file has it now (an edited `within` counts anew).
            let met = a.met_at(&m.name).is_some_and(|t| t <= a.at + m.within.0);
            group.k += u64::from(met);
        }
        for v in &a.variants {
            let c = self
                .variants
                .entry((
                    seq.name.to_string(),
                    v.step.to_string(),
                    v.variant.to_string(),
                ))
                .or_insert(Count { k: 0, n: 0 });
            c.n += 1;
            c.k += u64::from(v.goal);
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (key, g) in other.measures {
            let mine = self.measures.entry(key).or_default();
            mine.treated = add(mine.treated, g.treated);
            mine.held_out = add(mine.held_out, g.held_out);
            mine.open += g.open;
        }
        for (key, c) in other.variants {
            let mine = self.variants.entry(key).or_insert(Count { k: 0, n: 0 });
            *mine = add(*mine, c);
        }
        for (key, e) in other.recent {
            let mine = self.recent.entry(key).or_default();
            mine.recent += e.recent;
            mine.all += e.all;
            mine.first = match (mine.first, e.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.relationship.helped += other.relationship.helped;
        self.relationship.returned += other.relationship.returned;
        self.waiting.extend(other.waiting);
        for (by, at) in other.referrals {
            let latest = self.referrals.entry(by).or_insert(at);
            *latest = (*latest).max(at);
        }
    }

    /// The return on relationship: the helped who ordered again, or referred someone after
    /// they were helped.
    fn relationship(&self) -> Relationship {
        let referred = self
            .waiting
            .iter()
            .filter(|(id, helped)| self.referrals.get(id).is_some_and(|at| at > helped))
            .count();
        Relationship {
            helped: self.relationship.helped,
            returned: self.relationship.returned + referred as u64,
        }
    }

    /// The figures of every deployed sequence with an experiment or a split step, in catalog
    /// order; `days` is how long the tallied history spans, for the entry rate (by default
    /// from the earliest entry to `now`).
    pub fn report(&self, catalog: &Catalog, now: DateTime<Utc>, days: Option<f64>) -> Report {
        let experiments = catalog
            .sequences()
            .iter()
            .filter(|s| crate::engine::experiment::is_experiment(s))
            .map(|s| self.experiment(s, now, days))
            .collect();
        let r = self.relationship();
        Report {
            as_of: now,
            experiments,
            return_on_relationship: RelationshipFigures {
                helped: r.helped,
                returned: r.returned,
                rate: Count {
                    k: r.returned,
                    n: r.helped,
                }
                .rate(),
            },
        }
    }

    fn experiment(
        &self,
        seq: &Sequence,
        now: DateTime<Utc>,
        days: Option<f64>,
    ) -> ExperimentFigures {
        let name = seq.name.to_string();
        let Entries { recent, all, first } = self.recent.get(&name).copied().unwrap_or_default();
        // Since this sequence's first entry: one deployed lately is not diluted by the store's
        // older history.
        let since_first = first.map_or(0.0, |f| (now - f).num_seconds() as f64 / 86_400.0);
        // A replayed history: its entries over its span. The store: the last 90 days, or
        // the whole history when it is shorter.
        let per_day = match days {
            Some(days) if days > 0.0 => all as f64 / days,
            Some(_) => 0.0,
            None if since_first >= PLAN_DAYS as f64 => recent as f64 / PLAN_DAYS as f64,
            None if since_first > 0.0 => all as f64 / since_first,
            None => 0.0,
        };
        let x = seq.experiment.as_ref();
        let holdout = x.map_or(0, |x| x.holdout);
        let target = x.and_then(|x| x.target);
        let measures = x
            .iter()
            .flat_map(|x| &x.measures)
            .map(|m| {
                let g = self
                    .measures
                    .get(&(name.clone(), m.name.to_string()))
                    .copied()
                    .unwrap_or_default();
                measure_figures(m, g, holdout, target, per_day)
            })
            .collect();
        ExperimentFigures {
            sequence: name,
            salt: seq.salt().to_string(),
            holdout: f64::from(holdout) / 10_000.0,
            target: target.map(|t| f64::from(t) / 10_000.0),
            entries_per_day: per_day,
            measures,
            variants: self.variant_figures(seq),
        }
    }

    fn variant_figures(&self, seq: &Sequence) -> Vec<VariantFigures> {
        let mut out = Vec::new();
        for step in seq.steps.iter().filter(|s| !s.variants.is_empty()) {
            for v in &step.variants {
                let key = (seq.name.to_string(), step.id.to_string(), v.id.to_string());
                let c = self
                    .variants
                    .get(&key)
                    .copied()
                    .unwrap_or(Count { k: 0, n: 0 });
                out.push(VariantFigures {
                    step: step.id.to_string(),
                    id: v.id.to_string(),
                    weight: v.weight,
                    sends: c.n,
                    goals: c.k,
                    rate: c.rate(),
                    interval: c.wilson(stats::Z_95).map(|(l, h)| [l, h]),
                });
            }
        }
        out
    }
}

fn add(a: Count, b: Count) -> Count {
    Count {
        k: a.k + b.k,
        n: a.n + b.n,
    }
}

fn group(c: Count) -> GroupFigures {
    GroupFigures {
        customers: c.n,
        converted: c.k,
        rate: c.rate(),
    }
}

fn measure_figures(
    m: &crate::sequence::Measure,
    g: Groups,
    holdout: u32,
    target: Option<u32>,
    per_day: f64,
) -> MeasureFigures {
    let difference = stats::difference(g.treated, g.held_out);
    MeasureFigures {
        name: m.name.to_string(),
        event: m.event.to_string(),
        within: m.within.to_string(),
        treated: group(g.treated),
        held_out: group(g.held_out),
        open: g.open,
        uplift: difference.map(|d| d.estimate),
        interval: difference.map(|d| [d.low, d.high]),
        p_value: stats::p_value(g.treated, g.held_out),
        plan: plan(g, holdout, target, per_day),
    }
}

/// What the test can detect: from the groups counted so far, and — with an entry rate — how
/// many days `target` needs.
fn plan(g: Groups, holdout: u32, target: Option<u32>, per_day: f64) -> Option<Plan> {
    let baseline = baseline(g)?;
    let share = f64::from(holdout) / 10_000.0;
    let needed =
        target.and_then(|t| stats::customers_needed(baseline, f64::from(t) / 10_000.0, share));
    Some(Plan {
        baseline,
        minimum_detectable: stats::minimum_detectable(baseline, g.treated.n, g.held_out.n),
        customers_needed: needed,
        days_needed: needed
            .filter(|_| per_day > 0.0)
            .map(|n| (n as f64 / per_day).ceil() as u64),
    })
}

/// The rate without the emails: the held-out group's once it has 100 closed windows, else
/// everyone's (close to it while the uplift is small).
fn baseline(g: Groups) -> Option<f64> {
    match g.held_out.n >= 100 {
        true => g.held_out.rate(),
        false => add(g.treated, g.held_out).rate(),
    }
}

/// `simulate --report FILE`, `GET /api/experiments`, the dashboard's panel.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Windows closed by this instant are counted.
    pub as_of: DateTime<Utc>,
    pub experiments: Vec<ExperimentFigures>,
    pub return_on_relationship: RelationshipFigures,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentFigures {
    pub sequence: String,
    pub salt: String,
    /// The share held out (0.1 for 10%).
    pub holdout: f64,
    /// `experiment.target`, as a difference of rates (0.02 for 2pp).
    pub target: Option<f64>,
    /// Customers entering per day: over the replayed history (`simulate`), or over the
    /// store's last 90 days (the whole history when shorter).
    pub entries_per_day: f64,
    pub measures: Vec<MeasureFigures>,
    pub variants: Vec<VariantFigures>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeasureFigures {
    pub name: String,
    pub event: String,
    pub within: String,
    pub treated: GroupFigures,
    pub held_out: GroupFigures,
    /// Customers whose window has not closed yet: not counted in either group.
    pub open: u64,
    /// The treated rate minus the held-out rate.
    pub uplift: Option<f64>,
    /// Newcombe's hybrid score 95% interval of the uplift.
    pub interval: Option<[f64; 2]>,
    /// Two-sided, the pooled two-proportion z-test.
    pub p_value: Option<f64>,
    pub plan: Option<Plan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupFigures {
    pub customers: u64,
    pub converted: u64,
    pub rate: Option<f64>,
}

/// What the experiment can detect at α = 0.05 (two-sided) and power 0.8.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Plan {
    /// The rate the uplift is measured against (see [`baseline`]).
    pub baseline: f64,
    /// The smallest uplift the groups counted so far detect.
    pub minimum_detectable: Option<f64>,
    /// Customers entering (both groups) needed to detect `experiment.target`.
    pub customers_needed: Option<u64>,
    /// The days that takes at the entry rate.
    pub days_needed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantFigures {
    pub step: String,
    pub id: String,
    pub weight: u32,
    pub sends: u64,
    /// Sends followed by the step's goal.
    pub goals: u64,
    pub rate: Option<f64>,
    /// Wilson's 95% interval of the rate.
    pub interval: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RelationshipFigures {
    pub helped: u64,
    pub returned: u64,
    pub rate: Option<f64>,
}

impl Report {
    /// The figures as a marketer reads them: a paragraph per experiment, then the return on
    /// relationship.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        for x in &self.experiments {
            let _ = writeln!(
                out,
                "experiment {} (holdout {}, salt {}), {:.1} entries a day:",
                x.sequence,
                percent(Some(x.holdout)),
                x.salt,
                x.entries_per_day
            );
            for m in &x.measures {
                m.write_text(x.target, out);
            }
            for v in &x.variants {
                let _ = writeln!(
                    out,
                    "  variant {}/{} (weight {}): {} sent, {} goal conversions ({}{})",
                    v.step,
                    v.id,
                    v.weight,
                    v.sends,
                    v.goals,
                    percent(v.rate),
                    interval(v.interval, percent),
                );
            }
        }
        let r = &self.return_on_relationship;
        let _ = writeln!(
            out,
            "return on relationship: {} of {} customers helped in the last 12 months ordered again or referred someone ({})",
            r.returned,
            r.helped,
            percent(r.rate)
        );
    }
}

impl MeasureFigures {
    fn write_text(&self, target: Option<f64>, out: &mut String) {
        use std::fmt::Write;
        let group =
            |g: &GroupFigures| format!("{} of {} ({})", g.converted, g.customers, percent(g.rate));
        let _ = writeln!(
            out,
            "  {} ({} within {}): treated {}, held out {}; uplift {}{}, p = {}; {} window(s) still open",
            self.name,
            self.event,
            self.within,
            group(&self.treated),
            group(&self.held_out),
            points(self.uplift),
            interval(self.interval, points),
            self.p_value.map_or("-".into(), |p| format!("{p:.4}")),
            self.open,
        );
        let Some(plan) = &self.plan else {
            return;
        };
        let _ = write!(
            out,
            "    baseline {}: these groups detect an uplift of {} (α = 0.05, power 0.8)",
            percent(Some(plan.baseline)),
            points(plan.minimum_detectable),
        );
        if let (Some(t), Some(n)) = (target, plan.customers_needed) {
            let days = plan.days_needed.map_or(String::new(), |d| {
                format!(", about {d} days at this entry rate")
            });
            let _ = write!(
                out,
                "; {} needs {n} customers entering{days}",
                points(Some(t))
            );
        }
        out.push('\n');
    }
}

/// `29.2%`, or `-` for none.
fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

/// `+2.3pp`, or `-` for none.
fn points(d: Option<f64>) -> String {
    d.map_or("-".into(), |d| format!("{:+.1}pp", d * 100.0))
}

/// `, 95% CI a to b` in `show`'s units, or nothing.
fn interval(i: Option<[f64; 2]>, show: fn(Option<f64>) -> String) -> String {
    i.map_or(String::new(), |[l, h]| {
        format!(", 95% CI {} to {}", show(Some(l)), show(Some(h)))
    })
}
