//! Bytes → [`Event`], or the precise reason it is not one.
//!
//! Every value an event carries is untrusted (SPEC §7). Besides the shape of the envelope and
//! of `data`, [`check`] holds identifiers to 256 bytes without control characters, keeps NUL
//! out of every text (PostgreSQL cannot store it), and event times inside 1970-9999. Amounts
//! are read from their JSON text, never through a float. A key given twice in an object is
//! refused rather than one of the two silently winning.

use chrono::{DateTime, Datelike, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::money::MoneyError;
use super::{
    CustomerPatch, Event, EventData, FeedbackKind, Item, Money, OrderPlaced, OrderShipped,
};

/// Messages above this size are refused before parsing (1 MiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// The longest identifier (`subject`, `id`, `source`, `order_id`, `ticket_id`, `sku`).
pub const MAX_ID_BYTES: usize = 256;

/// Why bytes are not a valid event. The text is the dead-letter reason; values quoted in it
/// are cut short and their control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("message is {size} bytes, over the {max}-byte limit")]
    Oversized { size: usize, max: usize },
    #[error("not valid UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing required attribute `{0}`")]
    MissingAttribute(&'static str),
    #[error("attribute `{0}` must be a non-empty string")]
    BadAttribute(&'static str),
    #[error("unsupported specversion `{}` (expected \"1.0\")", shown(.0))]
    SpecVersion(String),
    #[error("attribute `time` is not an RFC 3339 timestamp: `{}`", shown(.0))]
    BadTime(String),
    #[error("attribute `time` `{}` is outside the years 1970 to 9999", shown(.0))]
    TimeOutOfRange(String),
    #[error("`data` must be a JSON object")]
    DataNotObject,
    #[error("missing required field `{field}` for {kind}")]
    MissingField { field: String, kind: String },
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("`{field}` {reason}")]
    Amount { field: String, reason: MoneyError },
    #[error("`{}` appears twice: keys must be unique", shown(.0))]
    DuplicateKey(String),
    #[error("{field} is {len} bytes; identifiers are at most 256 bytes")]
    IdTooLong { field: String, len: usize },
    #[error("{0} is empty")]
    EmptyId(String),
    #[error(
        "{field} contains the control character U+{code:04X} at byte {at}; identifiers may not contain control characters"
    )]
    ControlCharacter { field: String, code: u32, at: usize },
    #[error("`{}` contains a NUL character (U+0000)", shown(.0))]
    Nul(String),
    #[error("a text of the event contains a NUL character (U+0000)")]
    NulElsewhere,
}

impl EventError {
    /// The reason's class, for metrics and `aftercare dead-letters --reason`.
    pub fn class(&self) -> &'static str {
        match self {
            EventError::Oversized { .. } => "too_large",
            EventError::NotUtf8(_) => "not_utf8",
            EventError::NotJson(_) => "not_json",
            EventError::NotObject => "not_object",
            EventError::MissingAttribute(_) | EventError::BadAttribute(_) => "attribute",
            EventError::SpecVersion(_) => "specversion",
            EventError::BadTime(_) | EventError::TimeOutOfRange(_) => "time",
            EventError::DataNotObject
            | EventError::MissingField { .. }
            | EventError::WrongType { .. }
            | EventError::DuplicateKey(_) => "data",
            EventError::Amount { .. } => "amount",
            EventError::IdTooLong { .. }
            | EventError::ControlCharacter { .. }
            | EventError::EmptyId(_) => "identifier",
            EventError::Nul(_) | EventError::NulElsewhere => "nul",
        }
    }
}

/// A value quoted in a reason: at most 64 characters, control and formatting characters
/// escaped, addresses hidden (the reason is a Kafka header and a log field).
fn shown(s: &str) -> String {
    let mut cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    crate::redact::text(&cut)
}

impl Event {
    /// Structured binding: the whole CloudEvent is one JSON object.
    pub fn from_structured(bytes: &[u8]) -> Result<Event, EventError> {
        check_size(bytes)?;
        let text = utf8(bytes)?;
        let event = match super::fast::parse(text) {
            Some(ev) => ev,
            None => Event::from_structured_text(text)?,
        };
        check(&event)?;
        if escaped_nul(text) {
            return Err(EventError::NulElsewhere);
        }
        Ok(event)
    }

    /// The precise path: every field checked by name, every problem worded.
    fn from_structured_text(text: &str) -> Result<Event, EventError> {
        let members = object(text).map_err(|e| match e {
            Shape::NotObject => EventError::NotObject,
            Shape::Json(e) => EventError::NotJson(e),
        })?;
        let mut env = Fields::new(members, String::new(), "")?;
        let attrs = Attrs {
            specversion: env.attr("specversion")?,
            id: env.attr("id")?,
            source: env.attr("source")?,
            kind: env.attr("type")?,
            time: env.attr("time")?,
            subject: env.attr("subject")?,
        };
        let data = env.take("data")?;
        build(attrs, data)
    }

    /// Binary binding: attributes in `ce_*` headers, the message value is `data`.
    pub fn from_binary<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        value: &[u8],
    ) -> Result<Event, EventError> {
        check_size(value)?;
        let attrs = Attrs::from_headers(headers)?;
        let (event, text) = if value.iter().all(u8::is_ascii_whitespace) {
            (build(attrs, None)?, "")
        } else {
            let text = utf8(value)?;
            let data: &RawValue =
                serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
            (build(attrs, Some(data))?, text)
        };
        check(&event)?;
        if escaped_nul(text) {
            return Err(EventError::NulElsewhere);
        }
        Ok(event)
    }
}

/// The CloudEvents attributes of the binary binding's headers, by name.
const CE_NAMES: [&str; 6] = ["specversion", "id", "source", "type", "time", "subject"];

struct Attrs {
    specversion: String,
    id: String,
    source: String,
    kind: String,
    time: String,
    subject: String,
}

impl Attrs {
    /// The attributes of the binary binding, each from its `ce_*` header: every one given, a
    /// non-empty UTF-8 text.
    fn from_headers<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<Attrs, EventError> {
        let [specversion, id, source, kind, time, subject] = ce_headers(headers)?;
        let need = |v: Option<String>, name: &'static str| -> Result<String, EventError> {
            let v = v.ok_or(EventError::MissingAttribute(name))?;
            if v.is_empty() {
                return Err(EventError::BadAttribute(name));
            }
            Ok(v)
        };
        Ok(Attrs {
            specversion: need(specversion, "specversion")?,
            id: need(id, "id")?,
            source: need(source, "source")?,
            kind: need(kind, "type")?,
            time: need(time, "time")?,
            subject: need(subject, "subject")?,
        })
    }
}

/// The value of each header of [`CE_NAMES`] (the last, if one is given twice); other headers
/// are left alone.
fn ce_headers<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
) -> Result<[Option<String>; 6], EventError> {
    let mut found: [Option<String>; 6] = Default::default();
    for (name, raw) in headers {
        let Some(attr) = name.strip_prefix("ce_") else {
            continue;
        };
        if let Some(i) = CE_NAMES.iter().position(|n| *n == attr) {
            let text =
                std::str::from_utf8(raw).map_err(|_| EventError::BadAttribute(CE_NAMES[i]))?;
            found[i] = Some(text.to_string());
        }
    }
    Ok(found)
}

fn check_size(bytes: &[u8]) -> Result<(), EventError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(EventError::Oversized {
            size: bytes.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, EventError> {
    std::str::from_utf8(bytes).map_err(|e| EventError::NotUtf8(e.valid_up_to()))
}

/// The members of a JSON object in order, their values not yet parsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

enum Shape {
    NotObject,
    Json(String),
}

/// `text` as an object's members: not JSON at all, or JSON but not an object.
fn object(text: &str) -> Result<Members<'_>, Shape> {
    match serde_json::from_str::<Members>(text) {
        Ok(m) => Ok(m),
        Err(e) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(Shape::NotObject),
            Err(_) => Err(Shape::Json(e.to_string())),
        },
    }
}

fn build(a: Attrs, data: Option<&RawValue>) -> Result<Event, EventError> {
    if a.specversion != "1.0" {
        return Err(EventError::SpecVersion(a.specversion));
    }
    let time = parse_time(&a.time)?;
    let (customer, data) = typed_data(&a.kind, data)?;
    Ok(Event {
        id: a.id,
        source: a.source,
        kind: a.kind,
        time,
        subject: a.subject.into(),
        customer,
        data,
    })
}

/// An RFC 3339 `time` in the years 1970-9999 (in UTC).
pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, EventError> {
    let time = DateTime::parse_from_rfc3339(text)
        .map_err(|_| EventError::BadTime(text.to_string()))?
        .with_timezone(&Utc);
    if !(1970..=9999).contains(&time.year()) {
        return Err(EventError::TimeOutOfRange(text.to_string()));
    }
    Ok(time)
}

/// Reads fields out of one JSON object, naming them by their full path in errors.
struct Fields<'a, 'k> {
    members: Vec<(String, &'a RawValue)>,
    /// `data` or `data.items[2]`; empty for the envelope.
    path: String,
    kind: &'k str,
}

impl<'a, 'k> Fields<'a, 'k> {
    fn new(m: Members<'a>, path: String, kind: &'k str) -> Result<Fields<'a, 'k>, EventError> {
        Ok(Fields {
            members: m.0,
            path,
            kind,
        })
    }

    /// The member named `key`, refused if the object gives it twice. Keys aftercare does not
    /// read may repeat, as the typed fast path lets them: both paths must agree.
    fn member(&mut self, key: &str) -> Result<Option<&'a RawValue>, EventError> {
        let Some(i) = self.members.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        let (_, v) = self.members.swap_remove(i);
        if self.members.iter().any(|(k, _)| k == key) {
            let field = if self.path.is_empty() {
                key.to_string()
            } else {
                self.field(key)
            };
            return Err(EventError::DuplicateKey(field));
        }
        Ok(Some(v))
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn missing(&self, key: &str) -> EventError {
        EventError::MissingField {
            field: self.field(key),
            kind: self.kind.to_string(),
        }
    }

    fn wrong(&self, key: &str, expected: &'static str) -> EventError {
        EventError::WrongType {
            field: self.field(key),
            expected,
        }
    }

    /// The member's value, `None` when absent or `null`.
    fn take(&mut self, key: &str) -> Result<Option<&'a RawValue>, EventError> {
        Ok(self.member(key)?.filter(|v| v.get() != "null"))
    }

    /// A CloudEvents attribute: a non-empty string.
    fn attr(&mut self, name: &'static str) -> Result<String, EventError> {
        let raw = self.take(name)?.ok_or(EventError::MissingAttribute(name))?;
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) if !s.is_empty() => Ok(s),
            _ => Err(EventError::BadAttribute(name)),
        }
    }

    fn opt_str(&mut self, key: &str) -> Result<Option<String>, EventError> {
        match self.take(key)? {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|_| self.wrong(key, "a string")),
        }
    }

    fn str(&mut self, key: &str) -> Result<String, EventError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn value(&mut self, key: &str) -> Result<&'a RawValue, EventError> {
        self.take(key)?.ok_or_else(|| self.missing(key))
    }

    /// A JSON number or a decimal string, read exactly from its text.
    fn money(&mut self, key: &str) -> Result<Money, EventError> {
        let raw = self.value(key)?;
        amount(raw).map_err(|reason| EventError::Amount {
            field: self.field(key),
            reason,
        })
    }

    fn number(&mut self, key: &str, expected: &'static str) -> Result<f64, EventError> {
        let raw = self.value(key)?;
        serde_json::from_str::<f64>(raw.get())
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| self.wrong(key, expected))
    }

    fn uint(&mut self, key: &str, max: u64, expected: &'static str) -> Result<u64, EventError> {
        let raw = self.value(key)?;
        serde_json::from_str::<u64>(raw.get())
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(|| self.wrong(key, expected))
    }

    /// A nested object, read the same way.
    fn object(&mut self, key: &str, raw: &'a RawValue) -> Result<Fields<'a, 'k>, EventError> {
        let members =
            serde_json::from_str::<Members>(raw.get()).map_err(|_| self.wrong(key, "an object"))?;
        Fields::new(members, self.field(key), self.kind)
    }

    /// The rest of the object, as JSON (unknown event types keep their data).
    fn into_value(self) -> Value {
        let mut map = Map::new();
        for (k, v) in self.members {
            map.insert(k, serde_json::from_str(v.get()).unwrap_or(Value::Null));
        }
        Value::Object(map)
    }
}

/// An amount from its JSON text: a number, or a string holding a decimal.
pub(super) fn amount(raw: &RawValue) -> Result<Money, MoneyError> {
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| MoneyError::NotDecimal)?;
        return Money::parse_decimal(&s);
    }
    Money::parse_json_number(text)
}

/// Splits off `data.customer` and types the rest by event type.
fn typed_data(
    kind: &str,
    data: Option<&RawValue>,
) -> Result<(Option<CustomerPatch>, EventData), EventError> {
    let members = match data {
        None => Members(Vec::new()),
        Some(raw) if raw.get() == "null" => Members(Vec::new()),
        Some(raw) => match serde_json::from_str::<Members>(raw.get()) {
            Ok(m) => m,
            // Unknown types may carry any JSON as data.
            Err(_) if !is_known(kind) => {
                let value = serde_json::from_str(raw.get())
                    .map_err(|e| EventError::NotJson(e.to_string()))?;
                return Ok((None, EventData::Other(value)));
            }
            Err(_) => return Err(EventError::DataNotObject),
        },
    };
    let mut f = Fields::new(members, "data".into(), kind)?;
    let customer = customer_patch(&mut f)?;
    let data = match kind {
        "order.placed" => placed_data(&mut f)?,
        "order.shipped" => shipped_data(&mut f)?,
        "order.delivered" | "order.cancelled" | "order.refunded" => order_data(kind, &mut f)?,
        "support.ticket_opened" | "support.ticket_resolved" => ticket_data(kind, &mut f)?,
        "feedback.submitted" => feedback_data(&mut f)?,
        "review.submitted" => review_data(&mut f)?,
        "customer.updated" => EventData::CustomerUpdated,
        "customer.erased" => EventData::CustomerErased,
        "customer.unsubscribed" | "customer.subscribed" => preference_data(kind, &mut f)?,
        _ => other_data(f, customer.as_ref()),
    };
    Ok((customer, data))
}

/// `order.placed`: the order, its items and its total.
fn placed_data(f: &mut Fields) -> Result<EventData, EventError> {
    Ok(EventData::OrderPlaced(OrderPlaced {
        order_id: f.str("order_id")?,
        items: items(f)?,
        total: f.money("total")?,
        currency: f.str("currency")?,
        referred_by: f.opt_str("referred_by")?,
        coupon: f.opt_str("coupon")?,
    }))
}

/// `order.shipped`: the carrier and the tracking.
fn shipped_data(f: &mut Fields) -> Result<EventData, EventError> {
    Ok(EventData::OrderShipped(OrderShipped {
        order_id: f.str("order_id")?,
        carrier: f.str("carrier")?,
        tracking_number: f.str("tracking_number")?,
        tracking_url: f.opt_str("tracking_url")?,
    }))
}

/// `order.delivered`, `order.cancelled` or (any other `kind`) `order.refunded`.
fn order_data(kind: &str, f: &mut Fields) -> Result<EventData, EventError> {
    Ok(match kind {
        "order.delivered" => EventData::OrderDelivered {
            order_id: f.str("order_id")?,
        },
        "order.cancelled" => EventData::OrderCancelled {
            order_id: f.str("order_id")?,
            reason: f.opt_str("reason")?,
        },
        _ => EventData::OrderRefunded {
            order_id: f.str("order_id")?,
            amount: f.money("amount")?,
        },
    })
}

/// `support.ticket_opened` or (any other `kind`) `support.ticket_resolved`.
fn ticket_data(kind: &str, f: &mut Fields) -> Result<EventData, EventError> {
    Ok(if kind == "support.ticket_opened" {
        EventData::TicketOpened {
            ticket_id: f.str("ticket_id")?,
            order_id: f.opt_str("order_id")?,
            subject: f.opt_str("subject")?,
        }
    } else {
        EventData::TicketResolved {
            ticket_id: f.str("ticket_id")?,
        }
    })
}

/// `feedback.submitted`: an NPS or CSAT answer, its score on the scale of its kind.
fn feedback_data(f: &mut Fields) -> Result<EventData, EventError> {
    let kind = match f.str("kind")?.as_str() {
        "nps" => FeedbackKind::Nps,
        "csat" => FeedbackKind::Csat,
        _ => return Err(f.wrong("kind", "\"nps\" or \"csat\"")),
    };
    Ok(EventData::FeedbackSubmitted {
        score: score(f, kind)?,
        kind,
        comment: f.opt_str("comment")?,
    })
}

/// `review.submitted`, its rating 1-5.
fn review_data(f: &mut Fields) -> Result<EventData, EventError> {
    Ok(EventData::ReviewSubmitted {
        order_id: f.str("order_id")?,
        sku: f.str("sku")?,
        rating: match f.uint("rating", 5, "an integer from 1 to 5")? {
            0 => return Err(f.wrong("rating", "an integer from 1 to 5")),
            r => r as u8,
        },
    })
}

/// `customer.unsubscribed` or (any other `kind`) `customer.subscribed`, with the categories.
fn preference_data(kind: &str, f: &mut Fields) -> Result<EventData, EventError> {
    let categories = categories(f)?;
    Ok(if kind == "customer.unsubscribed" {
        EventData::CustomerUnsubscribed { categories }
    } else {
        EventData::CustomerSubscribed { categories }
    })
}

/// The data of a type aftercare does not model, as JSON; `customer`, already split off, is
/// put back so that it stays visible there.
fn other_data(f: Fields, customer: Option<&CustomerPatch>) -> EventData {
    let mut map = match f.into_value() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(c) = customer {
        // Keep `customer` visible in the raw data of unknown types too.
        map.insert(
            "customer".into(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        );
    }
    EventData::Other(Value::Object(map))
}

/// NPS answers are whole numbers 0-10 (the question's scale); CSAT answers any number 0-10.
fn score(f: &mut Fields, kind: FeedbackKind) -> Result<f64, EventError> {
    match kind {
        FeedbackKind::Nps => {
            let expected = "a whole number from 0 to 10 for nps";
            let v = f.number("score", expected)?;
            if (0.0..=10.0).contains(&v) && v.fract() == 0.0 {
                Ok(v)
            } else {
                Err(f.wrong("score", expected))
            }
        }
        FeedbackKind::Csat => {
            let expected = "a number from 0 to 10";
            let v = f.number("score", expected)?;
            if (0.0..=10.0).contains(&v) {
                Ok(v)
            } else {
                Err(f.wrong("score", expected))
            }
        }
    }
}

fn is_known(kind: &str) -> bool {
    matches!(
        kind,
        "order.placed"
            | "order.shipped"
            | "order.delivered"
            | "order.cancelled"
            | "order.refunded"
            | "support.ticket_opened"
            | "support.ticket_resolved"
            | "feedback.submitted"
            | "review.submitted"
            | "customer.updated"
            | "customer.erased"
            | "customer.unsubscribed"
            | "customer.subscribed"
    )
}

fn customer_patch(f: &mut Fields) -> Result<Option<CustomerPatch>, EventError> {
    let Some(raw) = f.take("customer")? else {
        return Ok(None);
    };
    let mut c = f.object("customer", raw)?;
    Ok(Some(CustomerPatch {
        email: c.opt_str("email")?,
        name: c.opt_str("name")?,
        locale: c.opt_str("locale")?,
        timezone: c.opt_str("timezone")?,
        birthday: c.opt_str("birthday")?,
        attributes: match c.take("attributes")? {
            None => None,
            Some(raw) => Some(
                serde_json::from_str(raw.get()).map_err(|_| c.wrong("attributes", "an object"))?,
            ),
        },
    }))
}

fn items(f: &mut Fields) -> Result<Vec<Item>, EventError> {
    let raw = f.value("items")?;
    let list: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| f.wrong("items", "a list"))?;
    let mut items = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let path = format!("{}.items[{i}]", f.path);
        let members =
            serde_json::from_str::<Members>(v.get()).map_err(|_| EventError::WrongType {
                field: path.clone(),
                expected: "an object",
            })?;
        let mut it = Fields::new(members, path, f.kind)?;
        items.push(Item {
            sku: it.str("sku")?.into(),
            name: it.str("name")?.into(),
            category: it.str("category")?.into(),
            quantity: it.uint("quantity", u32::MAX as u64, "a whole number")? as u32,
            unit_price: it.money("unit_price")?,
        });
    }
    Ok(items)
}

fn categories(f: &mut Fields) -> Result<Vec<String>, EventError> {
    let expected = "a list of category names, or [\"all\"]";
    let raw = f.value("categories")?;
    let list: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| f.wrong("categories", expected))?;
    list.into_iter()
        .map(|v| serde_json::from_str(v.get()).map_err(|_| f.wrong("categories", expected)))
        .collect()
}

/// What the store and the engine rely on, whichever path parsed the event: identifiers of at
/// most 256 bytes without control characters, and no NUL in any text.
fn check(e: &Event) -> Result<(), EventError> {
    let attr = |name: &str| format!("attribute `{name}`");
    identifier(attr("id"), &e.id)?;
    identifier(attr("source"), &e.source)?;
    identifier(attr("type"), &e.kind)?;
    identifier(attr("subject"), &e.subject)?;
    if let Some(c) = &e.customer {
        check_customer(c)?;
    }
    check_data(e)
}

/// No NUL in the texts of `data.customer`.
fn check_customer(c: &CustomerPatch) -> Result<(), EventError> {
    for (key, v) in [
        ("email", &c.email),
        ("name", &c.name),
        ("locale", &c.locale),
        ("timezone", &c.timezone),
        ("birthday", &c.birthday),
    ] {
        text(&format!("data.customer.{key}"), v.as_deref())?;
    }
    if let Some(attributes) = &c.attributes {
        // A store could not keep a NUL, and PostgreSQL's `jsonb` refuses `\u0000`.
        for (key, v) in attributes {
            let field = format!("data.customer.attributes.{key}");
            text(&field, Some(key))?;
            no_nul(&field, v)?;
        }
    }
    Ok(())
}

/// How an identifier in `data` is named in a reason: `` `data.order_id` ``.
fn data_field(key: &str) -> String {
    format!("`data.{key}`")
}

/// The identifiers and texts of `data`, by event type.
fn check_data(e: &Event) -> Result<(), EventError> {
    match &e.data {
        EventData::OrderPlaced(o) => check_placed(o)?,
        EventData::OrderShipped(s) => check_shipped(s)?,
        EventData::OrderDelivered { order_id } | EventData::OrderRefunded { order_id, .. } => {
            identifier(data_field("order_id"), order_id)?;
        }
        EventData::OrderCancelled { order_id, reason } => {
            identifier(data_field("order_id"), order_id)?;
            text("data.reason", reason.as_deref())?;
        }
        EventData::TicketOpened {
            ticket_id,
            order_id,
            subject,
        } => check_ticket(ticket_id, order_id.as_deref(), subject.as_deref())?,
        EventData::TicketResolved { ticket_id } => identifier(data_field("ticket_id"), ticket_id)?,
        EventData::FeedbackSubmitted { comment, .. } => text("data.comment", comment.as_deref())?,
        EventData::ReviewSubmitted { order_id, sku, .. } => {
            identifier(data_field("order_id"), order_id)?;
            identifier(data_field("sku"), sku)?;
        }
        EventData::CustomerUpdated | EventData::CustomerErased => {}
        EventData::CustomerUnsubscribed { categories }
        | EventData::CustomerSubscribed { categories } => {
            for (i, c) in categories.iter().enumerate() {
                text(&format!("data.categories[{i}]"), Some(c))?;
            }
        }
        EventData::Other(v) => {
            if let Some(o) = e.order_id() {
                identifier(data_field("order_id"), o)?;
            }
            no_nul("data", v)?;
        }
    }
    Ok(())
}

/// `order.placed`: the order and each item's SKU are identifiers; currency, names and
/// categories texts.
fn check_placed(o: &OrderPlaced) -> Result<(), EventError> {
    identifier(data_field("order_id"), &o.order_id)?;
    text("data.currency", Some(&o.currency))?;
    if let Some(r) = &o.referred_by {
        identifier(data_field("referred_by"), r)?;
    }
    if let Some(c) = &o.coupon {
        identifier(data_field("coupon"), c)?;
    }
    for (i, item) in o.items.iter().enumerate() {
        identifier(data_field(&format!("items[{i}].sku")), &item.sku)?;
        text(&format!("data.items[{i}].name"), Some(&item.name))?;
        text(&format!("data.items[{i}].category"), Some(&item.category))?;
    }
    Ok(())
}

/// `order.shipped`: the order is an identifier; carrier and tracking texts.
fn check_shipped(s: &OrderShipped) -> Result<(), EventError> {
    identifier(data_field("order_id"), &s.order_id)?;
    text("data.carrier", Some(&s.carrier))?;
    text("data.tracking_number", Some(&s.tracking_number))?;
    text("data.tracking_url", s.tracking_url.as_deref())
}

/// `support.ticket_opened`: the ticket and the order it is about are identifiers; the
/// subject a text.
fn check_ticket(
    ticket_id: &str,
    order_id: Option<&str>,
    subject: Option<&str>,
) -> Result<(), EventError> {
    identifier(data_field("ticket_id"), ticket_id)?;
    if let Some(o) = order_id {
        identifier(data_field("order_id"), o)?;
    }
    text("data.subject", subject)
}

/// Whether a JSON text escapes a NUL (`\u0000`) inside a string: in a field aftercare does not
/// read (an extension attribute, a key it ignores) — those it reads are named by [`check`].
/// NUL is refused wherever it is, so that both bindings and both parsers agree.
fn escaped_nul(text: &str) -> bool {
    let b = text.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Checks an id given outside an event (a command's argument, a URL) as ids in events are
/// checked (SPEC §7): at most 256 bytes, no control characters.
pub fn check_identifier(field: &str, v: &str) -> Result<(), EventError> {
    if v.is_empty() {
        return Err(EventError::EmptyId(field.to_string()));
    }
    identifier(field.to_string(), v)
}

fn identifier(field: String, v: &str) -> Result<(), EventError> {
    if v.len() > MAX_ID_BYTES {
        return Err(EventError::IdTooLong {
            field,
            len: v.len(),
        });
    }
    if let Some((at, c)) = v
        .char_indices()
        .find(|(_, c)| matches!(*c, '\u{0}'..='\u{1f}' | '\u{7f}'))
    {
        return Err(EventError::ControlCharacter {
            field,
            code: c as u32,
            at,
        });
    }
    Ok(())
}

fn text(field: &str, v: Option<&str>) -> Result<(), EventError> {
    match v {
        Some(s) if s.contains('\0') => Err(EventError::Nul(field.to_string())),
        _ => Ok(()),
    }
}

/// No NUL in any string of `v`, keys included. Depth is bounded by the JSON parser's own
/// recursion limit (128).
fn no_nul(path: &str, v: &Value) -> Result<(), EventError> {
    match v {
        Value::String(s) => text(path, Some(s)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| no_nul(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let field = format!("{path}.{k}");
            text(&field, Some(k))?;
            no_nul(&field, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn structured(json: &str) -> Result<Event, EventError> {
        Event::from_structured(json.as_bytes())
    }

    const PLACED: &str = r#"{"specversion":"1.0","id":"e1","source":"/shop","type":"order.placed",
        "time":"2024-03-01T10:00:00+09:00","subject":"c1",
        "data":{"order_id":"o1","total":"30.00","currency":"USD",
          "items":[{"sku":"cam-1","name":"Camera","category":"camera","quantity":1,"unit_price":30}],
          "customer":{"email":"a@example.com","locale":"ko-KR"}}}"#;

    #[test]
    fn structured_order_placed_is_typed() {
        let e = structured(PLACED).unwrap();
        assert_eq!(e.kind, "order.placed");
        assert_eq!(e.time.to_rfc3339(), "2024-03-01T01:00:00+00:00");
        assert_eq!(e.order_id(), Some("o1"));
        let EventData::OrderPlaced(o) = &e.data else {
            panic!("{:?}", e.data)
        };
        assert_eq!(o.total, Money::parse_decimal("30").unwrap());
        assert_eq!(o.items[0].unit_price, Money::parse_decimal("30").unwrap());
        assert_eq!(e.customer.unwrap().locale.as_deref(), Some("ko-KR"));
    }

    #[test]
    fn binary_binding_gives_the_same_event() {
        let data = r#"{"order_id":"o1","total":"30.00","currency":"USD",
          "items":[{"sku":"cam-1","name":"Camera","category":"camera","quantity":1,"unit_price":30}],
          "customer":{"email":"a@example.com","locale":"ko-KR"}}"#;
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"e1"),
            ("ce_source", b"/shop"),
            ("ce_type", b"order.placed"),
            ("ce_time", b"2024-03-01T10:00:00+09:00"),
            ("ce_subject", b"c1"),
            ("content-type", b"application/json"),
        ];
        let e = Event::from_binary(headers, data.as_bytes()).unwrap();
        assert_eq!(e, structured(PLACED).unwrap());
    }

    #[test]
    fn every_malformed_input_has_a_precise_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe", "not valid UTF-8 (invalid byte at offset 0)"),
            (b"{", "not valid JSON: EOF while parsing an object at line 1 column 1"),
            (b"[1]", "not a JSON object"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"x","time":"2024-01-01T00:00:00Z"}"#,
             "missing required attribute `subject`"),
            (br#"{"specversion":"0.3","id":"e","source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c"}"#,
             "unsupported specversion `0.3` (expected \"1.0\")"),
            (br#"{"specversion":"1.0","id":7,"source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c"}"#,
             "attribute `id` must be a non-empty string"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"x","time":"yesterday","subject":"c"}"#,
             "attribute `time` is not an RFC 3339 timestamp: `yesterday`"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"order.shipped","time":"2024-01-01T00:00:00Z","subject":"c","data":{"order_id":"o"}}"#,
             "missing required field `data.carrier` for order.shipped"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"order.placed","time":"2024-01-01T00:00:00Z","subject":"c","data":{"order_id":"o","items":[{"sku":"a","name":"n","category":"c","quantity":"two","unit_price":1}],"total":1,"currency":"USD"}}"#,
             "`data.items[0].quantity` must be a whole number"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"order.refunded","time":"2024-01-01T00:00:00Z","subject":"c","data":{"order_id":"o","amount":"ten"}}"#,
             "`data.amount` must be a number or a decimal string like \"10.00\""),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"review.submitted","time":"2024-01-01T00:00:00Z","subject":"c","data":{"order_id":"o","sku":"k","rating":6}}"#,
             "`data.rating` must be an integer from 1 to 5"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"customer.updated","time":"2024-01-01T00:00:00Z","subject":"c","data":{"customer":{"email":5}}}"#,
             "`data.customer.email` must be a string"),
            (br#"{"specversion":"1.0","id":"e","source":"s","type":"order.delivered","time":"2024-01-01T00:00:00Z","subject":"c","data":"x"}"#,
             "`data` must be a JSON object"),
        ];
        for (input, reason) in cases {
            let err = Event::from_structured(input).unwrap_err();
            assert_eq!(
                err.to_string(),
                *reason,
                "input {}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// The typed fast path and the precise path agree on every well-formed event.
    #[test]
    fn fast_and_precise_paths_agree() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/cdnow/CDNOW_master.txt"
        ))
        .unwrap();
        let rows = crate::cdnow::parse(&text).unwrap();
        let mut seen_kinds = std::collections::BTreeSet::new();
        for line in crate::cdnow::events(&rows[..3000]) {
            let fast = super::super::fast::parse(&line).expect("fast path takes CDNOW events");
            assert_eq!(fast, Event::from_structured_text(&line).unwrap());
            seen_kinds.insert(fast.kind);
        }
        assert_eq!(seen_kinds.len(), 8, "{seen_kinds:?}");
        let extra = structured(PLACED).unwrap();
        assert_eq!(Some(extra.clone()), super::super::fast::parse(PLACED));
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            Event::from_structured(&big).unwrap_err().to_string(),
            format!(
                "message is {} bytes, over the 1048576-byte limit",
                MAX_EVENT_BYTES + 1
            )
        );
    }

    #[test]
    fn unknown_types_keep_raw_data_and_extensions_are_accepted() {
        let e = structured(r#"{"specversion":"1.0","id":"e","source":"s","type":"loyalty.tier_changed",
            "time":"2024-01-01T00:00:00Z","subject":"c","traceparent":"00-ab","data":{"tier":"gold","order_id":"o9"}}"#)
        .unwrap();
        assert_eq!(e.order_id(), Some("o9"));
        assert!(matches!(&e.data, EventData::Other(v) if v["tier"] == "gold"));
    }

    fn placed_with(f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(PLACED).unwrap();
        f(&mut v);
        v.to_string().into_bytes()
    }

    fn reason(bytes: &[u8]) -> String {
        Event::from_structured(bytes).unwrap_err().to_string()
    }

    #[test]
    fn an_erasure_needs_no_data() {
        let e = Event::from_structured(
            br#"{"specversion":"1.0","id":"x1","source":"/privacy","type":"customer.erased","time":"2024-01-01T00:00:00Z","subject":"ann"}"#,
        )
        .unwrap();
        assert_eq!(e.data, EventData::CustomerErased);
        assert_eq!(&*e.subject, "ann");
    }

    #[test]
    fn identifiers_are_bounded_and_free_of_control_characters() {
        let long = "x".repeat(10 * 1024);
        assert_eq!(
            reason(&placed_with(|v| v["subject"] = json!(long))),
            "attribute `subject` is 10240 bytes; identifiers are at most 256 bytes"
        );
        assert_eq!(
            reason(&placed_with(|v| v["subject"] = json!("victim\nall"))),
            "attribute `subject` contains the control character U+000A at byte 6; identifiers may not contain control characters"
        );
        assert_eq!(
            reason(&placed_with(|v| v["id"] = json!("a\u{0}b"))),
            "attribute `id` contains the control character U+0000 at byte 1; identifiers may not contain control characters"
        );
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["items"][0]["sku"] = json!("k\u{7f}")
            )),
            "`data.items[0].sku` contains the control character U+007F at byte 1; identifiers may not contain control characters"
        );
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["order_id"] = json!("o".repeat(257))
            )),
            "`data.order_id` is 257 bytes; identifiers are at most 256 bytes"
        );
        // The referrer is a customer id: held to the same rules, on the fast path too.
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["referred_by"] = json!("ann\u{0}")
            )),
            "`data.referred_by` contains the control character U+0000 at byte 3; identifiers may not contain control characters"
        );
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["referred_by"] = json!("r".repeat(300))
            )),
            "`data.referred_by` is 300 bytes; identifiers are at most 256 bytes"
        );
        assert_eq!(
            reason(&placed_with(|v| v["data"]["referred_by"] = json!(7))),
            "`data.referred_by` must be a string"
        );
        // A coupon code used on the order: an identifier as well.
        assert_eq!(
            reason(&placed_with(|v| v["data"]["coupon"] = json!("TRI-\u{7}"))),
            "`data.coupon` contains the control character U+0007 at byte 4; identifiers may not contain control characters"
        );
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["coupon"] = json!("C".repeat(257))
            )),
            "`data.coupon` is 257 bytes; identifiers are at most 256 bytes"
        );
        assert_eq!(
            reason(&placed_with(|v| v["data"]["coupon"] = json!(1e300))),
            "`data.coupon` must be a string"
        );
        // Attributes: an object, with no NUL anywhere in it (keys included).
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["customer"]["attributes"] = json!({"tier": {"a\u{0}": 1}})
            )),
            "`data.customer.attributes.tier.a\\u{0}` contains a NUL character (U+0000)"
        );
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["customer"]["attributes"] = json!(["renewal"])
            )),
            "`data.customer.attributes` must be an object"
        );
        let referred =
            Event::from_structured(&placed_with(|v| v["data"]["referred_by"] = json!("bob")));
        let Ok(Event {
            data: EventData::OrderPlaced(o),
            ..
        }) = referred
        else {
            panic!("{referred:?}");
        };
        assert_eq!(o.referred_by.as_deref(), Some("bob"));
        // 256 bytes of multi-byte characters pass; text outside identifiers may hold newlines.
        let ok = placed_with(|v| {
            v["subject"] = json!("é".repeat(128));
            v["data"]["customer"]["name"] = json!("Ann\nLee");
        });
        assert!(Event::from_structured(&ok).is_ok());
    }

    #[test]
    fn binary_headers_are_held_to_the_same_rules() {
        let headers = |subject: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
            vec![
                ("ce_specversion", b"1.0"),
                ("ce_id", b"e1"),
                ("ce_source", b"/shop"),
                ("ce_type", b"order.delivered"),
                ("ce_time", b"2024-03-01T10:00:00Z"),
                ("ce_subject", subject),
            ]
        };
        let data = br#"{"order_id":"o1"}"#;
        assert_eq!(
            Event::from_binary(headers(b"a\0b"), data)
                .unwrap_err()
                .to_string(),
            "attribute `subject` contains the control character U+0000 at byte 1; identifiers may not contain control characters"
        );
        assert_eq!(
            Event::from_binary(headers(b"c1"), br#"{"order_id":"o\u0000"}"#)
                .unwrap_err()
                .to_string(),
            "`data.order_id` contains the control character U+0000 at byte 1; identifiers may not contain control characters"
        );
        assert_eq!(
            Event::from_binary(headers(b"c1"), br#"{"order_id":"o1","order_id":"o2"}"#)
                .unwrap_err()
                .to_string(),
            "`data.order_id` appears twice: keys must be unique"
        );
    }

    #[test]
    fn nul_is_refused_in_every_text() {
        assert_eq!(
            reason(&placed_with(
                |v| v["data"]["customer"]["name"] = json!("A\u{0}")
            )),
            "`data.customer.name` contains a NUL character (U+0000)"
        );
        let other = br#"{"specversion":"1.0","id":"e","source":"s","type":"loyalty.x","time":"2024-01-01T00:00:00Z","subject":"c","data":{"tags":["ok","b\u0000d"]}}"#;
        assert_eq!(
            reason(other),
            "`data.tags[1]` contains a NUL character (U+0000)"
        );
    }

    #[test]
    fn amounts_are_exact_and_bounded() {
        let total = |t: Value| placed_with(|v| v["data"]["total"] = t);
        let parsed = |b: &[u8]| match Event::from_structured(b).unwrap().data {
            EventData::OrderPlaced(o) => o.total.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parsed(&total(json!("922337203685477.58"))),
            "922337203685477.58"
        );
        // A JSON number with 18 digits, which a float would round.
        let text = String::from_utf8(total(json!(0)))
            .unwrap()
            .replace(r#""total":0"#, r#""total":1234567890123456.78"#);
        assert_eq!(parsed(text.as_bytes()), "1234567890123456.78");
        assert_eq!(
            reason(&total(json!("1234567890123456789.5"))),
            "`data.total` has 20 significant digits; amounts have at most 18"
        );
        assert_eq!(
            reason(&total(json!("NaN"))),
            "`data.total` must be a number or a decimal string like \"10.00\""
        );
        let huge = String::from_utf8(total(json!(0)))
            .unwrap()
            .replace(r#""total":0"#, r#""total":1e400"#);
        assert_eq!(
            reason(huge.as_bytes()),
            "`data.total` is out of range: amounts are below 10^18"
        );
    }

    #[test]
    fn times_outside_1970_to_9999_are_refused() {
        for t in ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"] {
            assert_eq!(
                reason(&placed_with(|v| v["time"] = json!(t))),
                format!("attribute `time` `{t}` is outside the years 1970 to 9999")
            );
        }
        assert_eq!(
            reason(&placed_with(|v| v["time"] = json!("+10000-01-03T23:59:59Z"))),
            "attribute `time` is not an RFC 3339 timestamp: `+10000-01-03T23:59:59Z`"
        );
        // The last second of 9999, leap second included, is a time a timer can still fire at
        // (the fuzzer found one that could not).
        let last = Event::from_structured(&placed_with(|v| {
            v["time"] = json!("9999-12-31T23:59:60.5Z")
        }))
        .unwrap();
        assert!(crate::time::fires(last.time));
        for t in [
            "9999-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-01T00:00:00+23:59",
        ] {
            assert!(
                Event::from_structured(&placed_with(|v| v["time"] = json!(t))).is_ok(),
                "{t}"
            );
        }
        // A quoted value is cut short and its control characters escaped.
        let r = reason(&placed_with(|v| {
            v["time"] = json!(format!("\n{}", "9".repeat(100)))
        }));
        assert!(
            r.starts_with("attribute `time` is not an RFC 3339 timestamp: `\\n999"),
            "{r}"
        );
        assert!(r.ends_with("…`"), "{r}");
    }

    #[test]
    fn duplicate_keys_and_deep_nesting_are_refused() {
        let dup = br#"{"specversion":"1.0","id":"e","id":"f","source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c"}"#;
        assert_eq!(reason(dup), "`id` appears twice: keys must be unique");
        let deep = format!(
            r#"{{"specversion":"1.0","id":"e","source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c","data":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(reason(deep.as_bytes()).starts_with("not valid JSON: recursion limit exceeded"));
    }

    #[test]
    fn scores_are_on_their_scales() {
        let fb = |kind: &str, score: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"feedback.submitted","time":"2024-01-01T00:00:00Z","subject":"c","data":{{"kind":"{kind}","score":{score}}}}}"#
            )
        };
        assert!(Event::from_structured(fb("nps", "9").as_bytes()).is_ok());
        assert!(Event::from_structured(fb("csat", "4.5").as_bytes()).is_ok());
        assert_eq!(
            reason(fb("nps", "11").as_bytes()),
            "`data.score` must be a whole number from 0 to 10 for nps"
        );
        assert_eq!(
            reason(fb("nps", "1e308").as_bytes()),
            "`data.score` must be a whole number from 0 to 10 for nps"
        );
        assert_eq!(
            reason(fb("csat", "-1").as_bytes()),
            "`data.score` must be a number from 0 to 10"
        );
    }

    #[test]
    fn both_paths_and_both_bindings_agree_on_repeated_keys_and_nul() {
        // A key aftercare does not read may repeat (the typed path lets it); one it reads may not.
        let delivered = |data: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"order.delivered","time":"2024-01-01T00:00:00Z","subject":"c","data":{data}}}"#
            )
        };
        assert!(structured(&delivered(r#"{"order_id":"o","note":1,"note":2}"#)).is_ok());
        assert_eq!(
            structured(&delivered(r#"{"order_id":"o","order_id":"p"}"#))
                .unwrap_err()
                .to_string(),
            "`data.order_id` appears twice: keys must be unique"
        );
        let headers = || -> Vec<(&'static str, &'static [u8])> {
            vec![
                ("ce_specversion", b"1.0"),
                ("ce_id", b"e"),
                ("ce_source", b"s"),
                ("ce_type", b"order.delivered"),
                ("ce_time", b"2024-01-01T00:00:00Z"),
                ("ce_subject", b"c"),
            ]
        };
        assert!(Event::from_binary(headers(), br#"{"order_id":"o","note":1,"note":2}"#).is_ok());
        // NUL in a field nobody reads is refused too, in either binding; `\\u0000` is no NUL.
        let nul = "a text of the event contains a NUL character (U+0000)";
        assert_eq!(
            structured(&delivered(r#"{"order_id":"o","note":"a\u0000"}"#))
                .unwrap_err()
                .to_string(),
            nul
        );
        assert_eq!(
            Event::from_binary(headers(), br#"{"order_id":"o","note":"a\u0000"}"#)
                .unwrap_err()
                .to_string(),
            nul
        );
        let ext = r#"{"specversion":"1.0","id":"e","source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c","traceparent":"a\u0000b"}"#;
        assert_eq!(structured(ext).unwrap_err().to_string(), nul);
        assert!(structured(&delivered(r#"{"order_id":"o","note":"a\\u0000"}"#)).is_ok());
    }

    #[test]
    fn quoted_values_hide_addresses_and_formatting_characters() {
        assert_eq!(
            reason(&placed_with(|v| v["time"] = json!("bob@example.com"))),
            format!(
                "attribute `time` is not an RFC 3339 timestamp: `{}`",
                crate::redact::address_hash("bob@example.com")
            )
        );
        assert_eq!(
            reason(&placed_with(|v| v["specversion"] = json!("1\u{202e}0"))),
            "unsupported specversion `1\\u{202e}0` (expected \"1.0\")"
        );
        let other = br#"{"specversion":"1.0","id":"e","source":"s","type":"x","time":"2024-01-01T00:00:00Z","subject":"c","data":{"k\u0000\nfake@evil.com":"v"}}"#;
        assert_eq!(
            reason(other),
            format!(
                "`data.k\\u{{0}}\\n{}` contains a NUL character (U+0000)",
                crate::redact::address_hash("fake@evil.com")
            )
        );
    }
}
