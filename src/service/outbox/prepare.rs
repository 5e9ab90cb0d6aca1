//! A claimed email made ready to send: its customer, its version's templates, the rules
//! that may have changed since it was queued, rendered and composed.

use std::sync::Arc;

use minijinja::{Value, context};

use super::Worker;
use crate::engine::Profile;
use crate::engine::context::Ctx;
use crate::mail::Outgoing;
use crate::sequence::Sequence;
use crate::store::record::profile_and_orders;
use crate::store::{Delivery, OutboxRow};

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

impl Worker {
    /// Renders and composes the email, or says why it will not be sent.
    pub(super) fn prepare(&mut self, row: &OutboxRow) -> Prepared {
        let now = self.clock.now();
        let failed = |error: String| Prepared::Done(Delivery::Failed { error });
        // The database, not the email: try again shortly rather than give the email up.
        let unavailable = |e: crate::store::StoreError| {
            Prepared::Done(Delivery::Retry {
                error: format!("store: {e}"),
                at: now + chrono::Duration::seconds(30),
            })
        };
        let stored = match self.store.load(&row.customer) {
            Ok(Some(s)) => s,
            Ok(None) => return failed("customer not found".into()),
            Err(e) => return unavailable(e),
        };
        let store = &mut self.store;
        let sequence =
            match self
                .kept
                .resolve(&self.engine.catalog, &row.sequence, &row.version, || {
                    store.version(&row.sequence, &row.version)
                }) {
                Ok(s) => s,
                Err(e) => return unavailable(e),
            };
        let (profile, orders) = match profile_and_orders(&stored) {
            Ok(p) => p,
            Err(e) => return failed(format!("stored customer unreadable: {e}")),
        };
        // Rules that may have changed since the email was queued: the engine's.
        if let Err(reason) = self
            .engine
            .still_sendable(&profile, &row.category, row.transactional)
        {
            return Prepared::Done(Delivery::Suppressed { reason });
        }
        let Some(to) = profile.email.as_deref().map(str::to_string) else {
            return failed("no email address".into());
        };
        if !row.transactional {
            match self
                .store
                .is_erased(&self.composer.signer.address_hash(&to))
            {
                Ok(false) => {}
                Ok(true) => {
                    return Prepared::Done(Delivery::Suppressed {
                        reason: "address erased: marketing resumes only when the customer subscribes again".into(),
                    });
                }
                Err(e) => return unavailable(e),
            }
        }
        let order = row
            .order_id
            .as_deref()
            .and_then(|id| orders.into_iter().find(|o| &*o.id == id))
            .map(Arc::new);
        let locale = profile.locale.as_deref().map(str::to_string);
        let name = profile.name.as_deref().map(str::to_string);
        let profile = Arc::new(profile);
        let links = self.composer.links(&row.customer, &row.category);
        let mut ctx = Ctx::new(&profile, None, order.as_ref(), None);
        ctx.journey = context! { id => &row.journey, sequence => &row.sequence, step => &row.step };
        ctx.unsubscribe_url = Value::from(links.unsubscribe_url.clone());
        ctx.preferences_url = Value::from(links.preferences_url.clone());
        let templates = sequence
            .as_ref()
            .map_or(&self.engine.catalog.templates, |s| &s.templates);
        let rendered = match templates.render(&row.template, locale.as_deref(), &ctx.into_value()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sequence = %row.sequence, step = %row.step, template = %row.template, error = %e, "template error at send time");
                if e.over_budget {
                    self.observe.metrics.templates_failed.inc();
                }
                return failed(format!("template error: {e}"));
            }
        };
        let mail = match self
            .composer
            .compose(row, name.as_deref(), &to, &rendered, &links)
        {
            Ok(m) => m,
            Err(e) => return failed(e.to_string()),
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
            sequence,
        }
    }
}
