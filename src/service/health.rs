//! What keeps the service from doing its work right now.
//!
//! A worker that meets a transient error (the database away, the broker refusing the
//! dead-letter topic) retries with backoff and says so here; `/readyz` answers 503 with every
//! problem while one lasts, `aftercare_unavailable{component}` is 1 and
//! `aftercare_transient_errors_total{component}` counts the attempts, and each attempt logs
//! one line with `component` and `error` fields — what an alert matches on. Nothing is retried
//! without showing here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::{ComponentLabels, Metrics};

/// The parts that can be unavailable, as they are named in `/readyz`, logs and metrics.
pub mod component {
    /// Applying events: the engine's store transactions.
    pub const INGEST: &str = "ingest";
    /// Running due steps: the scheduler's store transactions.
    pub const WAKEUPS: &str = "wake-ups";
    /// Copying dead letters from the store to `kafka.dlq_topic`.
    pub const DEAD_LETTERS: &str = "dead-letters";
    /// Claiming queued emails and recording how their sends went (not the relay: a relay
    /// that is down is retried per email, see `aftercare_emails_total{outcome="retried"}`).
    pub const OUTBOX: &str = "outbox";
}

struct Problem {
    error: String,
    since: Instant,
    attempts: u64,
}

pub struct Health {
    problems: Mutex<BTreeMap<&'static str, Problem>>,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Health {
        Health {
            problems: Mutex::default(),
            metrics,
        }
    }

    /// `component` met a transient error and will retry in `retry_in`.
    pub fn failing(&self, component: &'static str, error: &str, retry_in: Duration) {
        let labels = ComponentLabels { component };
        self.metrics.transient_errors.get_or_create(&labels).inc();
        self.metrics.unavailable.get_or_create(&labels).set(1);
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        let p = problems.entry(component).or_insert_with(|| Problem {
            error: String::new(),
            since: Instant::now(),
            attempts: 0,
        });
        p.error = error.to_string();
        p.attempts += 1;
        tracing::warn!(
            component,
            error,
            attempts = p.attempts,
            failing_for_s = p.since.elapsed().as_secs(),
            retry_in_ms = retry_in.as_millis() as u64,
            "transient error; retrying"
        );
    }

    /// `component` did its work again.
    pub fn recovered(&self, component: &'static str) {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = problems.remove(component) {
            self.metrics
                .unavailable
                .get_or_create(&ComponentLabels { component })
                .set(0);
            tracing::info!(
                component,
                attempts = p.attempts,
                failed_for_s = p.since.elapsed().as_secs(),
                "recovered"
            );
        }
    }

    /// One line per problem: `ingest: postgres: 08006 … (for 12 s, 7 attempts)`.
    pub fn problems(&self) -> Vec<String> {
        let problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        problems
            .iter()
            .map(|(c, p)| {
                format!(
                    "{c}: {} (for {} s, {} attempts)",
                    p.error,
                    p.since.elapsed().as_secs(),
                    p.attempts
                )
            })
            .collect()
    }
}

/// Backoff between attempts: 100 ms, doubling, at most 5 s.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    /// The wait before the next attempt; the one after is longer.
    pub fn wait(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_shows_until_its_component_recovers() {
        let metrics = Arc::new(Metrics::default());
        let h = Health::new(metrics.clone());
        assert!(h.problems().is_empty());
        h.failing(
            component::INGEST,
            "postgres: 57P01 terminating",
            Duration::ZERO,
        );
        h.failing(
            component::INGEST,
            "postgres: connection refused",
            Duration::ZERO,
        );
        let p = h.problems();
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("ingest: postgres: connection refused (for 0 s, 2 attempts)"),
            "{p:?}"
        );
        let text = metrics.encode();
        assert!(
            text.contains("aftercare_unavailable{component=\"ingest\"} 1"),
            "{text}"
        );
        assert!(text.contains("aftercare_transient_errors_total{component=\"ingest\"} 2"));
        h.recovered(component::INGEST);
        assert!(h.problems().is_empty());
        assert!(
            metrics
                .encode()
                .contains("aftercare_unavailable{component=\"ingest\"} 0")
        );
    }

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
