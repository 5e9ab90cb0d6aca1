//! Retention figures: what the sequences did and what it earned.
//!
//! Per sequence and step: journeys entered, emails decided and sent, suppressed by reason,
//! skipped, deferred, failed and bounced; goal conversions and their rate; the repeat-purchase
//! rate of customers who went through the sequence against those who did not. NPS (% promoters
//! 9-10 minus % detractors 0-6) from `feedback.submitted` over `http.nps_window`.
//!
//! Computed from the store every `http.figures_refresh` by the figures thread, which also
//! sets the store-backed gauges of `/metrics`; the admin API and the dashboard read the last
//! report, so a page view never scans the timeline.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::metrics::{
    DeadLetterLabels, ExperimentLabels, FigureLabels, GroupLabels, JourneyLabels, Metrics,
    SequenceLabels, reason_class,
};
use crate::sequence::Catalog;
use crate::store::{JourneyCount, StoreFigures};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub computed_at: Option<DateTime<Utc>>,
    pub sequences: Vec<SequenceFigures>,
    pub nps: Nps,
    pub customers: i64,
    /// Share of all customers with two or more orders.
    pub repeat_purchase_rate: Option<f64>,
    /// Dead letters in the store (of every instance), those not yet on the dead-letter topic,
    /// and the count per reason class.
    pub dead_letters: i64,
    pub dead_letters_pending: i64,
    pub dead_letter_classes: BTreeMap<String, i64>,
    pub outbox_pending: i64,
    pub due_backlog: i64,
    /// Holdouts, variants and the return on relationship (SPEC §8).
    pub experiments: crate::experiments::Report,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SequenceFigures {
    pub name: String,
    /// Journeys started (`enter` lines).
    pub entered: i64,
    pub in_flight: i64,
    pub completed: i64,
    pub exited: i64,
    /// Goal conversions (`goal` lines) and their share of `entered`.
    pub goals: i64,
    pub conversion_rate: Option<f64>,
    /// Customers who went through the sequence, and the share of them with 2+ orders.
    pub customers: i64,
    pub repeat_purchase_rate: Option<f64>,
    /// The same share among customers who never entered it.
    pub repeat_purchase_rate_others: Option<f64>,
    pub steps: Vec<StepFigures>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StepFigures {
    pub id: String,
    /// `email` decisions: the engine chose to send.
    pub emailed: i64,
    /// Accepted by the transport (`sent`), or recorded by a dry run (`dry_run`).
    pub sent: i64,
    pub dry_run: i64,
    pub pending: i64,
    /// Not sent, by reason: at decision time (unsubscribed, bounced, backfill, …) or at send
    /// time (an unsubscribe since it was queued).
    pub suppressed: BTreeMap<String, i64>,
    pub skipped: i64,
    pub deferred: i64,
    pub failed: i64,
    pub bounced: i64,
    /// Journeys on this step now.
    pub in_flight: i64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Nps {
    /// The window, as configured (`90d`).
    pub window: String,
    pub responses: i64,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
    /// -100..100; absent without answers.
    pub score: Option<f64>,
}

/// The last report, shared by the figures thread (writer) and the HTTP handlers.
pub type Shared = Arc<RwLock<Arc<Report>>>;

fn rate(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Builds the report: sequences and steps in the catalog's order (then any only the store
/// knows, e.g. a sequence since deleted), so a funnel reads top to bottom.
pub fn report(f: &StoreFigures, catalog: &Catalog, now: DateTime<Utc>, nps_window: &str) -> Report {
    let mut seqs = from_catalog(catalog);
    count_decisions(&mut seqs, &f.decisions);
    count_emails(&mut seqs, &f.emails);
    count_in_flight(&mut seqs, &f.journeys);
    rates(&mut seqs, &f.entered, f.customers);
    let (all, all_repeat) = f.customers;
    Report {
        computed_at: Some(now),
        sequences: seqs,
        nps: nps(&f.feedback, nps_window),
        customers: all,
        repeat_purchase_rate: rate(all_repeat, all),
        dead_letters: f.dead_letters.iter().map(|(_, _, n)| n).sum(),
        dead_letters_pending: f
            .dead_letters
            .iter()
            .filter(|(_, state, _)| state == "pending")
            .map(|(_, _, n)| n)
            .sum(),
        dead_letter_classes: by_class(&f.dead_letters),
        outbox_pending: f.outbox_pending,
        due_backlog: f.due_backlog,
        experiments: experiments(&f.experiments, catalog, now),
    }
}

/// The experiments' figures of the stored customers: the same tally as `simulate --report`.
pub fn experiments(
    stored: &[crate::store::ExperimentState],
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> crate::experiments::Report {
    let mut tally = crate::experiments::Tally::default();
    for (id, experiments, relationship) in stored {
        let (experiments, relationship) =
            crate::store::record::experiment_parts(experiments.as_deref(), relationship.as_deref());
        tally.add_customer(&experiments, relationship.as_ref(), id, catalog, now);
    }
    tally.report(catalog, now, None)
}

/// Every sequence of the catalog and its steps, in order, with nothing counted yet.
fn from_catalog(catalog: &Catalog) -> Vec<SequenceFigures> {
    catalog
        .sequences()
        .iter()
        .map(|s| SequenceFigures {
            name: s.name.to_string(),
            steps: s
                .steps
                .iter()
                .map(|st| StepFigures {
                    id: st.id.to_string(),
                    ..StepFigures::default()
                })
                .collect(),
            ..SequenceFigures::default()
        })
        .collect()
}

/// The figures of the sequence named, added at the end if the catalog has no such sequence.
fn seq<'a>(seqs: &'a mut Vec<SequenceFigures>, name: &str) -> &'a mut SequenceFigures {
    let i = match seqs.iter().position(|s| s.name == name) {
        Some(i) => i,
        None => {
            seqs.push(SequenceFigures {
                name: name.into(),
                ..SequenceFigures::default()
            });
            seqs.len() - 1
        }
    };
    &mut seqs[i]
}

/// The figures of the step, added at the end if the sequence has no such step.
fn step<'a>(s: &'a mut SequenceFigures, id: &str) -> &'a mut StepFigures {
    let i = match s.steps.iter().position(|st| st.id == id) {
        Some(i) => i,
        None => {
            s.steps.push(StepFigures {
                id: id.into(),
                ..StepFigures::default()
            });
            s.steps.len() - 1
        }
    };
    &mut s.steps[i]
}

/// Counts the timeline's journey lines: per sequence (enter, goal, complete, exit) and per
/// step (email, skip, defer, and decision-time suppressions by reason class).
fn count_decisions(
    seqs: &mut Vec<SequenceFigures>,
    decisions: &[(String, String, String, String, i64)],
) {
    for (sequence, step_id, action, reason, n) in decisions {
        let s = seq(seqs, sequence);
        match action.as_str() {
            "enter" => s.entered += n,
            "goal" => s.goals += n,
            "complete" => s.completed += n,
            "exit" => s.exited += n,
            _ if step_id.is_empty() => {}
            "email" => step(s, step_id).emailed += n,
            "skip" => step(s, step_id).skipped += n,
            "defer" => step(s, step_id).deferred += n,
            // Decision-time suppressions; send-time ones are counted from the outbox.
            "suppress" => {
                *step(s, step_id)
                    .suppressed
                    .entry(reason_class(reason).to_string())
                    .or_default() += n
            }
            _ => {}
        }
    }
}

/// Counts the outbox rows of each step by status; send-time suppressions count as
/// suppressed "at send time".
fn count_emails(seqs: &mut Vec<SequenceFigures>, emails: &[(String, String, String, i64)]) {
    for (sequence, step_id, status, n) in emails {
        let st = step(seq(seqs, sequence), step_id);
        match status.as_str() {
            "sent" => st.sent += n,
            "dry-run" => st.dry_run += n,
            "pending" => st.pending += n,
            "failed" => st.failed += n,
            "bounced" => st.bounced += n,
            "suppressed" => *st.suppressed.entry("at send time".into()).or_default() += n,
            _ => {}
        }
    }
}

/// Counts the journeys in flight, per sequence and per step.
fn count_in_flight(seqs: &mut Vec<SequenceFigures>, journeys: &[JourneyCount]) {
    for j in journeys {
        let s = seq(seqs, &j.sequence);
        s.in_flight += j.count as i64;
        step(s, &j.step).in_flight += j.count as i64;
    }
}

/// Each sequence's conversion rate, and its repeat-purchase rate against that of the
/// customers who did not enter it (all customers, for a sequence nobody entered).
/// `customers` is (all, those with two or more orders); `entered` the same per sequence.
fn rates(seqs: &mut Vec<SequenceFigures>, entered: &[(String, i64, i64)], customers: (i64, i64)) {
    let (all, all_repeat) = customers;
    for (sequence, customers, repeat) in entered {
        let s = seq(seqs, sequence);
        s.customers = *customers;
        s.repeat_purchase_rate = rate(*repeat, *customers);
        s.repeat_purchase_rate_others = rate(all_repeat - repeat, all - customers);
    }
    for s in seqs {
        s.conversion_rate = rate(s.goals, s.entered);
        if s.customers == 0 {
            s.repeat_purchase_rate_others = rate(all_repeat, all);
        }
    }
}

/// Dead letters per reason class, whatever their state.
fn by_class(dead_letters: &[(String, String, i64)]) -> BTreeMap<String, i64> {
    dead_letters
        .iter()
        .fold(BTreeMap::new(), |mut m, (c, _, n)| {
            *m.entry(c.clone()).or_default() += n;
            m
        })
}

/// NPS from `feedback` lines (`nps 9`); CSAT answers and malformed lines are left out.
fn nps(feedback: &[(String, i64)], window: &str) -> Nps {
    let mut out = Nps {
        window: window.into(),
        ..Nps::default()
    };
    for (line, n) in feedback {
        let Some(score) = line
            .strip_prefix("nps ")
            .and_then(|s| s.parse::<f64>().ok())
        else {
            continue;
        };
        out.responses += n;
        if score >= 9.0 {
            out.promoters += n;
        } else if score <= 6.0 {
            out.detractors += n;
        } else {
            out.passives += n;
        }
    }
    out.score = (out.responses > 0)
        .then(|| 100.0 * (out.promoters - out.detractors) as f64 / out.responses as f64);
    out
}

/// Sets the store-backed gauges from a report and the journey counts.
pub fn export(
    m: &Metrics,
    r: &Report,
    journeys: &[JourneyCount],
    dead_letters: &[(String, String, i64)],
) {
    export_journeys(m, journeys);
    m.outbox_pending.set(r.outbox_pending);
    export_dead_letters(m, dead_letters);
    m.due_backlog.set(r.due_backlog);
    m.figures.clear();
    m.conversion_rate.clear();
    m.repeat_purchase_rate.clear();
    for s in &r.sequences {
        export_counts(m, s);
        export_rates(m, s);
    }
    m.nps.set(r.nps.score.unwrap_or(0.0));
    m.nps_responses.set(r.nps.responses);
    export_experiments(m, &r.experiments);
}

/// The experiments' figures, those they have.
fn export_experiments(m: &Metrics, r: &crate::experiments::Report) {
    m.experiments.clear();
    for x in &r.experiments {
        for f in &x.measures {
            let set = |group: &'static str, figure: &'static str, value: Option<f64>| {
                let Some(value) = value else { return };
                m.experiments
                    .get_or_create(&ExperimentLabels {
                        sequence: x.sequence.clone(),
                        measure: f.name.clone(),
                        group,
                        figure,
                    })
                    .set(value);
            };
            for (group, g) in [("treated", &f.treated), ("held_out", &f.held_out)] {
                set(group, "customers", Some(g.customers as f64));
                set(group, "converted", Some(g.converted as f64));
                set(group, "rate", g.rate);
            }
            set("", "uplift", f.uplift);
            set("", "uplift_low", f.interval.map(|i| i[0]));
            set("", "uplift_high", f.interval.map(|i| i[1]));
            set("", "p_value", f.p_value);
            set("", "open", Some(f.open as f64));
        }
    }
    let ror = r.return_on_relationship.rate;
    m.return_on_relationship.set(ror.unwrap_or(0.0));
}

/// Journeys in flight per sequence, step and status, the versions summed; a step no journey
/// is on any more has no gauge.
fn export_journeys(m: &Metrics, journeys: &[JourneyCount]) {
    m.journeys.clear();
    let mut by_step: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for j in journeys {
        *by_step
            .entry((&j.sequence, &j.step, &j.status))
            .or_default() += j.count as i64;
    }
    for ((sequence, step, status), n) in by_step {
        m.journeys
            .get_or_create(&JourneyLabels {
                sequence: sequence.into(),
                step: step.into(),
                status: status.into(),
            })
            .set(n);
    }
}

/// Dead letters in the store per reason class and state.
fn export_dead_letters(m: &Metrics, dead_letters: &[(String, String, i64)]) {
    m.dead_letters_stored.clear();
    for (class, state, n) in dead_letters {
        m.dead_letters_stored
            .get_or_create(&DeadLetterLabels {
                class: class.clone(),
                state: state.clone(),
            })
            .set(*n);
    }
}

/// A sequence's counts: its own (entered, goals, completed, exited) and each step's.
fn export_counts(m: &Metrics, s: &SequenceFigures) {
    let figure = |step: &str, figure: &str, n: i64| {
        m.figures
            .get_or_create(&FigureLabels {
                sequence: s.name.clone(),
                step: step.into(),
                figure: figure.into(),
            })
            .set(n);
    };
    figure("", "entered", s.entered);
    figure("", "goals", s.goals);
    figure("", "completed", s.completed);
    figure("", "exited", s.exited);
    for st in &s.steps {
        figure(&st.id, "emailed", st.emailed);
        figure(&st.id, "sent", st.sent);
        figure(&st.id, "skipped", st.skipped);
        figure(&st.id, "deferred", st.deferred);
        figure(&st.id, "failed", st.failed);
        figure(&st.id, "bounced", st.bounced);
        for (reason, n) in &st.suppressed {
            figure(&st.id, &format!("suppressed: {reason}"), *n);
        }
    }
}

/// A sequence's conversion rate and repeat-purchase rates, those it has.
fn export_rates(m: &Metrics, s: &SequenceFigures) {
    let label = SequenceLabels {
        sequence: s.name.clone(),
    };
    if let Some(c) = s.conversion_rate {
        m.conversion_rate.get_or_create(&label).set(c);
    }
    for (group, rate) in [
        ("entered", s.repeat_purchase_rate),
        ("not_entered", s.repeat_purchase_rate_others),
    ] {
        if let Some(rate) = rate {
            m.repeat_purchase_rate
                .get_or_create(&GroupLabels {
                    sequence: s.name.clone(),
                    group,
                })
                .set(rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nps_is_promoters_minus_detractors_in_percent() {
        let lines = vec![
            ("nps 10".to_string(), 3),
            ("nps 9".to_string(), 2),
            ("nps 8".to_string(), 1),
            ("nps 7".to_string(), 1),
            ("nps 6".to_string(), 2),
            ("nps 0".to_string(), 1),
            ("csat 5".to_string(), 4),
        ];
        let n = nps(&lines, "30d");
        assert_eq!(
            (n.responses, n.promoters, n.passives, n.detractors),
            (10, 5, 2, 3)
        );
        assert_eq!(n.score, Some(20.0));
        assert_eq!(nps(&[], "30d").score, None);
    }
}
