//! What the engine knows about one customer: profile, orders, journeys, pending goals.
//!
//! A customer is the unit of state: every input touches exactly one customer, so the store
//! loads one, the engine mutates it, and the store saves it with the decisions.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::journey::{Journey, PendingGoal};
use crate::event::{CustomerPatch, Event, EventData, Item, Money};

#[derive(Debug, Clone)]
pub struct Customer {
    /// Shared with expression contexts; copied on write only while a context holds it.
    pub profile: Arc<Profile>,
    pub orders: Vec<Arc<Order>>,
    /// Journeys in flight, oldest first (the order ties are decided in).
    pub journeys: Vec<Journey>,
    pub goals: Vec<PendingGoal>,
    /// per_customer sequences this customer has finished (for `reenter: false`).
    pub finished: Vec<Arc<str>>,
}

/// The profile expressions and templates see as `customer`.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub id: Arc<str>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<Tz>,
    pub birthday: Option<String>,
    pub orders_count: u32,
    /// Placed orders minus refunded amounts.
    pub total_spent: Money,
    /// Of every order placed, sorted; refunds do not remove them.
    pub skus: Vec<String>,
    pub categories: Vec<String>,
    /// Ticket ids opened and not yet resolved.
    pub open_tickets: Vec<String>,
    pub last_order_at: Option<DateTime<Utc>>,
    /// Categories unsubscribed from; `all` means every marketing category.
    pub unsubscribed: Vec<String>,
    /// A permanent delivery failure: nothing more is sent to this address.
    pub bounced: bool,
    /// When the last marketing email went out (for `policy.min_gap`).
    pub last_marketing_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Placed,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
        }
    }
}

/// An order as known from its events (`order` in per_order journeys).
#[derive(Debug, Clone)]
pub struct Order {
    pub id: Arc<str>,
    pub items: Vec<Item>,
    pub total: Money,
    pub currency: String,
    pub status: OrderStatus,
    pub placed_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
    pub refunded: Money,
    /// per_order sequences that already ran a journey for this order (once per order).
    pub enrolled: Vec<Arc<str>>,
    /// `items` as an expression value, built on first use: trigger conditions read it for
    /// every event about the order.
    items_value: OnceLock<minijinja::Value>,
}

impl Order {
    fn new(id: &str) -> Order {
        Order {
            id: id.into(),
            items: Vec::new(),
            total: Money::ZERO,
            currency: String::new(),
            status: OrderStatus::Placed,
            placed_at: None,
            shipped_at: None,
            delivered_at: None,
            carrier: None,
            tracking_number: None,
            tracking_url: None,
            refunded: Money::ZERO,
            enrolled: Vec::new(),
            items_value: OnceLock::new(),
        }
    }

    pub fn items_value(&self) -> minijinja::Value {
        self.items_value
            .get_or_init(|| minijinja::Value::from(minijinja::value::Serde(&self.items)))
            .clone()
    }

    fn set_items(&mut self, items: &[Item]) {
        self.items = items.to_vec();
        self.items_value = OnceLock::new();
    }
}

impl Customer {
    pub fn new(id: Arc<str>) -> Customer {
        Customer {
            profile: Arc::new(Profile {
                id,
                ..Profile::default()
            }),
            orders: Vec::new(),
            journeys: Vec::new(),
            goals: Vec::new(),
            finished: Vec::new(),
        }
    }

    pub fn order(&self, id: &str) -> Option<&Arc<Order>> {
        self.orders.iter().find(|o| &*o.id == id)
    }

    /// The order, created empty if an event about it arrives before `order.placed`.
    pub fn order_mut(&mut self, id: &str) -> &mut Order {
        let i = match self.orders.iter().position(|o| &*o.id == id) {
            Some(i) => i,
            None => {
                self.orders.push(Arc::new(Order::new(id)));
                self.orders.len() - 1
            }
        };
        Arc::make_mut(&mut self.orders[i])
    }

    /// Applies what the event says about the customer and their orders.
    pub fn apply(&mut self, ev: &Event) {
        if let Some(patch) = &ev.customer {
            Arc::make_mut(&mut self.profile).patch(patch);
        }
        match &ev.data {
            EventData::OrderPlaced(placed) => {
                let order = self.order_mut(&placed.order_id);
                // A second order.placed for the same order (new event id) must not count twice.
                let first = order.placed_at.is_none();
                order.set_items(&placed.items);
                order.total = placed.total;
                order.currency = placed.currency.clone();
                order.placed_at = Some(ev.time);
                if first {
                    Arc::make_mut(&mut self.profile).count_order(placed.total, &placed.items, ev.time);
                }
            }
            EventData::OrderShipped(s) => {
                let order = self.order_mut(&s.order_id);
                order.status = OrderStatus::Shipped;
                order.shipped_at = Some(ev.time);
                order.carrier = Some(s.carrier.clone());
                order.tracking_number = Some(s.tracking_number.clone());
                order.tracking_url = s.tracking_url.clone();
            }
            EventData::OrderDelivered { order_id } => {
                let order = self.order_mut(order_id);
                order.status = OrderStatus::Delivered;
                order.delivered_at = Some(ev.time);
            }
            EventData::OrderCancelled { order_id, .. } => {
                self.order_mut(order_id).status = OrderStatus::Cancelled;
            }
            EventData::OrderRefunded { order_id, amount } => {
                let order = self.order_mut(order_id);
                order.status = OrderStatus::Refunded;
                order.refunded = order.refunded + *amount;
                let p = Arc::make_mut(&mut self.profile);
                p.total_spent = p.total_spent - *amount;
            }
            EventData::TicketOpened { ticket_id, .. } => {
                if !self.profile.open_tickets.contains(ticket_id) {
                    Arc::make_mut(&mut self.profile).open_tickets.push(ticket_id.clone());
                }
            }
            EventData::TicketResolved { ticket_id } => {
                if self.profile.open_tickets.contains(ticket_id) {
                    Arc::make_mut(&mut self.profile).open_tickets.retain(|t| t != ticket_id);
                }
            }
            EventData::CustomerUnsubscribed { categories } => {
                let p = Arc::make_mut(&mut self.profile);
                for c in categories {
                    insert_sorted(&mut p.unsubscribed, c);
                }
            }
            EventData::FeedbackSubmitted { .. }
            | EventData::ReviewSubmitted { .. }
            | EventData::CustomerUpdated
            | EventData::Other(_) => {}
        }
    }
}

impl Profile {
    fn patch(&mut self, p: &CustomerPatch) {
        if let Some(email) = &p.email {
            if self.email.as_ref() != Some(email) {
                self.email = Some(email.clone());
                // A new address has not bounced.
                self.bounced = false;
            }
        }
        if let Some(name) = &p.name {
            self.name = Some(name.clone());
        }
        if let Some(locale) = &p.locale {
            self.locale = Some(locale.clone());
        }
        // An unknown zone name keeps the previous one: a typo must not lose the order event.
        if let Some(tz) = p.timezone.as_deref().and_then(|t| t.parse::<Tz>().ok()) {
            self.timezone = Some(tz);
        }
        if let Some(b) = &p.birthday {
            self.birthday = Some(b.clone());
        }
    }

    fn count_order(&mut self, total: Money, items: &[Item], at: DateTime<Utc>) {
        self.orders_count += 1;
        self.total_spent = self.total_spent + total;
        for item in items {
            insert_sorted(&mut self.skus, &item.sku);
            insert_sorted(&mut self.categories, &item.category);
        }
        self.last_order_at = Some(self.last_order_at.map_or(at, |t| t.max(at)));
    }

    /// Unsubscribed from `category` or from everything.
    pub fn unsubscribed_from(&self, category: &str) -> Option<&str> {
        self.unsubscribed
            .iter()
            .find(|c| *c == "all" || *c == category)
            .map(String::as_str)
    }
}

fn insert_sorted(list: &mut Vec<String>, value: &str) {
    if let Err(i) = list.binary_search_by(|v| v.as_str().cmp(value)) {
        list.insert(i, value.to_string());
    }
}
