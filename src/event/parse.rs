//! Bytes → [`Event`], or the precise reason it is not one.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    CustomerPatch, Event, EventData, FeedbackKind, Item, Money, OrderPlaced, OrderShipped,
};

/// Messages above this size are refused before parsing (1 MiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Why bytes are not a valid event. The text is the dead-letter reason.
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
    #[error("unsupported specversion `{0}` (expected \"1.0\")")]
    SpecVersion(String),
    #[error("attribute `time` is not an RFC 3339 timestamp: `{0}`")]
    BadTime(String),
    #[error("`data` must be a JSON object")]
    DataNotObject,
    #[error("missing required field `{field}` for {kind}")]
    MissingField { field: String, kind: String },
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
}

impl Event {
    /// Structured binding: the whole CloudEvent is one JSON object.
    pub fn from_structured(bytes: &[u8]) -> Result<Event, EventError> {
        check_size(bytes)?;
        let text = utf8(bytes)?;
        if let Some(ev) = super::fast::parse(text) {
            return Ok(ev);
        }
        Event::from_structured_text(text)
    }

    /// The precise path: every field checked by name, every problem worded.
    fn from_structured_text(text: &str) -> Result<Event, EventError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(EventError::NotObject);
        };
        let specversion = take_attr(&mut map, "specversion")?;
        let id = take_attr(&mut map, "id")?;
        let source = take_attr(&mut map, "source")?;
        let kind = take_attr(&mut map, "type")?;
        let time = take_attr(&mut map, "time")?;
        let subject = take_attr(&mut map, "subject")?;
        let data = map.remove("data");
        build(
            Attrs {
                specversion,
                id,
                source,
                kind,
                time,
                subject,
            },
            data,
        )
    }

    /// Binary binding: attributes in `ce_*` headers, the message value is `data`.
    pub fn from_binary<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        value: &[u8],
    ) -> Result<Event, EventError> {
        check_size(value)?;
        let mut found: [Option<String>; 6] = Default::default();
        const NAMES: [&str; 6] = ["specversion", "id", "source", "type", "time", "subject"];
        for (name, raw) in headers {
            let Some(attr) = name.strip_prefix("ce_") else {
                continue;
            };
            if let Some(i) = NAMES.iter().position(|n| *n == attr) {
                let text =
                    std::str::from_utf8(raw).map_err(|_| EventError::BadAttribute(NAMES[i]))?;
                found[i] = Some(text.to_string());
            }
        }
        let [specversion, id, source, kind, time, subject] = found;
        let need = |v: Option<String>, name: &'static str| -> Result<String, EventError> {
            let v = v.ok_or(EventError::MissingAttribute(name))?;
            if v.is_empty() {
                return Err(EventError::BadAttribute(name));
            }
            Ok(v)
        };
        let attrs = Attrs {
            specversion: need(specversion, "specversion")?,
            id: need(id, "id")?,
            source: need(source, "source")?,
            kind: need(kind, "type")?,
            time: need(time, "time")?,
            subject: need(subject, "subject")?,
        };
        let data = if value.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            let text = utf8(value)?;
            Some(serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?)
        };
        build(attrs, data)
    }
}

struct Attrs {
    specversion: String,
    id: String,
    source: String,
    kind: String,
    time: String,
    subject: String,
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

fn take_attr(map: &mut Map<String, Value>, name: &'static str) -> Result<String, EventError> {
    match map.remove(name) {
        None | Some(Value::Null) => Err(EventError::MissingAttribute(name)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(EventError::BadAttribute(name)),
    }
}

fn build(a: Attrs, data: Option<Value>) -> Result<Event, EventError> {
    if a.specversion != "1.0" {
        return Err(EventError::SpecVersion(a.specversion));
    }
    let time = DateTime::parse_from_rfc3339(&a.time)
        .map_err(|_| EventError::BadTime(a.time.clone()))?
        .with_timezone(&Utc);
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

/// Reads fields out of one JSON object, naming them by their full path in errors.
struct Fields<'k> {
    map: Map<String, Value>,
    /// `data` or `data.items[2]`.
    path: String,
    kind: &'k str,
}

impl Fields<'_> {
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

    fn opt_str(&mut self, key: &str) -> Result<Option<String>, EventError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    fn str(&mut self, key: &str) -> Result<String, EventError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn value(&mut self, key: &str) -> Result<Value, EventError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Err(self.missing(key)),
            Some(v) => Ok(v),
        }
    }

    /// A JSON number or a decimal string.
    fn money(&mut self, key: &str) -> Result<Money, EventError> {
        let expected = "a number or a decimal string like \"10.00\"";
        let money = match self.value(key)? {
            Value::Number(n) => n.as_f64().and_then(Money::from_f64),
            Value::String(s) => Money::parse_decimal(&s),
            _ => None,
        };
        money.ok_or_else(|| self.wrong(key, expected))
    }

    fn number(&mut self, key: &str) -> Result<f64, EventError> {
        self.value(key)?
            .as_f64()
            .ok_or_else(|| self.wrong(key, "a number"))
    }

    fn uint(&mut self, key: &str, max: u64, expected: &'static str) -> Result<u64, EventError> {
        self.value(key)?
            .as_u64()
            .filter(|v| *v <= max)
            .ok_or_else(|| self.wrong(key, expected))
    }
}

/// Splits off `data.customer` and types the rest by event type.
fn typed_data(
    kind: &str,
    data: Option<Value>,
) -> Result<(Option<CustomerPatch>, EventData), EventError> {
    let map = match data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        // Unknown types may carry any JSON as data.
        Some(other) if !is_known(kind) => return Ok((None, EventData::Other(other))),
        Some(_) => return Err(EventError::DataNotObject),
    };
    let mut f = Fields {
        map,
        path: "data".into(),
        kind,
    };
    let customer = customer_patch(&mut f)?;
    let data = match kind {
        "order.placed" => EventData::OrderPlaced(OrderPlaced {
            order_id: f.str("order_id")?,
            items: items(&mut f)?,
            total: f.money("total")?,
            currency: f.str("currency")?,
        }),
        "order.shipped" => EventData::OrderShipped(OrderShipped {
            order_id: f.str("order_id")?,
            carrier: f.str("carrier")?,
            tracking_number: f.str("tracking_number")?,
            tracking_url: f.opt_str("tracking_url")?,
        }),
        "order.delivered" => EventData::OrderDelivered {
            order_id: f.str("order_id")?,
        },
        "order.cancelled" => EventData::OrderCancelled {
            order_id: f.str("order_id")?,
            reason: f.opt_str("reason")?,
        },
        "order.refunded" => EventData::OrderRefunded {
            order_id: f.str("order_id")?,
            amount: f.money("amount")?,
        },
        "support.ticket_opened" => EventData::TicketOpened {
            ticket_id: f.str("ticket_id")?,
            order_id: f.opt_str("order_id")?,
            subject: f.opt_str("subject")?,
        },
        "support.ticket_resolved" => EventData::TicketResolved {
            ticket_id: f.str("ticket_id")?,
        },
        "feedback.submitted" => EventData::FeedbackSubmitted {
            kind: match f.str("kind")?.as_str() {
                "nps" => FeedbackKind::Nps,
                "csat" => FeedbackKind::Csat,
                _ => return Err(f.wrong("kind", "\"nps\" or \"csat\"")),
            },
            score: f.number("score")?,
            comment: f.opt_str("comment")?,
        },
        "review.submitted" => EventData::ReviewSubmitted {
            order_id: f.str("order_id")?,
            sku: f.str("sku")?,
            rating: match f.uint("rating", 5, "an integer from 1 to 5")? {
                0 => return Err(f.wrong("rating", "an integer from 1 to 5")),
                r => r as u8,
            },
        },
        "customer.updated" => EventData::CustomerUpdated,
        "customer.unsubscribed" => EventData::CustomerUnsubscribed {
            categories: categories(&mut f)?,
        },
        "customer.subscribed" => EventData::CustomerSubscribed {
            categories: categories(&mut f)?,
        },
        _ => {
            if let Some(c) = &customer {
                // Keep `customer` visible in the raw data of unknown types too.
                f.map.insert(
                    "customer".into(),
                    serde_json::to_value(c).unwrap_or(Value::Null),
                );
            }
            EventData::Other(Value::Object(f.map))
        }
    };
    Ok((customer, data))
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
            | "customer.unsubscribed"
            | "customer.subscribed"
    )
}

fn customer_patch(f: &mut Fields) -> Result<Option<CustomerPatch>, EventError> {
    let map = match f.map.remove("customer") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(f.wrong("customer", "an object")),
    };
    let mut c = Fields {
        map,
        path: f.field("customer"),
        kind: f.kind,
    };
    Ok(Some(CustomerPatch {
        email: c.opt_str("email")?,
        name: c.opt_str("name")?,
        locale: c.opt_str("locale")?,
        timezone: c.opt_str("timezone")?,
        birthday: c.opt_str("birthday")?,
    }))
}

fn items(f: &mut Fields) -> Result<Vec<Item>, EventError> {
    let Value::Array(list) = f.value("items")? else {
        return Err(f.wrong("items", "a list"));
    };
    let mut items = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let path = format!("{}.items[{i}]", f.path);
        let Value::Object(map) = v else {
            return Err(EventError::WrongType {
                field: path,
                expected: "an object",
            });
        };
        let mut it = Fields {
            map,
            path,
            kind: f.kind,
        };
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
    let Value::Array(list) = f.value("categories")? else {
        return Err(f.wrong("categories", expected));
    };
    list.into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(f.wrong("categories", expected)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(o.total, Money(300_000));
        assert_eq!(o.items[0].unit_price, Money(300_000));
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
}
