//! Prometheus metrics of `run`, served at `GET /metrics` (text exposition format).
//!
//! Counters and histograms move as the service works; the gauges that need the store
//! (journeys, outbox depth, due backlog, retention figures) are set by the figures thread
//! every `http.figures_refresh`. No label carries a customer id or an address: labels are
//! event types, sequence and step names, actions and reason classes, all bounded by the
//! sequence files.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{Action, Decision};
use crate::event::{Event, EventData};
use crate::store::{Delivery, OutboxRow};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub r#type: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub sequence: String,
    pub step: String,
    pub action: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub sequence: String,
    pub step: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JourneyLabels {
    pub sequence: String,
    pub step: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SequenceLabels {
    pub sequence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FigureLabels {
    pub sequence: String,
    pub step: String,
    pub figure: String,
}

/// An experiment's figure: `figure` is `customers`, `converted`, `rate` (per `group`:
/// `treated`, `held_out`), or `uplift`, `uplift_low`, `uplift_high`, `p_value`, `open`
/// (group ``).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabels {
    pub sequence: String,
    pub measure: String,
    pub group: &'static str,
    pub figure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub sequence: String,
    pub group: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub class: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: &'static str,
}

type Ratio = Gauge<f64, AtomicU64>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub emails: Family<StepLabels, Counter>,
    pub send_seconds: Histogram,
    pub event_to_send_seconds: Histogram,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub journeys: Family<JourneyLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub due_backlog: Gauge,
    pub wake_lateness_seconds: Histogram,
    pub batches: Counter,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub sequences_loaded: Gauge,
    pub figures: Family<FigureLabels, Gauge>,
    pub conversion_rate: Family<SequenceLabels, Ratio>,
    pub experiments: Family<ExperimentLabels, Ratio>,
    pub return_on_relationship: Ratio,
    pub repeat_purchase_rate: Family<GroupLabels, Ratio>,
    pub nps: Ratio,
    pub nps_responses: Gauge,
    pub dead_letters: Family<ClassLabels, Counter>,
    pub dead_letters_stored: Family<DeadLetterLabels, Gauge>,
    pub dead_letters_published: Family<OutcomeLabels, Counter>,
    pub unavailable: Family<ComponentLabels, Gauge>,
    pub transient_errors: Family<ComponentLabels, Counter>,
    pub templates_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics::unregistered();
        // The exposition lists metrics in the order they are registered.
        let mut registry = Registry::with_prefix("aftercare");
        metrics.register_flow(&mut registry);
        metrics.register_sending(&mut registry);
        metrics.register_backlog(&mut registry);
        metrics.register_loops(&mut registry);
        metrics.register_retention(&mut registry);
        metrics.register_dead_letters(&mut registry);
        metrics.register_health(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Every metric at zero, in an empty registry: the `register_*` functions register them.
    fn unregistered() -> Metrics {
        Metrics {
            registry: Registry::default(),
            events: Family::default(),
            decisions: Family::default(),
            emails: Family::default(),
            // 1 ms .. ~33 s
            send_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 10 ms .. ~5.8 days
            event_to_send_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 16)),
            consumer_lag: Family::default(),
            journeys: Family::default(),
            outbox_pending: Gauge::default(),
            due_backlog: Gauge::default(),
            // 1 ms .. ~65 s
            wake_lateness_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            batches: Counter::default(),
            reloads: Family::default(),
            sequences_loaded: Gauge::default(),
            figures: Family::default(),
            conversion_rate: Family::default(),
            experiments: Family::default(),
            return_on_relationship: Ratio::default(),
            repeat_purchase_rate: Family::default(),
            nps: Ratio::default(),
            nps_responses: Gauge::default(),
            dead_letters: Family::default(),
            dead_letters_stored: Family::default(),
            dead_letters_published: Family::default(),
            unavailable: Family::default(),
            transient_errors: Family::default(),
            templates_failed: Counter::default(),
        }
    }

    /// Registers what the events did: the events consumed, the decisions they led to, and
    /// the emails by outcome.
    fn register_flow(&self, r: &mut Registry) {
        r.register(
            "events",
            "Events consumed, by type and outcome (applied, duplicate, dead_lettered)",
            self.events.clone(),
        );
        r.register(
            "decisions",
            "Engine decisions, by sequence, step, action and reason class",
            self.decisions.clone(),
        );
        r.register(
            "emails",
            "Emails by sequence, step and outcome (queued, sent, dry_run, suppressed, deferred, retried, failed, bounced)",
            self.emails.clone(),
        );
    }

    /// Registers how long sending takes: the transport's part, and the whole way from the
    /// decision.
    fn register_sending(&self, r: &mut Registry) {
        r.register(
            "send_duration_seconds",
            "Time the transport took to accept an email (SMTP conversation or file write)",
            self.send_seconds.clone(),
        );
        r.register(
            "event_to_send_seconds",
            "From the decision that queued an email to its acceptance by the transport",
            self.event_to_send_seconds.clone(),
        );
    }

    /// Registers the work waiting: behind Kafka, in journeys, in the outbox and due now.
    fn register_backlog(&self, r: &mut Registry) {
        r.register(
            "consumer_lag",
            "Messages behind the end of each assigned partition (librdkafka statistics)",
            self.consumer_lag.clone(),
        );
        r.register(
            "journeys",
            "Journeys in flight, by sequence, step and status",
            self.journeys.clone(),
        );
        r.register(
            "outbox_pending",
            "Emails waiting to be sent (outbox depth)",
            self.outbox_pending.clone(),
        );
        r.register(
            "due_backlog",
            "Customers whose next step is due now and not yet run",
            self.due_backlog.clone(),
        );
    }

    /// Registers how the service's loops go: wake-ups against their due time, the batches
    /// applied, the reloads of the sequences and what they loaded.
    fn register_loops(&self, r: &mut Registry) {
        r.register(
            "wake_lateness_seconds",
            "How late a due customer was woken, against its due time",
            self.wake_lateness_seconds.clone(),
        );
        r.register(
            "batches",
            "Store transactions applying Kafka batches",
            self.batches.clone(),
        );
        r.register(
            "sequence_reloads",
            "Hot reloads of the sequences folder, by outcome (applied, refused)",
            self.reloads.clone(),
        );
        r.register(
            "sequences_loaded",
            "Sequences in the catalog new journeys start on",
            self.sequences_loaded.clone(),
        );
    }

    /// Registers the retention figures the figures thread sets: per step, goal conversions,
    /// repeat purchases and NPS.
    fn register_retention(&self, r: &mut Registry) {
        r.register(
            "retention",
            "Retention figures per sequence and step (entered, emailed, sent, suppressed, skipped, goals, ...)",
            self.figures.clone(),
        );
        r.register(
            "goal_conversion_rate",
            "Goal conversions per journey entered, by sequence",
            self.conversion_rate.clone(),
        );
        r.register(
            "repeat_purchase_rate",
            "Share of customers with two or more orders, among those who went through a sequence (group=entered) and those who did not (group=not_entered)",
            self.repeat_purchase_rate.clone(),
        );
        r.register(
            "nps",
            "Net Promoter Score over http.nps_window: % promoters (9-10) minus % detractors (0-6)",
            self.nps.clone(),
        );
        r.register(
            "nps_responses",
            "NPS answers in the window",
            self.nps_responses.clone(),
        );
        r.register(
            "experiment",
            "Holdout experiments per sequence and measure, intention to treat, closed windows only: customers, converted and rate per group (treated, held_out); uplift, its 95% interval (uplift_low, uplift_high), p_value and windows still open",
            self.experiments.clone(),
        );
        r.register(
            "return_on_relationship",
            "Of the customers helped in the last 12 months, the share who ordered again or referred someone",
            self.return_on_relationship.clone(),
        );
    }

    /// Registers the dead letters: those of this instance, those stored, their publishing.
    fn register_dead_letters(&self, r: &mut Registry) {
        r.register(
            "dead_letters",
            "Messages dead-lettered by this instance, by reason class",
            self.dead_letters.clone(),
        );
        r.register(
            "dead_letters_stored",
            "Dead letters in the store, by reason class and state (pending, published, truncated, refused)",
            self.dead_letters_stored.clone(),
        );
        r.register(
            "dead_letters_published",
            "Dead-letter publish attempts by outcome (whole, truncated, retry, refused)",
            self.dead_letters_published.clone(),
        );
    }

    /// Registers what went wrong and was survived: components unavailable, transient errors,
    /// renders over the template budget.
    fn register_health(&self, r: &mut Registry) {
        r.register(
            "unavailable",
            "1 while a component cannot do its work and retries (the reason is at /readyz), else 0",
            self.unavailable.clone(),
        );
        r.register(
            "transient_errors",
            "Transient errors met (and retried), by component",
            self.transient_errors.clone(),
        );
        r.register(
            "template_budget_exceeded",
            "Renders stopped by the template budget (fuel or recursion)",
            self.templates_failed.clone(),
        );
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn event(&self, kind: &'static str, outcome: &'static str, n: u64) {
        if n > 0 {
            self.events
                .get_or_create(&EventLabels {
                    r#type: kind,
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// Counts a batch's events by type: `applied`, `duplicate` or `dead_lettered` (an
    /// unreadable customer's).
    pub fn events_applied(
        &self,
        events: &[std::sync::Arc<Event>],
        outcomes: &[crate::service::apply::Outcome],
    ) {
        use crate::service::apply::Outcome;
        let mut counts: HashMap<(&'static str, &'static str), u64> = HashMap::new();
        for (e, o) in events.iter().zip(outcomes) {
            let outcome = match o {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
                Outcome::Rejected(_) => "dead_lettered",
            };
            *counts.entry((event_type(e), outcome)).or_default() += 1;
        }
        for ((kind, outcome), n) in counts {
            self.event(kind, outcome, n);
        }
    }

    /// Counts decisions (aggregated first: a batch has thousands, over a few label sets).
    pub fn decided(&self, decisions: &[Decision]) {
        let mut counts: HashMap<(&str, &str, Action, &str), u64> = HashMap::new();
        for d in decisions {
            let step = d.step.as_deref().unwrap_or("");
            *counts
                .entry((&d.sequence, step, d.action, reason_class(&d.reason)))
                .or_default() += 1;
        }
        for ((sequence, step, action, reason), n) in counts {
            self.decisions
                .get_or_create(&DecisionLabels {
                    sequence: sequence.into(),
                    step: step.into(),
                    action: action.as_str(),
                    reason: reason.into(),
                })
                .inc_by(n);
            let outcome = match action {
                Action::Email | Action::Webhook => "queued",
                Action::Suppress => "suppressed",
                Action::Defer => "deferred",
                _ => continue,
            };
            self.email(sequence, step, outcome, n);
        }
    }

    fn email(&self, sequence: &str, step: &str, outcome: &'static str, n: u64) {
        self.emails
            .get_or_create(&StepLabels {
                sequence: sequence.into(),
                step: step.into(),
                outcome,
            })
            .inc_by(n);
    }

    /// Counts how send attempts ended.
    pub fn delivered(&self, done: &[(OutboxRow, Delivery)], now: chrono::DateTime<chrono::Utc>) {
        for (row, d) in done {
            let outcome = match d {
                Delivery::Sent { .. } => "sent",
                Delivery::DryRun { .. } => "dry_run",
                Delivery::Retry { .. } => "retried",
                Delivery::Failed { .. } => "failed",
                Delivery::Bounced { .. } => "bounced",
                Delivery::Suppressed { .. } => "suppressed",
            };
            self.email(&row.sequence, &row.step, outcome, 1);
            if matches!(d, Delivery::Sent { .. } | Delivery::DryRun { .. }) {
                let waited = (now - row.created_at).num_microseconds().unwrap_or(0);
                self.event_to_send_seconds
                    .observe(waited.max(0) as f64 / 1e6);
            }
        }
    }
}

/// The `type` label of an event: its CloudEvents type when aftercare knows it, else `other`
/// (label values must stay bounded whatever producers send).
pub fn event_type(e: &Event) -> &'static str {
    match &e.data {
        EventData::OrderPlaced(_) => "order.placed",
        EventData::OrderShipped(_) => "order.shipped",
        EventData::OrderDelivered { .. } => "order.delivered",
        EventData::OrderCancelled { .. } => "order.cancelled",
        EventData::OrderRefunded { .. } => "order.refunded",
        EventData::TicketOpened { .. } => "ticket.opened",
        EventData::TicketResolved { .. } => "ticket.resolved",
        EventData::FeedbackSubmitted { .. } => "feedback.submitted",
        EventData::ReviewSubmitted { .. } => "review.submitted",
        EventData::CustomerUpdated => "customer.updated",
        EventData::CustomerErased => "customer.erased",
        EventData::CustomerUnsubscribed { .. } => "customer.unsubscribed",
        EventData::CustomerSubscribed { .. } => "customer.subscribed",
        EventData::Other(_) => "other",
    }
}

/// A decision's reason without its particulars: the leading words up to the first one that
/// carries a value (a number, a time, a quoted window). "wait 1d elapsed" → "wait",
/// "send_window \"Mon-Fri 09-17\" (UTC): until …" → "send_window", "exit_on order.refunded"
/// → "exit_on order.refunded". Bounded by the sequence files, so fit for a label.
pub fn reason_class(reason: &str) -> &str {
    let (mut start, mut end) = (0, 0);
    for (i, word) in reason.split(' ').enumerate() {
        let particular = word.is_empty()
            || word
                .bytes()
                .any(|b| b.is_ascii_digit() || matches!(b, b'"' | b'(' | b':' | b',' | b'\''));
        if i == 4 || particular {
            break;
        }
        end = start + word.len();
        start = end + 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::reason_class;

    #[test]
    fn reason_classes_drop_particulars() {
        assert_eq!(reason_class("wait 1d elapsed"), "wait");
        assert_eq!(
            reason_class("send_window \"Mon-Fri 09:00-17:00\" (UTC): until 2026-01-01T09:00:00Z"),
            "send_window"
        );
        assert_eq!(
            reason_class("exit_on order.refunded"),
            "exit_on order.refunded"
        );
        assert_eq!(reason_class("address bounced"), "address bounced");
        assert_eq!(
            reason_class("unsubscribed from marketing"),
            "unsubscribed from marketing"
        );
        assert_eq!(reason_class("min_gap 2d: until x"), "min_gap");
        assert_eq!(reason_class(""), "");
    }
}
