//! A claimed email (or webhook post) made ready to send: its customer, its version's
//! templates, the rules that may have changed since it was queued, rendered and composed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use minijinja::{Value, context};

use super::Worker;
use crate::engine::context::Ctx;
use crate::engine::{Channel, Order, Profile};
use crate::mail::Outgoing;
use crate::sequence::Sequence;
use crate::store::record::profile_and_orders;
use crate::store::{Delivery, OutboxRow, StoreError};
use crate::webhook::Post;

/// What preparing a row gave: a message to send, or an outcome already.
pub(super) enum Prepared {
    Send {
        payload: Payload,
        profile: Arc<Profile>,
        sequence: Option<Arc<Sequence>>,
    },
    Done(Delivery),
}

/// What goes out: an email to its address, or a webhook post.
pub(super) enum Payload {
    Mail { mail: Outgoing, address: String },
    Post(Post),
}

impl Payload {
    /// What the outcome records as sent: the Message-ID, or the `webhook-id`.
    pub(super) fn id(&self) -> &str {
        match self {
            Payload::Mail { mail, .. } => &mail.message_id,
            Payload::Post(post) => &post.id,
        }
    }
}

/// A row's customer as the store has it, the row's order among theirs, and the version of
/// the row's sequence (`None`: the store has it no more, and the email renders with the
/// current templates).
struct Recipient {
    profile: Arc<Profile>,
    order: Option<Arc<Order>>,
    sequence: Option<Arc<Sequence>>,
}

impl Worker {
    /// Renders and composes the email (or the webhook's body), or says why it will not be
    /// sent.
    pub(super) fn prepare(&mut self, row: &OutboxRow) -> Prepared {
        let now = self.clock.now();
        let r = match self.recipient(row, now) {
            Ok(r) => r,
            Err(outcome) => return Prepared::Done(outcome),
        };
        let payload = match self.payload(row, &r, now) {
            Ok(p) => p,
            Err(outcome) => return Prepared::Done(outcome),
        };
        if self.dry_run {
            return Prepared::Done(Delivery::DryRun {
                message_id: payload.id().to_string(),
            });
        }
        Prepared::Send {
            payload,
            profile: r.profile,
            sequence: r.sequence,
        }
    }

    /// The email to the customer's address, or the webhook post, if it may still go.
    fn payload(
        &mut self,
        row: &OutboxRow,
        r: &Recipient,
        now: DateTime<Utc>,
    ) -> Result<Payload, Delivery> {
        let Some(endpoint) = &row.endpoint else {
            let to = self.address(row, &r.profile, now)?;
            let mail = self.mail(row, &r.profile, r.order.as_ref(), &to, r.sequence.as_ref())?;
            return Ok(Payload::Mail { mail, address: to });
        };
        self.may_post(row, &r.profile, now)?;
        if !self.poster.knows(endpoint) {
            return Err(failed(format!(
                "webhook endpoint `{endpoint}` is not configured: add [webhooks.{endpoint}] to the config"
            )));
        }
        let body = self.body(row, &r.profile, r.order.as_ref(), r.sequence.as_ref())?;
        Ok(Payload::Post(Post {
            endpoint: endpoint.clone(),
            id: row.key.clone(),
            body,
        }))
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
            profile: Arc::new(profile),
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
        if let Err(reason) =
            self.engine
                .still_sendable(profile, &row.category, row.transactional, Channel::Email)
        {
            return Err(Delivery::Suppressed { reason });
        }
        let Some(to) = profile.email.as_deref().map(str::to_string) else {
            return Err(failed("no email address".into()));
        };
        self.not_erased(row, &to, now)?;
        Ok(to)
    }

    /// Whether the webhook may still be posted: the engine's rules for webhooks (no address
    /// needed), and a customer's erased address stops marketing posts as it stops emails.
    fn may_post(
        &mut self,
        row: &OutboxRow,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Result<(), Delivery> {
        if let Err(reason) =
            self.engine
                .still_sendable(profile, &row.category, row.transactional, Channel::Webhook)
        {
            return Err(Delivery::Suppressed { reason });
        }
        match profile.email.as_deref() {
            Some(to) => self.not_erased(row, to, now),
            None => Ok(()),
        }
    }

    /// Marketing to an erased address waits for the customer to subscribe again.
    fn not_erased(
        &mut self,
        row: &OutboxRow,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Delivery> {
        if row.transactional {
            return Ok(());
        }
        match self.store.is_erased(&self.composer.signer.address_hash(to)) {
            Ok(false) => Ok(()),
            Ok(true) => Err(Delivery::Suppressed {
                reason: "address erased: marketing resumes only when the customer subscribes again"
                    .into(),
            }),
            Err(e) => Err(unavailable(e, now)),
        }
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
        let ctx = self.context(row, profile, order, sequence, &links);
        let templates = sequence.map_or(&self.engine.catalog.templates, |s| &s.templates);
        let locale = profile.locale.as_deref();
        let rendered = templates
            .render(&row.template, locale, &ctx)
            .map_err(|e| self.template_failed(row, e))?;
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

    /// What a template sees at send time: the customer and order as they are now, the
    /// journey, and the customer's links.
    fn context(
        &self,
        row: &OutboxRow,
        profile: &Arc<Profile>,
        order: Option<&Arc<Order>>,
        sequence: Option<&Arc<Sequence>>,
        links: &crate::mail::Links,
    ) -> Value {
        let mut ctx = Ctx::new(profile, None, order, None);
        ctx.journey = context! { id => &row.journey, sequence => &row.sequence, step => &row.step };
        ctx.unsubscribe_url = Value::from(links.unsubscribe_url.clone());
        ctx.preferences_url = Value::from(links.preferences_url.clone());
        // The step's coupon code, derived again from the row's key: the one the decision gave.
        let step = sequence.and_then(|s| s.steps.get(s.step_index(&row.step)?));
        let code = step.and_then(|step| self.engine.coupon_for(step, &row.customer, &row.key));
        ctx.coupon = Ctx::coupon(code.as_deref());
        ctx.into_value()
    }

    /// The webhook's body, rendered by the templates of its version.
    fn body(
        &self,
        row: &OutboxRow,
        profile: &Arc<Profile>,
        order: Option<&Arc<Order>>,
        sequence: Option<&Arc<Sequence>>,
    ) -> Result<String, Delivery> {
        let links = self.composer.links(&row.customer, &row.category);
        let ctx = self.context(row, profile, order, sequence, &links);
        let templates = sequence.map_or(&self.engine.catalog.templates, |s| &s.templates);
        templates
            .render_json(&row.template, profile.locale.as_deref(), &ctx)
            .map_err(|e| self.template_failed(row, e))
    }

    /// A template that fails at send time fails its email (or post), logged and counted.
    fn template_failed(&self, row: &OutboxRow, e: crate::template::RenderError) -> Delivery {
        tracing::error!(sequence = %row.sequence, step = %row.step, template = %row.template, error = %e, "template error at send time");
        if e.over_budget {
            self.observe.metrics.templates_failed.inc();
        }
        failed(format!("template error: {e}"))
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
