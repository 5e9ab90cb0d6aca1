//! CDNOW purchases → CloudEvents, deterministically.
//!
//! The data set (Fader & Hardie; 69,659 purchases by 23,570 customers, 1997-1998) has only
//! customer, date, quantity and value. Everything else is derived from a hash of the order so
//! that the same input always gives the same stream:
//!
//! | derived | rule |
//! |---|---|
//! | customer | `cdnow-NNNNN`, email `cdnow-NNNNN@example.com`; 30% `ko-KR`/`Asia/Seoul`, else `en-US`/`America/New_York` |
//! | birthday | 85% of customers: a day of 1950-1999 (29 February included, in leap years) |
//! | attributes | `tier`: `gold` 10%, `silver` 30%, `bronze` 60% |
//! | order | `cdnow-oNNNNNN` (row number); placed at 09:00-20:59 UTC on the row's date |
//! | category | camera 20%, lens 15%, tripod 10%, memory-card 20%, bag 15%, accessory 20% |
//! | cancelled | 2% of orders, 6 hours after placing (no shipping) |
//! | shipped | 1-2 days after placing; 5% late, 4-5 days after |
//! | delivered | 2-3 days after shipping |
//! | support ticket | 8% of delivered orders: opened 2 days after delivery, resolved 2 days later |
//! | refund | 1% of delivered orders, 5 days after delivery (full amount) |
//! | review | 30% of delivered orders, 16 days after delivery, rating 3-5 |

use std::io::Write;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{Value, json};

use crate::event::Money;
use crate::time::rfc3339;

pub const CATEGORIES: [(&str, u64); 6] = [
    ("camera", 20),
    ("lens", 15),
    ("tripod", 10),
    ("memory-card", 20),
    ("bag", 15),
    ("accessory", 20),
];

/// One parsed row of `CDNOW_master.txt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub customer: String,
    pub date: NaiveDate,
    pub quantity: u32,
    pub value: Money,
}

/// A bad input line: its number and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RowError {
    pub line: usize,
    pub reason: String,
}

/// Parses the whitespace-separated rows; the header line is skipped.
pub fn parse(text: &str) -> Result<Vec<Row>, RowError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0] == "customer_id" {
            continue;
        }
        let err = |reason: &str| RowError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let [customer, date, qty, value] = f[..] else {
            return Err(err(
                "expected 4 columns: customer id, date, number of CDs, dollar value",
            ));
        };
        rows.push(Row {
            customer: customer.to_string(),
            date: NaiveDate::parse_from_str(date, "%Y%m%d")
                .map_err(|_| err("date is not YYYYMMDD"))?,
            quantity: qty
                .parse()
                .map_err(|_| err("number of CDs is not a whole number"))?,
            value: Money::parse_decimal(value).map_err(|_| err("dollar value is not a decimal"))?,
        });
    }
    Ok(rows)
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalise (splitmix64) so every bit range below is well mixed.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A number in `0..n` from bits of the hash, so derived choices are independent.
fn pick(h: u64, salt: u32, n: u64) -> u64 {
    h.rotate_left(salt * 11) % n
}

/// The customer's birthday, for 85% of them: a day of 1950-1999, 29 February among them.
fn birthday(h: u64) -> Option<NaiveDate> {
    if pick(h, 4, 100) >= 85 {
        return None;
    }
    let year = 1950 + pick(h, 2, 50) as i32;
    let day = 1 + pick(h, 3, 366) as u32;
    NaiveDate::from_yo_opt(year, day).or_else(|| NaiveDate::from_yo_opt(year, 365))
}

/// The customer's loyalty tier (an attribute): gold 10%, silver 30%, bronze 60%.
fn tier(h: u64) -> &'static str {
    match pick(h, 5, 10) {
        0 => "gold",
        1..=3 => "silver",
        _ => "bronze",
    }
}

struct Out {
    time: DateTime<Utc>,
    /// Generation order: ties in time keep a causal order (placed before shipped...).
    seq: usize,
    /// The event as a JSON line (kept as text: a `Value` tree per event is ten times larger).
    event: String,
}

/// All events for `rows` as JSON lines, sorted by time.
pub fn events(rows: &[Row]) -> Vec<String> {
    generate(rows, Duration::zero())
}

/// A live snapshot for demos: every time moved so the latest purchase happens at `end`, and
/// the events that would come after `end` left out (they have not happened yet). Recent
/// orders are then still in their journeys; 1997 dates would all be history, which enrols
/// nobody in marketing.
pub fn events_ending_at(rows: &[Row], end: DateTime<Utc>) -> Vec<String> {
    let mut probe = Vec::with_capacity(rows.len() * 4);
    for (i, row) in rows.iter().enumerate() {
        order_events(i, row, Duration::zero(), &mut probe);
    }
    let last_order = probe
        .iter()
        .filter(|o| o.event.contains("\"order.placed\""))
        .map(|o| o.time)
        .max();
    let shift = last_order.map_or(Duration::zero(), |t| end - t);
    let mut out: Vec<Out> = Vec::with_capacity(probe.len());
    for (i, row) in rows.iter().enumerate() {
        order_events(i, row, shift, &mut out);
    }
    out.retain(|o| o.time <= end);
    out.sort_by_key(|a| (a.time, a.seq));
    out.into_iter().map(|o| o.event).collect()
}

fn generate(rows: &[Row], shift: Duration) -> Vec<String> {
    let mut out: Vec<Out> = Vec::with_capacity(rows.len() * 4);
    for (i, row) in rows.iter().enumerate() {
        order_events(i, row, shift, &mut out);
    }
    out.sort_by_key(|a| (a.time, a.seq));
    out.into_iter().map(|o| o.event).collect()
}

/// Writes the events as JSON Lines, moved to end at `end` if given; returns how many.
pub fn write_events(
    rows: &[Row],
    end: Option<DateTime<Utc>>,
    w: &mut impl Write,
) -> std::io::Result<usize> {
    let evs = match end {
        Some(end) => events_ending_at(rows, end),
        None => events(rows),
    };
    for e in &evs {
        w.write_all(e.as_bytes())?;
        w.write_all(b"\n")?;
    }
    Ok(evs.len())
}

fn event(
    out: &mut Vec<Out>,
    id: String,
    source: &str,
    kind: &str,
    time: DateTime<Utc>,
    subject: &str,
    data: Value,
) {
    let seq = out.len();
    out.push(Out {
        time,
        seq,
        event: json!({
            "specversion": "1.0", "id": id, "source": source, "type": kind,
            "time": rfc3339(time), "subject": subject, "data": data,
        })
        .to_string(),
    });
}

/// Every event of the row's order, in causal order: placed, then cancelled or shipped and
/// delivered, then a ticket, a refund, a review as the hash picks.
fn order_events(i: usize, row: &Row, shift: Duration, out: &mut Vec<Out>) {
    let order = Order::new(i, row, shift);
    order.placed(out);
    if pick(order.h, 4, 100) < 2 {
        order.cancelled(out);
        return;
    }
    let shipped = order.shipped(out);
    let delivered = order.delivered(shipped, out);
    if pick(order.h, 9, 100) < 8 {
        order.ticket(delivered, out);
    }
    if pick(order.h, 10, 100) < 1 {
        order.refunded(delivered, out);
    }
    if pick(order.h, 11, 100) < 30 {
        order.review(delivered, out);
    }
}

/// What every event of one row's order shares; the other choices are picked from `h` as
/// each event needs them.
struct Order<'a> {
    row: &'a Row,
    /// The row's number, from 1: in the order, tracking and ticket ids.
    number: usize,
    customer: String,
    order_id: String,
    /// The hash of `order_id`.
    h: u64,
    category: &'static str,
    model: u64,
    placed_at: DateTime<Utc>,
}

impl Order<'_> {
    /// The order of row `i`, placed on the row's date (moved by `shift`).
    fn new(i: usize, row: &Row, shift: Duration) -> Order<'_> {
        let order_id = format!("cdnow-o{:06}", i + 1);
        let h = fnv(&order_id);
        let placed_at = Utc.from_utc_datetime(&row.date.and_hms_opt(9, 0, 0).unwrap_or_default())
            + Duration::minutes(pick(h, 3, 12 * 60) as i64)
            + shift;
        Order {
            row,
            number: i + 1,
            customer: format!("cdnow-{}", row.customer),
            order_id,
            h,
            category: category_of(pick(h, 1, 100)),
            model: pick(h, 2, 5) + 1,
            placed_at,
        }
    }

    /// `order.placed`: one item of the row's quantity and value, and the customer's profile.
    fn placed(&self, out: &mut Vec<Out>) {
        let (category, model) = (self.category, self.model);
        let qty = self.row.quantity.max(1);
        let unit = self.row.value.per_unit(qty);
        event(
            out,
            format!("{}-placed", self.order_id),
            "/cdnow/checkout",
            "order.placed",
            self.placed_at,
            &self.customer,
            json!({
                "order_id": self.order_id,
                "items": [{
                    "sku": format!("{category}-{model}"), "name": format!("{} model {model}", title(category)),
                    "category": category, "quantity": qty, "unit_price": unit.to_string(),
                }],
                "total": self.row.value.to_string(), "currency": "USD",
                "customer": self.profile(),
            }),
        );
    }

    /// The customer's `data.customer`: 30% of customers (by the hash of their id) are Korean.
    fn profile(&self) -> Value {
        let korean = pick(fnv(&self.customer), 0, 10) < 3;
        let (locale, tz) = if korean {
            ("ko-KR", "Asia/Seoul")
        } else {
            ("en-US", "America/New_York")
        };
        let name = if korean {
            format!("고객 {}", self.row.customer)
        } else {
            format!("Customer {}", self.row.customer)
        };
        let email = format!("{}@example.com", self.customer);
        let h = fnv(&self.customer);
        let mut profile = json!({"email": email, "name": name, "locale": locale, "timezone": tz,
            "attributes": {"tier": tier(h)}});
        if let Some(birthday) = birthday(h) {
            profile["birthday"] = json!(birthday.format("%Y-%m-%d").to_string());
        }
        profile
    }

    /// `order.cancelled`, 6 hours after placing.
    fn cancelled(&self, out: &mut Vec<Out>) {
        let at = self.placed_at + Duration::hours(6);
        let data = json!({"order_id": self.order_id, "reason": "customer request"});
        event(
            out,
            format!("{}-cancelled", self.order_id),
            "/cdnow/orders",
            "order.cancelled",
            at,
            &self.customer,
            data,
        );
    }

    /// `order.shipped`, 1-2 days after placing (5% late: 4-5 days); returns when.
    fn shipped(&self, out: &mut Vec<Out>) -> DateTime<Utc> {
        let (h, order_id) = (self.h, &self.order_id);
        let late = pick(h, 5, 100) < 5;
        let ship_hours = if late { 96 } else { 24 } + pick(h, 6, 24) as i64;
        let shipped = self.placed_at + Duration::hours(ship_hours);
        let carrier = ["UPS", "FedEx", "USPS", "CJ Logistics"][pick(h, 7, 4) as usize];
        let tracking = format!("TRK{:06}", self.number);
        event(
            out,
            format!("{order_id}-shipped"),
            "/cdnow/warehouse",
            "order.shipped",
            shipped,
            &self.customer,
            json!({
                "order_id": order_id, "carrier": carrier, "tracking_number": tracking,
                "tracking_url": format!("https://track.example.com/{tracking}"),
            }),
        );
        shipped
    }

    /// `order.delivered`, 2-3 days after shipping; returns when.
    fn delivered(&self, shipped: DateTime<Utc>, out: &mut Vec<Out>) -> DateTime<Utc> {
        let delivered = shipped + Duration::hours(48 + pick(self.h, 8, 24) as i64);
        event(
            out,
            format!("{}-delivered", self.order_id),
            "/cdnow/warehouse",
            "order.delivered",
            delivered,
            &self.customer,
            json!({"order_id": self.order_id}),
        );
        delivered
    }

    /// A support ticket opened 2 days after delivery and resolved 2 days later.
    fn ticket(&self, delivered: DateTime<Utc>, out: &mut Vec<Out>) {
        let ticket = format!("T{:06}", self.number);
        let opened = delivered + Duration::days(2);
        event(
            out,
            format!("{ticket}-opened"),
            "/cdnow/support",
            "support.ticket_opened",
            opened,
            &self.customer,
            json!({"ticket_id": ticket, "order_id": self.order_id, "subject": "Question about my order"}),
        );
        event(
            out,
            format!("{ticket}-resolved"),
            "/cdnow/support",
            "support.ticket_resolved",
            opened + Duration::days(2),
            &self.customer,
            json!({"ticket_id": ticket}),
        );
    }

    /// `order.refunded` of the full amount, 5 days after delivery.
    fn refunded(&self, delivered: DateTime<Utc>, out: &mut Vec<Out>) {
        event(
            out,
            format!("{}-refunded", self.order_id),
            "/cdnow/orders",
            "order.refunded",
            delivered + Duration::days(5),
            &self.customer,
            json!({"order_id": self.order_id, "amount": self.row.value.to_string()}),
        );
    }

    /// `review.submitted` of the item, rated 3-5, 16 days after delivery.
    fn review(&self, delivered: DateTime<Utc>, out: &mut Vec<Out>) {
        let rating = 3 + pick(self.h, 12, 3);
        let sku = format!("{}-{}", self.category, self.model);
        event(
            out,
            format!("{}-review", self.order_id),
            "/cdnow/reviews",
            "review.submitted",
            delivered + Duration::days(16),
            &self.customer,
            json!({"order_id": self.order_id, "sku": sku, "rating": rating}),
        );
    }
}

fn category_of(p: u64) -> &'static str {
    let mut acc = 0;
    for (name, share) in CATEGORIES {
        acc += share;
        if p < acc {
            return name;
        }
    }
    "accessory"
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
