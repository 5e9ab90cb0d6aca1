//! What the engine knows about one customer: profile, orders, journeys, pending goals.
//!
//! A customer is the unit of state: every input touches exactly one customer, so the store
//! loads one, the engine mutates it, and the store saves it with the decisions.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::compact::{Compact, Sparse};
use super::dates::DateDue;
use super::experiment::Assignment;
use super::journey::PendingGoal;
use super::journeys::{Changed, Journeys, Tracker};
use crate::event::{CustomerPatch, Event, EventData, Item, Money, OrderPlaced, OrderShipped};

#[derive(Debug, Clone)]
pub struct Customer {
    /// Shared with expression contexts; copied on write only while a context holds it.
    pub profile: Arc<Profile>,
    pub orders: Orders,
    /// Journeys in flight, oldest first (the order ties are decided in).
    pub journeys: Journeys,
    pub goals: Compact<PendingGoal>,
    /// per_customer sequences this customer has finished (for `reenter: false`).
    pub finished: Compact<Arc<str>>,
    /// The customer's groups in the experiments of the sequences they entered.
    pub experiments: Sparse<Assignment>,
    /// The next start of each date-triggered sequence.
    pub dates: Sparse<DateDue>,
    /// The coupon codes steps gave, for their redemption (at most [`super::coupon::KEPT`]).
    pub coupons: Sparse<super::coupon::Given>,
}

/// What the return on relationship counts (SPEC §8): when the customer was helped — a support
/// ticket resolved, an education sequence completed; the first time in 12 months — whether
/// they ordered again after it, and who referred them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Relationship {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helped_at: Option<DateTime<Utc>>,
    /// The latest help: the customer counts as helped for 12 months from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_helped_at: Option<DateTime<Utc>>,
    /// The first order placed after `helped_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<DateTime<Utc>>,
    /// `data.referred_by` of their first order that named one, and that order's time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referred_by: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referred_at: Option<DateTime<Utc>>,
}

/// Attributes a profile keeps: further new names are dropped (an event cannot grow a profile
/// without bound), as are names over 64 bytes and values over 4 KiB of JSON.
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_NAME: usize = 64;
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// The size of `v` as JSON.
fn json_len(v: &serde_json::Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// How long help counts for the return on relationship.
pub const HELP_COUNTS_FOR: chrono::Duration = chrono::Duration::days(365);

/// The profile expressions and templates see as `customer`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub id: Arc<str>,
    // Boxed strings and exact lists, not String and Vec: a profile is kept for every customer,
    // and the spare capacity of growable ones is memory multiplied by millions.
    pub email: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub locale: Option<Box<str>>,
    #[serde(with = "tz_name")]
    pub timezone: Option<Tz>,
    pub birthday: Option<Box<str>>,
    pub orders_count: u32,
    /// Placed orders minus refunded amounts.
    pub total_spent: Money,
    /// Of every order placed, sorted; refunds do not remove them.
    pub skus: Compact<Box<str>>,
    pub categories: Compact<Box<str>>,
    /// Ticket ids opened and not yet resolved.
    pub open_tickets: Compact<Box<str>>,
    /// Ticket ids resolved before their opening arrived (events racing each other): the late
    /// opening then leaves the ticket closed.
    #[serde(skip_serializing_if = "none")]
    pub resolved_early: Compact<Box<str>>,
    pub last_order_at: Option<DateTime<Utc>>,
    /// Categories unsubscribed from; `all` means every marketing category.
    pub unsubscribed: Compact<Box<str>>,
    /// A permanent delivery failure: nothing more is sent to this address.
    pub bounced: bool,
    /// When the last marketing email went out (for `policy.min_gap`).
    pub last_marketing_at: Option<DateTime<Utc>>,
    /// Help given and what followed it, for the return on relationship (boxed: most
    /// customers have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relationship: Option<Box<Relationship>>,
    /// Profile fields beyond these (`data.customer.attributes`), at most
    /// [`MAX_ATTRIBUTES`]; boxed, as most customers have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipping {
    pub carrier: String,
    pub tracking_number: String,
    pub tracking_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: Arc<str>,
    pub items: Compact<Item>,
    pub total: Money,
    pub currency: Box<str>,
    pub status: OrderStatus,
    pub placed_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Set once shipped; boxed because most of an order's life it is absent.
    pub shipping: Option<Box<Shipping>>,
    pub refunded: Money,
    /// per_order sequences that already ran a journey for this order (once per order).
    pub enrolled: Compact<Arc<str>>,
}

impl Order {
    /// Moves to `status` unless the order already ended (cancelled or refunded): a delivery
    /// that arrives after the refund does not make the order live again.
    fn advance(&mut self, status: OrderStatus) {
        if !matches!(self.status, OrderStatus::Cancelled | OrderStatus::Refunded) {
            self.status = status;
        }
    }

    /// The event among `exit_on` that this order already had, if any: `order.cancelled` or
    /// `order.refunded`, the two that end an order for good.
    pub fn ended_by<'a>(&self, exit_on: &'a [Arc<str>]) -> Option<&'a str> {
        let had = match self.status {
            OrderStatus::Cancelled => "order.cancelled",
            OrderStatus::Refunded => "order.refunded",
            _ => return None,
        };
        exit_on.iter().map(|k| &**k).find(|k| *k == had)
    }

    fn new(id: &str) -> Order {
        Order {
            id: id.into(),
            items: Compact::default(),
            total: Money::ZERO,
            currency: Box::default(),
            status: OrderStatus::Placed,
            placed_at: None,
            shipped_at: None,
            delivered_at: None,
            shipping: None,
            refunded: Money::ZERO,
            enrolled: Compact::default(),
        }
    }
}

impl Customer {
    pub fn new(id: Arc<str>) -> Customer {
        Customer {
            profile: Arc::new(Profile {
                id,
                ..Profile::default()
            }),
            orders: Orders::default(),
            journeys: Journeys::default(),
            goals: Compact::default(),
            finished: Compact::default(),
            experiments: Sparse::default(),
            dates: Sparse::default(),
            coupons: Sparse::default(),
        }
    }

    pub fn order(&self, id: &str) -> Option<&Arc<Order>> {
        self.orders.get(id)
    }

    /// The order, created empty if an event about it arrives before `order.placed`.
    pub fn order_mut(&mut self, id: &str) -> &mut Order {
        self.orders.get_or_add(id)
    }

    /// Applies what the event says about the customer and their orders.
    pub fn apply(&mut self, ev: &Event) {
        if let Some(patch) = &ev.customer {
            Arc::make_mut(&mut self.profile).patch(patch);
        }
        match &ev.data {
            EventData::OrderPlaced(placed) => self.order_placed(placed, ev.time),
            EventData::OrderShipped(shipped) => self.order_shipped(shipped, ev.time),
            EventData::OrderDelivered { order_id } => {
                let order = self.order_mut(order_id);
                order.advance(OrderStatus::Delivered);
                order.delivered_at = Some(ev.time);
            }
            EventData::OrderCancelled { order_id, .. } => {
                self.order_mut(order_id).status = OrderStatus::Cancelled;
            }
            EventData::OrderRefunded { order_id, amount } => {
                self.order_refunded(order_id, *amount);
            }
            EventData::TicketOpened { ticket_id, .. } => self.ticket_opened(ticket_id),
            EventData::TicketResolved { ticket_id } => {
                self.ticket_resolved(ticket_id);
                self.helped(ev.time);
            }
            EventData::CustomerUnsubscribed { categories } => self.unsubscribe(categories),
            EventData::CustomerSubscribed { categories } => self.subscribe(categories),
            EventData::FeedbackSubmitted { .. }
            | EventData::ReviewSubmitted { .. }
            | EventData::CustomerUpdated
            | EventData::CustomerErased
            | EventData::Other(_) => {}
        }
    }

    /// An order placed at `at`: its items and total, counted in the profile the first time.
    fn order_placed(&mut self, placed: &OrderPlaced, at: DateTime<Utc>) {
        let order = self.order_mut(&placed.order_id);
        // A second order.placed for the same order (new event id) must not count twice.
        let first = order.placed_at.is_none();
        order.items = placed.items.clone().into();
        order.total = placed.total;
        order.currency = placed.currency.as_str().into();
        order.placed_at = Some(at);
        if first {
            let p = Arc::make_mut(&mut self.profile);
            p.count_order(placed.total, &placed.items, at);
            p.returned(placed.referred_by.as_deref(), at);
        }
    }

    /// The customer was helped at `at`: the start of a new 12 months unless they were helped
    /// in the last 12 (an earlier help of those 12 months, come late, moves the start back).
    /// Whether they came back is read from their orders, so events racing each other end as in
    /// order.
    pub fn helped(&mut self, at: DateTime<Utc>) {
        let r = self.profile.relationship.as_deref();
        let last = r
            .and_then(|r| r.last_helped_at.or(r.helped_at))
            .max(Some(at));
        let helped_at = match r.and_then(|r| r.helped_at) {
            Some(h) if h + HELP_COUNTS_FOR >= at && h <= at => {
                Arc::make_mut(&mut self.profile)
                    .relationship
                    .get_or_insert_default()
                    .last_helped_at = last;
                return;
            }
            Some(h) if h + HELP_COUNTS_FOR >= at => at.min(h),
            _ => at,
        };
        let returned_at = self
            .orders
            .iter()
            .filter_map(|o| o.placed_at)
            .filter(|t| *t > helped_at)
            .min();
        let p = Arc::make_mut(&mut self.profile);
        let r = p.relationship.get_or_insert_default();
        r.helped_at = Some(helped_at);
        r.last_helped_at = last;
        r.returned_at = returned_at;
    }

    /// An order shipped at `at`, with its carrier and tracking.
    fn order_shipped(&mut self, s: &OrderShipped, at: DateTime<Utc>) {
        let order = self.order_mut(&s.order_id);
        order.advance(OrderStatus::Shipped);
        order.shipped_at = Some(at);
        order.shipping = Some(Box::new(Shipping {
            carrier: s.carrier.clone(),
            tracking_number: s.tracking_number.clone(),
            tracking_url: s.tracking_url.clone(),
        }));
    }

    /// A refund: the order ends refunded, and the amount leaves the customer's total spent.
    fn order_refunded(&mut self, order_id: &str, amount: Money) {
        let order = self.order_mut(order_id);
        order.status = OrderStatus::Refunded;
        order.refunded = order.refunded + amount;
        let p = Arc::make_mut(&mut self.profile);
        p.total_spent = p.total_spent - amount;
    }

    /// A ticket opened: open now, unless its resolution arrived first. The profile is copied
    /// only when it changes.
    fn ticket_opened(&mut self, ticket_id: &str) {
        if self.profile.resolved_early.contains_str(ticket_id) {
            Arc::make_mut(&mut self.profile)
                .resolved_early
                .retain(|t| **t != *ticket_id);
        } else if !self.profile.open_tickets.contains_str(ticket_id) {
            Arc::make_mut(&mut self.profile)
                .open_tickets
                .push(ticket_id.into());
        }
    }

    /// A ticket resolved: no longer open, or, if its opening has not arrived yet, resolved
    /// early so that the opening leaves it closed.
    fn ticket_resolved(&mut self, ticket_id: &str) {
        let p = Arc::make_mut(&mut self.profile);
        if p.open_tickets.contains_str(ticket_id) {
            p.open_tickets.retain(|t| **t != *ticket_id);
        } else if !p.resolved_early.contains_str(ticket_id) {
            p.resolved_early.push(ticket_id.into());
        }
    }

    /// Unsubscribes from the categories (or from `all`).
    fn unsubscribe(&mut self, categories: &[String]) {
        let p = Arc::make_mut(&mut self.profile);
        for c in categories {
            p.unsubscribed.insert_sorted(c);
        }
    }

    /// Lifts the unsubscribes from the categories (`all`: the one from everything); the
    /// profile is copied only when one of them was unsubscribed.
    fn subscribe(&mut self, categories: &[String]) {
        if categories
            .iter()
            .any(|c| self.profile.unsubscribed.contains_str(c))
        {
            Arc::make_mut(&mut self.profile)
                .unsubscribed
                .retain(|u| !categories.iter().any(|c| **c == **u));
        }
    }
}

/// A customer's orders, in the order they were first heard of, found by id: a list sized
/// exactly and scanned (from the newest: events are nearly always about a recent order) while
/// short; indexed by id once long, so that an event's cost does not grow with them.
#[derive(Debug, Clone, Default)]
pub struct Orders(OrdersRepr);

#[derive(Debug, Clone)]
enum OrdersRepr {
    Few(Compact<Arc<Order>>),
    Many(Box<ManyOrders>),
}

impl Default for OrdersRepr {
    fn default() -> OrdersRepr {
        OrdersRepr::Few(Compact::default())
    }
}

#[derive(Debug, Clone, Default)]
struct ManyOrders {
    list: Vec<Arc<Order>>,
    at: HashMap<Arc<str>, usize>,
    /// Positions added or changed since the store last saved them ([`Orders::changes`]).
    changes: Tracker,
}

impl Orders {
    pub fn len(&self) -> usize {
        match &self.0 {
            OrdersRepr::Few(v) => v.len(),
            OrdersRepr::Many(m) => m.list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Order>> {
        match &self.0 {
            OrdersRepr::Few(v) => v.iter(),
            OrdersRepr::Many(m) => m.list.iter(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Order>> {
        match &self.0 {
            OrdersRepr::Few(v) => v.iter().rev().find(|o| &*o.id == id),
            OrdersRepr::Many(m) => m.at.get(id).map(|i| &m.list[*i]),
        }
    }

    /// Adds an order after the others (its id must be new).
    pub fn push(&mut self, order: Arc<Order>) {
        match &mut self.0 {
            OrdersRepr::Few(v) if v.len() + 1 < super::journeys::thresholds().0 => v.push(order),
            OrdersRepr::Few(v) => {
                let mut list = std::mem::take(v).into_vec();
                list.push(order);
                self.0 = OrdersRepr::Many(Box::new(ManyOrders::of(list)));
            }
            OrdersRepr::Many(m) => {
                m.at.insert(order.id.clone(), m.list.len());
                m.changes.mark(m.list.len() as u64);
                m.list.push(order);
            }
        }
    }

    /// Orders read back from rows numbered by [`Orders::changes`] (their positions), in order.
    pub fn numbered(rows: Vec<(u64, Arc<Order>)>) -> Orders {
        // Positions other than 0, 1, 2… (rows written by hand) are renumbered, all rewritten.
        let renumbered = rows.iter().enumerate().any(|(i, (n, _))| *n != i as u64);
        let list = rows.into_iter().map(|(_, o)| o).collect();
        let mut m = ManyOrders::of(list);
        if !renumbered {
            m.changes = Tracker::tracked();
        }
        Orders(OrdersRepr::Many(Box::new(m)))
    }

    /// Indexed (many): a store keeps them as rows ([`Orders::changes`]).
    pub fn is_indexed(&self) -> bool {
        matches!(self.0, OrdersRepr::Many(_))
    }

    /// For a store keeping one row per order: `None` while the orders are few (they are stored
    /// in a list with the customer); else what changed since the last call, or every order
    /// when `everything` (none is stored as a row yet).
    pub fn changes(&mut self, everything: bool) -> Option<Changed<'_, Order>> {
        let OrdersRepr::Many(m) = &mut self.0 else {
            return None;
        };
        Some(match m.changes.take(everything) {
            None => Changed {
                all: true,
                items: m
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (i as u64, Some(&**o)))
                    .collect(),
            },
            Some(dirty) => Changed {
                all: false,
                items: dirty
                    .into_iter()
                    .map(|n| (n, m.list.get(n as usize).map(|o| &**o)))
                    .collect(),
            },
        })
    }

    /// The order, added empty if not known yet.
    fn get_or_add(&mut self, id: &str) -> &mut Order {
        let found = match &self.0 {
            OrdersRepr::Few(v) => v.iter().rposition(|o| &*o.id == id),
            OrdersRepr::Many(m) => m.at.get(id).copied(),
        };
        let i = match found {
            Some(i) => i,
            None => {
                self.push(Arc::new(Order::new(id)));
                self.len() - 1
            }
        };
        let order = match &mut self.0 {
            OrdersRepr::Few(v) => &mut v[i],
            OrdersRepr::Many(m) => {
                m.changes.mark(i as u64);
                &mut m.list[i]
            }
        };
        Arc::make_mut(order)
    }
}

impl ManyOrders {
    fn of(list: Vec<Arc<Order>>) -> ManyOrders {
        let at = list
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.clone(), i))
            .collect();
        ManyOrders {
            list,
            at,
            changes: Tracker::default(),
        }
    }
}

impl Profile {
    /// An order placed at `at`: a return after help, and who referred them (`referred_by`).
    fn returned(&mut self, referred_by: Option<&str>, at: DateTime<Utc>) {
        let referred_by = referred_by.filter(|r| *r != &*self.id);
        if self.relationship.is_none() && referred_by.is_none() {
            return;
        }
        let r = self.relationship.get_or_insert_default();
        if r.helped_at.is_some_and(|h| h < at) && r.returned_at.is_none_or(|t| at < t) {
            r.returned_at = Some(at);
        }
        // The earliest order that names a referrer.
        if let Some(by) = referred_by
            && r.referred_at.is_none_or(|t| at < t)
        {
            r.referred_by = Some(by.into());
            r.referred_at = Some(at);
        }
    }
}

fn none(list: &Compact<Box<str>>) -> bool {
    list.is_empty()
}

impl Profile {
    fn patch(&mut self, p: &CustomerPatch) {
        if let Some(email) = &p.email
            && self.email.as_deref() != Some(email.as_str())
        {
            self.email = Some(email.as_str().into());
            // A new address has not bounced.
            self.bounced = false;
        }
        if let Some(name) = &p.name {
            self.name = Some(name.as_str().into());
        }
        if let Some(locale) = &p.locale {
            self.locale = Some(locale.as_str().into());
        }
        // An unknown zone name keeps the previous one: a typo must not lose the order event.
        if let Some(tz) = p.timezone.as_deref().and_then(|t| t.parse::<Tz>().ok()) {
            self.timezone = Some(tz);
        }
        if let Some(b) = &p.birthday {
            self.birthday = Some(b.as_str().into());
        }
        if let Some(attributes) = &p.attributes {
            self.merge_attributes(attributes);
        }
    }

    /// Merges `data.customer.attributes`: a `null` removes one; new names past
    /// [`MAX_ATTRIBUTES`] are dropped, with a warning.
    fn merge_attributes(&mut self, patch: &serde_json::Map<String, serde_json::Value>) {
        let mine = self.attributes.get_or_insert_default();
        let mut dropped = 0;
        for (key, v) in patch {
            if v.is_null() {
                mine.remove(key);
            } else if key.len() > MAX_ATTRIBUTE_NAME || json_len(v) > MAX_ATTRIBUTE_BYTES {
                dropped += 1;
            } else if mine.contains_key(key) || mine.len() < MAX_ATTRIBUTES {
                mine.insert(key.clone(), v.clone());
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(customer_id = %crate::redact::text(&self.id), dropped, "attributes dropped: past {MAX_ATTRIBUTES}, a name over {MAX_ATTRIBUTE_NAME} bytes or a value over {MAX_ATTRIBUTE_BYTES} bytes of JSON");
        }
        if mine.is_empty() {
            self.attributes = None;
        }
    }

    /// The date a date trigger reads, as written (`YYYY-MM-DD` or RFC 3339).
    pub fn date_of(&self, field: &crate::sequence::DateField) -> Option<&str> {
        match field {
            crate::sequence::DateField::Birthday => self.birthday.as_deref(),
            crate::sequence::DateField::Attribute(name) => {
                self.attributes.as_ref()?.get(&**name)?.as_str()
            }
        }
    }

    fn count_order(&mut self, total: Money, items: &[Item], at: DateTime<Utc>) {
        self.orders_count += 1;
        self.total_spent = self.total_spent + total;
        for item in items {
            self.skus.insert_sorted(&item.sku);
            self.categories.insert_sorted(&item.category);
        }
        self.last_order_at = Some(self.last_order_at.map_or(at, |t| t.max(at)));
    }

    /// Unsubscribed from `category` or from everything.
    pub fn unsubscribed_from(&self, category: &str) -> Option<&str> {
        self.unsubscribed
            .iter()
            .find(|c| &***c == "all" || &***c == category)
            .map(|c| &**c)
    }
}

/// A timezone stored by its IANA name.
mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Option<Tz>, s: S) -> Result<S::Ok, S::Error> {
        match tz {
            Some(tz) => s.serialize_some(tz.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Tz>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.and_then(|n| n.parse().ok()))
    }
}
