//! The common, well-formed event parsed straight into types, without the `serde_json::Value`
//! tree the precise path builds. Any surprise — a missing or wrong-typed field, a duplicate
//! key, an event type not modelled here — returns `None`, and the precise path decides (and
//! words the error). Both paths give equal events; a test checks it on the CDNOW stream.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::value::RawValue;

use super::{CustomerPatch, Event, EventData, Item, Money, OrderPlaced, OrderShipped};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    time: Cow<'a, str>,
    subject: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Customer {
    email: Option<String>,
    name: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    birthday: Option<String>,
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Placed {
    order_id: String,
    items: Vec<FastItem>,
    total: Amount,
    currency: String,
    referred_by: Option<String>,
    coupon: Option<String>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct FastItem {
    sku: String,
    name: String,
    category: String,
    quantity: u32,
    unit_price: Amount,
}

#[derive(Deserialize)]
struct Shipped {
    order_id: String,
    carrier: String,
    tracking_number: String,
    tracking_url: Option<String>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct OrderRef {
    order_id: String,
    reason: Option<String>,
    amount: Option<Amount>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct Ticket {
    ticket_id: String,
    order_id: Option<String>,
    subject: Option<String>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct Review {
    order_id: String,
    sku: String,
    rating: u8,
    customer: Option<Customer>,
}

/// A money field: a JSON number or a decimal string, read from its text as the precise path
/// reads it.
struct Amount(Money);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        super::parse::amount(raw)
            .map(Amount)
            .map_err(|e| de::Error::custom(e.to_string()))
    }
}

fn patch(c: Option<Customer>) -> Option<CustomerPatch> {
    c.map(|c| CustomerPatch {
        email: c.email,
        name: c.name,
        locale: c.locale,
        timezone: c.timezone,
        birthday: c.birthday,
        attributes: c.attributes,
    })
}

/// The event, if it is well-formed and of a type modelled here.
pub fn parse(text: &str) -> Option<Event> {
    let env: Envelope = serde_json::from_str(text).ok()?;
    if !attributes_given(&env) {
        return None;
    }
    let time = super::parse::parse_time(&env.time).ok()?;
    let (customer, data) = typed(&env.kind, env.data?.get())?;
    Some(Event {
        id: env.id,
        source: env.source,
        kind: env.kind,
        time,
        subject: env.subject.into(),
        customer,
        data,
    })
}

/// `data.customer`, and the rest of `data` typed.
type Typed = (Option<CustomerPatch>, EventData);

/// Whether the envelope is CloudEvents 1.0, its `id`, `source`, `type` and `subject` not
/// empty.
#[inline]
fn attributes_given(env: &Envelope) -> bool {
    env.specversion == "1.0"
        && !env.id.is_empty()
        && !env.source.is_empty()
        && !env.kind.is_empty()
        && !env.subject.is_empty()
}

/// `data` (its JSON text) read as the event type `kind` says.
#[inline]
fn typed(kind: &str, data: &str) -> Option<Typed> {
    match kind {
        "order.placed" => placed(data),
        "order.shipped" => shipped(data),
        "order.delivered" | "order.cancelled" | "order.refunded" => order_ref(kind, data),
        "support.ticket_opened" | "support.ticket_resolved" => ticket(kind, data),
        "review.submitted" => review(data),
        _ => None,
    }
}

/// `order.placed`, its items and amounts typed.
#[inline]
fn placed(data: &str) -> Option<Typed> {
    let p: Placed = serde_json::from_str(data).ok()?;
    let items = p
        .items
        .into_iter()
        .map(|i| Item {
            sku: i.sku.into(),
            name: i.name.into(),
            category: i.category.into(),
            quantity: i.quantity,
            unit_price: i.unit_price.0,
        })
        .collect();
    let placed = OrderPlaced {
        order_id: p.order_id,
        items,
        total: p.total.0,
        currency: p.currency,
        referred_by: p.referred_by,
        coupon: p.coupon,
    };
    Some((patch(p.customer), EventData::OrderPlaced(placed)))
}

/// `order.shipped`.
#[inline]
fn shipped(data: &str) -> Option<Typed> {
    let s: Shipped = serde_json::from_str(data).ok()?;
    let shipped = OrderShipped {
        order_id: s.order_id,
        carrier: s.carrier,
        tracking_number: s.tracking_number,
        tracking_url: s.tracking_url,
    };
    Some((patch(s.customer), EventData::OrderShipped(shipped)))
}

/// `order.delivered`, `order.cancelled` or (any other `kind`) `order.refunded`.
#[inline]
fn order_ref(kind: &str, data: &str) -> Option<Typed> {
    let o: OrderRef = serde_json::from_str(data).ok()?;
    let data = match kind {
        "order.delivered" => EventData::OrderDelivered {
            order_id: o.order_id,
        },
        "order.cancelled" => EventData::OrderCancelled {
            order_id: o.order_id,
            reason: o.reason,
        },
        _ => EventData::OrderRefunded {
            order_id: o.order_id,
            amount: o.amount?.0,
        },
    };
    Some((patch(o.customer), data))
}

/// `support.ticket_opened` or (any other `kind`) `support.ticket_resolved`.
#[inline]
fn ticket(kind: &str, data: &str) -> Option<Typed> {
    let t: Ticket = serde_json::from_str(data).ok()?;
    let data = if kind == "support.ticket_opened" {
        EventData::TicketOpened {
            ticket_id: t.ticket_id,
            order_id: t.order_id,
            subject: t.subject,
        }
    } else {
        EventData::TicketResolved {
            ticket_id: t.ticket_id,
        }
    };
    Some((patch(t.customer), data))
}

/// `review.submitted`, its rating 1-5.
#[inline]
fn review(data: &str) -> Option<Typed> {
    let r: Review = serde_json::from_str(data).ok()?;
    if !(1..=5).contains(&r.rating) {
        return None;
    }
    let data = EventData::ReviewSubmitted {
        order_id: r.order_id,
        sku: r.sku,
        rating: r.rating,
    };
    Some((patch(r.customer), data))
}
