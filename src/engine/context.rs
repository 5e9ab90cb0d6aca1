//! The names expressions and templates see: `customer`, `event`, `order`, `journey`, links.
//!
//! Each is a MiniJinja object over shared state, so building a context costs a few reference
//! counts, and a field is converted only when an expression reads it.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};

use super::customer::{Order, Profile};
use chrono::{DateTime, Utc};

use super::journey::{Journey, JourneyId};
use crate::event::Event;
use crate::time::rfc3339;

/// The top-level names of one evaluation.
#[derive(Debug, Default)]
pub struct Ctx {
    pub customer: Value,
    pub event: Value,
    pub order: Value,
    pub journey: Value,
    pub unsubscribe_url: Value,
    pub preferences_url: Value,
}

impl Ctx {
    pub fn new(
        profile: &Arc<Profile>,
        event: Option<&Arc<Event>>,
        order: Option<&Arc<Order>>,
        journey: Option<&Journey>,
    ) -> Ctx {
        Ctx {
            customer: Value::from_dyn_object(profile.clone()),
            event: event.map_or(Value::UNDEFINED, |e| Value::from_dyn_object(e.clone())),
            order: order.map_or(Value::UNDEFINED, |o| Value::from_dyn_object(o.clone())),
            journey: journey.map_or(Value::UNDEFINED, |j| Value::from_object(JourneyCtx::of(j))),
            ..Ctx::default()
        }
    }

    pub fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

const CTX_KEYS: &[&str] = &["customer", "event", "order", "journey", "unsubscribe_url", "preferences_url"];

impl Object for Ctx {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let v = match key.as_str()? {
            "customer" => &self.customer,
            "event" => &self.event,
            "order" => &self.order,
            "journey" => &self.journey,
            "unsubscribe_url" => &self.unsubscribe_url,
            "preferences_url" => &self.preferences_url,
            _ => return None,
        };
        Some(v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(CTX_KEYS)
    }
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_deref().map_or(Value::from(()), Value::from)
}

fn strings(v: &[String]) -> Value {
    Value::from(v.to_vec())
}

const PROFILE_KEYS: &[&str] = &[
    "id", "email", "name", "locale", "timezone", "birthday", "orders_count", "total_spent", "skus",
    "categories", "open_tickets", "last_order_at", "unsubscribed",
];

impl Object for Profile {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "id" => Value::from(&*self.id),
            "email" => opt_str(&self.email),
            "name" => opt_str(&self.name),
            "locale" => opt_str(&self.locale),
            "timezone" => self.timezone.map_or(Value::from(()), |t| Value::from(t.name())),
            "birthday" => opt_str(&self.birthday),
            "orders_count" => Value::from(self.orders_count),
            "total_spent" => Value::from(self.total_spent.as_f64()),
            "skus" => strings(&self.skus),
            "categories" => strings(&self.categories),
            "open_tickets" => Value::from(self.open_tickets.len()),
            "last_order_at" => self.last_order_at.map_or(Value::from(()), |t| Value::from(rfc3339(t))),
            "unsubscribed" => strings(&self.unsubscribed),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(PROFILE_KEYS)
    }
}

const ORDER_KEYS: &[&str] = &[
    "id", "items", "total", "currency", "status", "placed_at", "shipped_at", "delivered_at",
    "carrier", "tracking_number", "tracking_url", "refunded",
];

impl Object for Order {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let time = |t: Option<DateTime<Utc>>| t.map_or(Value::from(()), |t| Value::from(rfc3339(t)));
        Some(match key.as_str()? {
            "id" | "order_id" => Value::from(&*self.id),
            "items" => self.items_value(),
            "total" => Value::from(self.total.as_f64()),
            "currency" => Value::from(self.currency.as_str()),
            "status" => Value::from(self.status.as_str()),
            "placed_at" => time(self.placed_at),
            "shipped_at" => time(self.shipped_at),
            "delivered_at" => time(self.delivered_at),
            "carrier" => opt_str(&self.carrier),
            "tracking_number" => opt_str(&self.tracking_number),
            "tracking_url" => opt_str(&self.tracking_url),
            "refunded" => Value::from(self.refunded.as_f64()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(ORDER_KEYS)
    }
}

const EVENT_KEYS: &[&str] = &["id", "source", "type", "time", "subject", "data"];

impl Object for Event {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "id" => Value::from(self.id.as_str()),
            "source" => Value::from(self.source.as_str()),
            "type" => Value::from(self.kind.as_str()),
            "time" => Value::from(rfc3339(self.time)),
            "subject" => Value::from(&*self.subject),
            "data" => Value::from(minijinja::value::Serde(&self.data)),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(EVENT_KEYS)
    }
}

/// `journey`: id, sequence, step, started_at (formatted only when read).
#[derive(Debug)]
struct JourneyCtx {
    id: JourneyId,
    sequence: Arc<str>,
    step: Option<Arc<str>>,
    started_at: DateTime<Utc>,
}

impl JourneyCtx {
    fn of(j: &Journey) -> JourneyCtx {
        JourneyCtx {
            id: j.id,
            sequence: j.sequence.name.clone(),
            step: j.step_id().cloned(),
            started_at: j.started_at,
        }
    }
}

const JOURNEY_KEYS: &[&str] = &["id", "sequence", "step", "started_at"];

impl Object for JourneyCtx {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "id" => Value::from(self.id.to_string()),
            "sequence" => Value::from(&*self.sequence),
            "step" => self.step.as_deref().map_or(Value::from(()), Value::from),
            "started_at" => Value::from(rfc3339(self.started_at)),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(JOURNEY_KEYS)
    }
}
