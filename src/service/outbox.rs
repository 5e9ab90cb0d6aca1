//! The outbox worker: sends queued emails, rendering each when it is sent.
//!
//! A row is marked sent only after the transport accepted the message, so a crash between the
//! two re-sends at most that one email (with the same Message-ID) and never loses one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use lettre::message::Mailbox;
use minijinja::context;

use crate::engine::context::Ctx;
use crate::mail::transport::Transport;
use crate::sequence::Catalog;
use crate::store::record::profile_and_orders;
use crate::store::{Delivery, OutboxRow, Store};

pub struct Sender {
    pub store: Box<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub from: Mailbox,
    pub transport: Box<dyn Transport>,
    /// Decide and record everything, send nothing.
    pub dry_run: bool,
}

impl Sender {
    /// Sends until `stop`; idles briefly when nothing is pending.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.send_pending(100) {
                Ok(0) => std::thread::sleep(Duration::from_millis(100)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: store unavailable; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// One pass over due rows; returns how many were handled.
    pub fn send_pending(&mut self, limit: usize) -> crate::store::Result<usize> {
        let rows = self.store.pending_emails(Utc::now(), limit)?;
        for row in &rows {
            let delivery = self.deliver(row);
            if let Delivery::Failed { error } = &delivery {
                tracing::warn!(key = %row.key, sequence = %row.sequence, step = %row.step, error = %error, "email not sent");
            }
            self.store.finish_email(&row.key, Utc::now(), &delivery)?;
        }
        Ok(rows.len())
    }

    fn deliver(&mut self, row: &OutboxRow) -> Delivery {
        let failed = |error: String| Delivery::Failed { error };
        let stored = match self.store.load(&row.customer) {
            Ok(Some(s)) => s,
            Ok(None) => return failed("customer not found".into()),
            Err(e) => return failed(e.to_string()),
        };
        let (profile, orders) = match profile_and_orders(&stored) {
            Ok(p) => p,
            Err(e) => return failed(format!("stored customer unreadable: {e}")),
        };
        let Some(to) = profile.email.as_deref().map(str::to_string) else {
            return failed("no email address".into());
        };
        let order = row
            .order_id
            .as_deref()
            .and_then(|id| orders.into_iter().find(|o| &*o.id == id))
            .map(Arc::new);
        let locale = profile.locale.as_deref().map(str::to_string);
        let profile = Arc::new(profile);
        let mut ctx = Ctx::new(&profile, None, order.as_ref(), None);
        ctx.journey = context! { id => &row.journey, sequence => &row.sequence, step => &row.step };
        let rendered =
            match self
                .catalog
                .templates
                .render(&row.template, locale.as_deref(), &ctx.into_value())
            {
                Ok(r) => r,
                Err(e) => return failed(format!("template error: {e}")),
            };
        let message = match crate::mail::build(row, &self.from, &to, &rendered) {
            Ok(m) => m,
            Err(e) => return failed(e.to_string()),
        };
        let message_id = crate::mail::message_id(row, &crate::mail::domain_of(&self.from));
        if self.dry_run {
            return Delivery::DryRun { message_id };
        }
        match self.transport.send(&row.key, &to, &message.formatted()) {
            Ok(()) => Delivery::Sent { message_id },
            Err(e) => failed(e.message),
        }
    }
}
