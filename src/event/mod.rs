//! Events in: CloudEvents 1.0 JSON (structured or binary binding) with typed `data`.
//!
//! `parse` turns bytes into an [`Event`] or an [`EventError`] precise enough to be the
//! dead-letter reason; nothing here knows about Kafka.

mod fast;
mod money;
mod parse;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use money::Money;
pub use money::{MAX_DIGITS, MoneyError};
pub use parse::{EventError, MAX_EVENT_BYTES, MAX_ID_BYTES, check_identifier};

/// One event, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    /// The CloudEvents `type`, e.g. `order.placed`; unknown types are kept.
    pub kind: String,
    /// When it happened; delays are measured from here.
    pub time: DateTime<Utc>,
    /// The customer id (CloudEvents `subject`).
    pub subject: Arc<str>,
    /// `data.customer`: fields present update the profile.
    pub customer: Option<CustomerPatch>,
    pub data: EventData,
}

impl Event {
    /// An event aftercare makes itself (a preferences page, an operator's erasure), from
    /// `source`, happening `now`; its id is unique.
    pub fn internal(
        kind: &str,
        source: &str,
        subject: &str,
        data: EventData,
        now: DateTime<Utc>,
    ) -> Arc<Event> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Arc::new(Event {
            id: format!(
                "{kind}-{}-{}-{}",
                now.timestamp_micros(),
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            source: source.into(),
            kind: kind.into(),
            time: now,
            subject: subject.into(),
            customer: None,
            data,
        })
    }

    /// The `order_id` the event is about, if any (per_order journeys match on it).
    pub fn order_id(&self) -> Option<&str> {
        match &self.data {
            EventData::OrderPlaced(o) => Some(&o.order_id),
            EventData::OrderShipped(o) => Some(&o.order_id),
            EventData::OrderDelivered { order_id }
            | EventData::OrderCancelled { order_id, .. }
            | EventData::OrderRefunded { order_id, .. }
            | EventData::ReviewSubmitted { order_id, .. } => Some(order_id),
            EventData::TicketOpened { order_id, .. } => order_id.as_deref(),
            EventData::Other(v) => v.get("order_id").and_then(|o| o.as_str()),
            EventData::TicketResolved { .. }
            | EventData::FeedbackSubmitted { .. }
            | EventData::CustomerUpdated
            | EventData::CustomerUnsubscribed { .. }
            | EventData::CustomerSubscribed { .. }
            | EventData::CustomerErased => None,
        }
    }

    /// The dedupe key: (`source`, `id`), whichever binding carried the event.
    pub fn key(&self) -> (&str, &str) {
        (&self.source, &self.id)
    }
}

/// The profile fields an event may carry in `data.customer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CustomerPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    /// Any other profile fields (`customer.attributes`): merged into the profile, a `null`
    /// removing one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Typed `data` for every known event type; anything else is kept as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventData {
    OrderPlaced(OrderPlaced),
    OrderShipped(OrderShipped),
    OrderDelivered {
        order_id: String,
    },
    OrderCancelled {
        order_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    OrderRefunded {
        order_id: String,
        amount: Money,
    },
    TicketOpened {
        ticket_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        order_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    TicketResolved {
        ticket_id: String,
    },
    FeedbackSubmitted {
        kind: FeedbackKind,
        score: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    ReviewSubmitted {
        order_id: String,
        sku: String,
        rating: u8,
    },
    CustomerUpdated,
    /// Forget the customer (a privacy request): every row of theirs is removed.
    CustomerErased,
    CustomerUnsubscribed {
        /// Category names, or `all`.
        categories: Vec<String>,
    },
    /// The reverse of an unsubscribe (the preferences page): these categories are wanted
    /// again; `all` lifts an unsubscribe from everything.
    CustomerSubscribed {
        categories: Vec<String>,
    },
    /// An event type aftercare does not know: recorded, may trigger sequences.
    Other(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub items: Vec<Item>,
    pub total: Money,
    pub currency: String,
    /// The customer who referred this one (SPEC §8: return on relationship).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referred_by: Option<String>,
    /// A coupon code used on the order: one a step gave counts as that step's goal (SPEC §9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    // Boxed: every order keeps its items for as long as the customer is known.
    pub sku: Box<str>,
    pub name: Box<str>,
    pub category: Box<str>,
    pub quantity: u32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderShipped {
    pub order_id: String,
    pub carrier: String,
    pub tracking_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackKind {
    Nps,
    Csat,
}
