//! A claimed email made ready to send: its customer, its version's templates, the rules
//! that may have changed since it was queued, rendered and composed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use minijinja::{Value, context};

use super::Worker;
use crate::engine::context::Ctx;
use crate::engine::{Order, Profile};
use crate::mail::Outgoing;
use crate::sequence::Sequence;
use crate::store::record::profile_and_orders;
use crate::store::{Delivery, OutboxRow, StoreError};

/// What preparing a row gave: a message to send, or an outcome already.
pub(super) enum Prepared {
    Send {
        mail: Outgoing,
        address: String,
        profile: Arc<Profile>,
        sequence: Option<Arc<Sequence>>,
    },
    Done(Delivery),
}

/// A row's customer as the store has it, the row's order among theirs, and the version of
/// the row's sequence (`None`: the store has it no more, and the email renders with the
/// current templates).
struct Recipient {
    profile: Profile,
    order: Option<Arc<Order>>,
    sequence: Option<Arc<Sequence>>,
}

impl Worker {
    /// Renders and composes the email, or says why it will not be sent.
    pub(super) fn prepare(&mut self, row: &OutboxRow) -> Prepared {
        let now = self.clock.now();
        let r = match self.recipient(row, now) {
            Ok(r) => r,
            Err(outcome) => return Prepared::Done(outcome),
        };
        let to = match self.address(row, &r.profile, now) {
            Ok(to) => to,
            Err(outcome) => return Prepared::Done(outcome),
        };
        let profile = Arc::new(r.profile);
        let mail = match self.mail(row, &profile, r.order.as_ref(), &to, r.sequence.as_ref()) {
            Ok(m) => m,
            Err(outcome) => return Prepared::Done(outcome),
        };
        if self.dry_run {
            return Prepared::Done(Delivery::DryRun {
                message_id: mail.message_id,
            });
        }
        Prepared::Send {
            mail,
            address: to,
            profile,
            sequence: r.sequence,
        }
    }

    /// The row's customer, its order and the version of its sequence, read from the store.
    fn recipient(&mut self, row: &OutboxRow, now: DateTime<Utc>) -> Result<Recipient, Delivery> {
        let stored = match self.store.load(&row.customer) {
            Ok(Some(s)) => s,
            Ok(None) => return Err(failed("customer not found".into())),
            Err(e) => return Err(unavailable(e, now)),
        };
        let store = &mut self.store;
        let sequence = self
            .kept
            .resolve(&self.engine.catalog, &row.sequence, &row.version, || {
                store.version(&row.sequence, &row.version)
            })
            .map_err(|e| unavailable(e, now))?;
        let (profile, orders) = profile_and_orders(&stored)
            .map_err(|e| failed(format!("stored customer unreadable: {e}")))?;
        let order = row
            .order_id
            .as_deref()
            .and_then(|id| orders.into_iter().find(|o| &*o.id == id))
            .map(Arc::new);
        Ok(Recipient {
            profile,
            order,
            sequence,
        })
    }

    /// The address to send to, if the email may still go there: the engine's rules, which may
    /// have changed since it was queued, then an address, not erased for marketing.
    fn address(
        &mut self,
        row: &OutboxRow,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Result<String, Delivery> {
        if let Err(reason) = self
            .engine
            .still_sendable(profile, &row.category, row.transactional)
        {
            return Err(Delivery::Suppressed { reason });
        }
        let Some(to) = profile.email.as_deref().map(str::to_string) else {
            return Err(failed("no email address".into()));
        };
        if !row.transactional {
            match self
                .store
                .is_erased(&self.composer.signer.address_hash(&to))
            {
                Ok(false) => {}
                Ok(true) => {
                    return Err(Delivery::Suppressed {
                        reason: "address erased: marketing resumes only when the customer subscribes again".into(),
                    });
                }
                Err(e) => return Err(unavailable(e, now)),
            }
        }
        Ok(to)
    }

    /// The email to `to`, rendered by the templates of its version (the catalog's without
    /// one) and composed; a template or composition error fails it.
    fn mail(
        &mut self,
        row: &OutboxRow,
        profile: &Arc<Profile>,
        order: Option<&Arc<Order>>,
        to: &str,
        sequence: Option<&Arc<Sequence>>,
    ) -> Result<Outgoing, Delivery> {
        let links = self.composer.links(&row.customer, &row.category);
        let mut ctx = Ctx::new(profile, None, order, None);
        ctx.journey = context! { id => &row.journey, sequence => &row.sequence, step => &row.step };
        ctx.unsubscribe_url = Value::from(links.unsubscribe_url.clone());
        ctx.preferences_url = Value::from(links.preferences_url.clone());
        let templates = sequence.map_or(&self.engine.catalog.templates, |s| &s.templates);
        let locale = profile.locale.as_deref();
        let rendered = match templates.render(&row.template, locale, &ctx.into_value()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sequence = %row.sequence, step = %row.step, template = %row.template, error = %e, "template error at send time");
                if e.over_budget {
                    self.observe.metrics.templates_failed.inc();
                }
                return Err(failed(format!("template error: {e}")));
            }
        };
        // The variant a split step gave this customer, as the engine chose it (SPEC §8).
        let variant = sequence
            .and_then(|s| Some((s, s.step_index(&row.step)?)))
            .and_then(|(s, step)| crate::engine::experiment::variant(s, step, &row.customer));
        self.composer
            .compose(
                row,
                profile.name.as_deref(),
                to,
                &rendered,
                &links,
                variant.map(|v| &*v.id),
            )
            .map_err(|e| failed(e.to_string()))
    }
}

/// Given up: this email cannot be sent.
fn failed(error: String) -> Delivery {
    Delivery::Failed { error }
}

/// The database, not the email: try again shortly rather than give the email up.
fn unavailable(e: StoreError, now: DateTime<Utc>) -> Delivery {
    Delivery::Retry {
        error: format!("store: {e}"),
        at: now + chrono::Duration::seconds(30),
    }
}
