//! How a send ended, as the outcome to record: a retry with backoff (inside the step's send
//! window), a bounce, a give-up.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::config;
use crate::engine::{Engine, Profile};
use crate::mail::transport::{Failure, SendError};
use crate::sequence::Sequence;
use crate::store::{Delivery, OutboxRow};

/// Turns a send's result into the outcome to record (in the sending task).
pub(super) struct Outcome {
    pub(super) settings: config::Delivery,
    pub(super) engine: Arc<Engine>,
    pub(super) clock: Arc<dyn Clock>,
    /// The email's sequence at its journey's version, when known.
    pub(super) sequence: Option<Arc<Sequence>>,
}

impl Outcome {
    /// `sent` is what the row is recorded as sent under (its Message-ID, its webhook-id);
    /// `address`, where an email went (a webhook post has none, and bounces nothing).
    pub(super) fn of(
        &self,
        row: &OutboxRow,
        sent: &str,
        address: Option<&str>,
        profile: &Arc<Profile>,
        result: Result<(), SendError>,
    ) -> Delivery {
        match result {
            Ok(()) => Delivery::Sent {
                message_id: sent.to_string(),
            },
            Err(e) => match (e.failure, address) {
                (Failure::Permanent, Some(address)) => Delivery::Bounced {
                    error: e.message,
                    address: address.to_string(),
                },
                (Failure::Permanent, None) => Delivery::Failed {
                    error: format!("refused: {}", e.message),
                },
                (Failure::Refused, _) => Delivery::Failed {
                    error: format!("refused: {}", e.message),
                },
                (Failure::Transient | Failure::Ambiguous, _) => self.retry(row, profile, e),
            },
        }
    }

    /// A failure that may pass: tried again after a backoff with jitter, moved into the
    /// step's send window, unless that falls past `mail.retry.give_up_after`.
    fn retry(&self, row: &OutboxRow, profile: &Arc<Profile>, e: SendError) -> Delivery {
        let now = self.clock.now();
        let attempts = row.attempts + 1;
        let give_up = chrono::Duration::from_std(self.settings.give_up_after)
            .unwrap_or(chrono::Duration::days(5));
        let wait = backoff(
            &self.settings,
            attempts,
            jitter_seed(&row.key, attempts, now),
        );
        let mut at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
        if let Some(slot) = self.window_slot(row, profile, at) {
            at = slot;
        }
        if at > row.created_at + give_up {
            return Delivery::Failed {
                error: format!(
                    "gave up after {attempts} attempts over {}: {}",
                    crate::time::Period(give_up),
                    e.message
                ),
            };
        }
        let error = match e.failure {
            Failure::Ambiguous => format!("ambiguous: {}", e.message),
            _ => e.message,
        };
        Delivery::Retry { error, at }
    }

    /// The retry moved into the step's send window (and out of quiet hours for marketing).
    fn window_slot(
        &self,
        row: &OutboxRow,
        profile: &Arc<Profile>,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let seq = self.sequence.as_ref()?;
        let step = seq.step_index(&row.step)?;
        self.engine.send_slot(profile, seq, step, at)
    }
}

/// The wait before attempt `attempts + 1`: `first`, doubled each time, at most `max`, with
/// ±20% jitter so a relay that comes back is not hit by every email at once.
pub fn backoff(s: &config::Delivery, attempts: u32, seed: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let base = s
        .retry_first
        .saturating_mul(1u32 << doublings.min(20))
        .min(s.retry_max);
    let jitter = 0.8 + 0.4 * ((seed % 10_000) as f64 / 10_000.0);
    base.mul_f64(jitter).min(s.retry_max)
}

fn jitter_seed(key: &str, attempts: u32, now: DateTime<Utc>) -> u64 {
    let mut h = DefaultHasher::new();
    (key, attempts, now.timestamp_subsec_nanos()).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Policy;
    use crate::mail::Outgoing;

    fn settings() -> config::Delivery {
        crate::config::Config::default().delivery().unwrap()
    }

    #[test]
    fn backoff_doubles_from_first_up_to_max_with_jitter_within_a_fifth() {
        let s = settings(); // 5m first, 1h max
        let mins = |attempts, seed| backoff(&s, attempts, seed).as_secs_f64() / 60.0;
        for seed in [0, 4_999, 9_999, 123_456_789] {
            let first = mins(1, seed);
            assert!((4.0..=6.0).contains(&first), "{first}");
            let second = mins(2, seed);
            assert!((8.0..=12.0).contains(&second), "{second}");
            // 5m * 2^4 = 80m, capped at 60m, then jitter; never above max.
            let fifth = mins(5, seed);
            assert!((48.0..=60.0).contains(&fifth), "{fifth}");
            assert!(mins(40, seed) <= 60.0);
        }
        // The jitter spreads retries: different seeds, different waits.
        assert_ne!(backoff(&s, 1, 1), backoff(&s, 1, 7_777));
    }

    fn mail() -> Outgoing {
        Outgoing {
            key: "j:s".into(),
            message_id: "<j.s@example.com>".into(),
            envelope: lettre::address::Envelope::new(None, vec!["a@example.com".parse().unwrap()])
                .unwrap(),
            bytes: Vec::new(),
        }
    }

    fn row(created_at: DateTime<Utc>, attempts: u32) -> OutboxRow {
        OutboxRow {
            key: "j:s".into(),
            customer: "c1".into(),
            journey: "j".into(),
            sequence: "unknown".into(),
            version: "v".into(),
            step: "s".into(),
            order_id: None,
            template: "t".into(),
            endpoint: None,
            category: "review".into(),
            transactional: false,
            created_at,
            attempts,
            claim: 1,
            claimed_until: created_at,
            trace: None,
        }
    }

    #[test]
    fn failures_become_retries_bounces_or_give_ups() {
        let empty = std::env::temp_dir().join(format!("aftercare-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let (catalog, _) = crate::sequence::Catalog::load(&empty).unwrap();
        let catalog = Arc::new(catalog);
        let now: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let outcome = Outcome {
            settings: settings(),
            engine: Arc::new(Engine::new(catalog, Policy::default())),
            clock: Arc::new(crate::clock::ManualClock::new(now)),
            sequence: None,
        };
        let mail = mail();
        let profile = Arc::new(Profile::default());
        let err = |failure, message: &str| {
            Err(SendError {
                failure,
                code: None,
                message: message.into(),
            })
        };
        match outcome.of(
            &row(now, 0),
            &mail.message_id,
            Some("a@example.com"),
            &profile,
            err(Failure::Transient, "451 later"),
        ) {
            Delivery::Retry { error, at } => {
                assert_eq!(error, "451 later");
                assert!(
                    at >= now + chrono::Duration::minutes(4)
                        && at <= now + chrono::Duration::minutes(7)
                );
            }
            d => panic!("{d:?}"),
        }
        // An expired deadline may have been accepted: retried, and said so.
        match outcome.of(
            &row(now, 0),
            &mail.message_id,
            Some("a@example.com"),
            &profile,
            err(Failure::Ambiguous, "no answer"),
        ) {
            Delivery::Retry { error, .. } => assert_eq!(error, "ambiguous: no answer"),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            outcome.of(
                &row(now, 0),
                &mail.message_id,
                Some("a@example.com"),
                &profile,
                err(Failure::Permanent, "550 no such user")
            ),
            Delivery::Bounced {
                error: "550 no such user".into(),
                address: "a@example.com".into()
            }
        );
        // Still failing five days after it was queued: given up.
        let old = now - chrono::Duration::days(5);
        assert_eq!(
            outcome.of(
                &row(old, 40),
                &mail.message_id,
                Some("a@example.com"),
                &profile,
                err(Failure::Transient, "421 busy")
            ),
            Delivery::Failed {
                error: "gave up after 41 attempts over 5d: 421 busy".into()
            }
        );
    }

    #[test]
    fn a_retry_waits_for_the_steps_send_window_in_the_customers_timezone() {
        let dir = std::env::temp_dir().join(format!("aftercare-window-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates/t")).unwrap();
        std::fs::write(
            dir.join("w.yaml"),
            "name: w\ncategory: news\ntrigger: { event: order.placed }\nsteps:\n  - id: s\n    send_window: \"0 9 * * *\"\n    email: { template: t/a }\n",
        )
        .unwrap();
        std::fs::write(dir.join("templates/t/a.subject.j2"), "A").unwrap();
        std::fs::write(dir.join("templates/t/a.html.j2"), "<p>a</p>").unwrap();
        let (catalog, diags) = crate::sequence::Catalog::load(&dir).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let sequence = catalog.get("w").unwrap().clone();
        let version = sequence.version.to_string();
        // 19:00 in Seoul.
        let now: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let outcome = Outcome {
            settings: crate::config::Config::default().delivery().unwrap(),
            engine: Arc::new(Engine::new(Arc::new(catalog), Policy::default())),
            clock: Arc::new(crate::clock::ManualClock::new(now)),
            sequence: Some(sequence),
        };
        let row = OutboxRow {
            sequence: "w".into(),
            version,
            template: "t/a".into(),
            category: "news".into(),
            ..row(now, 0)
        };
        let mail = mail();
        let profile = Profile {
            timezone: Some(chrono_tz::Asia::Seoul),
            ..Default::default()
        };
        let failed = Err(SendError {
            failure: Failure::Transient,
            code: Some(451),
            message: "451 later".into(),
        });
        let Delivery::Retry { at, .. } = outcome.of(
            &row,
            &mail.message_id,
            Some("a@example.com"),
            &Arc::new(profile),
            failed,
        ) else {
            panic!("not a retry");
        };
        // 09:00 in Seoul, the first one after the backoff (about 5 minutes from 19:00).
        assert_eq!(at, "2026-03-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
