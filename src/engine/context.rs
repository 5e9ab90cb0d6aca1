//! The names expressions and templates see: `customer`, `event`, `order`, `journey`, links.
//!
//! Each is a MiniJinja object over shared state, so building a context costs a few reference
//! counts, and a field is converted only when an expression reads it.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};

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
    /// `coupon.code`, on a step with a `coupon`.
    pub coupon: Value,
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

    /// `coupon` as templates read it: `coupon.code`, or undefined without one.
    pub fn coupon(code: Option<&str>) -> Value {
        code.map_or(
            Value::UNDEFINED,
            |code| minijinja::context! { code => code },
        )
    }

    pub fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

const CTX_KEYS: &[&str] = &[
    "customer",
    "event",
    "order",
    "journey",
    "unsubscribe_url",
    "preferences_url",
    "coupon",
];

impl Object for Ctx {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let v = match key.as_str()? {
            "customer" => &self.customer,
            "event" => &self.event,
            "order" => &self.order,
            "journey" => &self.journey,
            "unsubscribe_url" => &self.unsubscribe_url,
            "preferences_url" => &self.preferences_url,
            "coupon" => &self.coupon,
            _ => return None,
        };
        Some(v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(CTX_KEYS)
    }
}

fn opt_str(v: Option<&str>) -> Value {
    v.map_or(Value::from(()), Value::from)
}

fn strings(v: &[Box<str>]) -> Value {
    Value::from(v.iter().map(|s| Value::from(&**s)).collect::<Vec<_>>())
}

const PROFILE_KEYS: &[&str] = &[
    "id",
    "email",
    "name",
    "locale",
    "timezone",
    "birthday",
    "orders_count",
    "total_spent",
    "skus",
    "categories",
    "open_tickets",
    "last_order_at",
    "unsubscribed",
    "attributes",
];

impl Object for Profile {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "id" => Value::from(&*self.id),
            "email" => opt_str(self.email.as_deref()),
            "name" => opt_str(self.name.as_deref()),
            "locale" => opt_str(self.locale.as_deref()),
            "timezone" => self
                .timezone
                .map_or(Value::from(()), |t| Value::from(t.name())),
            "birthday" => opt_str(self.birthday.as_deref()),
            "orders_count" => Value::from(self.orders_count),
            "total_spent" => Value::from(self.total_spent.as_f64()),
            "skus" => strings(&self.skus),
            "categories" => strings(&self.categories),
            "open_tickets" => Value::from(self.open_tickets.len()),
            "last_order_at" => self
                .last_order_at
                .map_or(Value::from(()), |t| Value::from(rfc3339(t))),
            "unsubscribed" => strings(&self.unsubscribed),
            "attributes" => self.attributes.as_deref().map_or_else(
                || Value::from(()),
                |a| Value::from(minijinja::value::Serde(a)),
            ),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(PROFILE_KEYS)
    }
}

const ORDER_KEYS: &[&str] = &[
    "id",
    "items",
    "total",
    "currency",
    "status",
    "placed_at",
    "shipped_at",
    "delivered_at",
    "carrier",
    "tracking_number",
    "tracking_url",
    "refunded",
];

impl Object for Order {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let time =
            |t: Option<DateTime<Utc>>| t.map_or(Value::from(()), |t| Value::from(rfc3339(t)));
        Some(match key.as_str()? {
            "id" | "order_id" => Value::from(&*self.id),
            "items" => Value::from_object(Items(self.clone())),
            "total" => Value::from(self.total.as_f64()),
            "currency" => Value::from(&*self.currency),
            "status" => Value::from(self.status.as_str()),
            "placed_at" => time(self.placed_at),
            "shipped_at" => time(self.shipped_at),
            "delivered_at" => time(self.delivered_at),
            "carrier" => self
                .shipping
                .as_ref()
                .map_or(Value::from(()), |s| Value::from(s.carrier.as_str())),
            "tracking_number" => self
                .shipping
                .as_ref()
                .map_or(Value::from(()), |s| Value::from(s.tracking_number.as_str())),
            "tracking_url" => self
                .shipping
                .as_ref()
                .map_or(Value::from(()), |s| opt_str(s.tracking_url.as_deref())),
            "refunded" => Value::from(self.refunded.as_f64()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(ORDER_KEYS)
    }
}

/// `order.items`, read in place: each item becomes a value only when an expression reaches it.
#[derive(Debug)]
struct Items(Arc<Order>);

impl Object for Items {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = key.as_usize()?;
        (i < self.0.items.len()).then(|| Value::from_object(ItemAt(self.0.clone(), i)))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.items.len())
    }
}

#[derive(Debug)]
struct ItemAt(Arc<Order>, usize);

const ITEM_KEYS: &[&str] = &["sku", "name", "category", "quantity", "unit_price"];

impl Object for ItemAt {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let item = self.0.items.get(self.1)?;
        Some(match key.as_str()? {
            "sku" => Value::from(&*item.sku),
            "name" => Value::from(&*item.name),
            "category" => Value::from(&*item.category),
            "quantity" => Value::from(item.quantity),
            "unit_price" => Value::from(item.unit_price.as_f64()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(ITEM_KEYS)
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
            "data" => data_value(&self.data),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(EVENT_KEYS)
    }
}

/// `event.data` as expressions read it: amounts as numbers (`event.data.total > 100`), though
/// they are exact decimals (serialized as strings) everywhere else.
fn data_value(data: &crate::event::EventData) -> Value {
    use crate::event::EventData;
    let mut v = serde_json::to_value(data).unwrap_or_default();
    let number = |m: &crate::event::Money| serde_json::Value::from(m.as_f64());
    match data {
        EventData::OrderPlaced(o) => {
            v["total"] = number(&o.total);
            if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
                for (json, item) in items.iter_mut().zip(&o.items) {
                    json["unit_price"] = number(&item.unit_price);
                }
            }
        }
        EventData::OrderRefunded { amount, .. } => v["amount"] = number(amount),
        _ => {}
    }
    Value::from(minijinja::value::Serde(&v))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::Expr;

    #[test]
    fn amounts_read_as_numbers_in_expressions() {
        let text = r#"{"specversion":"1.0","id":"e","source":"s","type":"order.placed","time":"2024-01-01T00:00:00Z","subject":"c",
            "data":{"order_id":"o","total":"150.00","currency":"EUR","items":[{"sku":"k","name":"n","category":"c","quantity":1,"unit_price":"922337203685477.58"}]}}"#;
        let e = Arc::new(Event::from_structured(text.as_bytes()).unwrap());
        let mut c = crate::engine::Customer::new("c".into());
        c.apply(&e);
        let ctx = || Ctx::new(&c.profile, Some(&e), c.order("o"), None).into_value();
        for (expr, expected) in [
            ("event.data.total > 100", true),
            ("event.data.items[0].unit_price > 900000000000000", true),
            ("order.total == 150", true),
            ("customer.total_spent >= 150", true),
            ("event.data.total < 100", false),
        ] {
            assert_eq!(
                Expr::compile(expr).unwrap().eval_slow(ctx()),
                Ok(expected),
                "{expr}"
            );
        }
    }
}
