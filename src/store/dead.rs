//! Dead letters: messages that could not be applied, kept whole in the store.
//!
//! A dead letter is written in the same transaction as the progress past it (the batch that
//! met it), so once its offset is stored it cannot be lost; a publisher then copies it to
//! `kafka.dlq_topic` and records that it did (SPEC §7). The store keeps the message exactly as
//! read — key, value and the message's own headers, which carry a binary-mode event's
//! attributes — so `aftercare dead-letters replay` can send it again as it was.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Whether `value` says `"subject": "<id>"`: parsed when it is JSON, else read as far as it
/// goes (a dead letter is often not JSON at all), never a mere mention of the id.
fn has_subject(value: &[u8], id: &str) -> bool {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) {
        return v.get("subject").and_then(|s| s.as_str()) == Some(id);
    }
    let quoted = serde_json::to_string(id).unwrap_or_default();
    let key = b"\"subject\"";
    let mut rest = value;
    while let Some(at) = find(rest, key) {
        let after = trim_start(&rest[at + key.len()..]);
        if let Some(after) = after.strip_prefix(b":")
            && trim_start(after).starts_with(quoted.as_bytes())
        {
            return true;
        }
        rest = &rest[at + key.len()..];
    }
    false
}

/// Whether `address` appears in `bytes` as a whole address, in any case: `a@b.co` is not
/// in `xa@b.com`.
fn has_address(bytes: &[u8], address: &str) -> bool {
    let needle = address.trim().to_lowercase().into_bytes();
    if needle.is_empty() {
        return false;
    }
    let hay = String::from_utf8_lossy(bytes).to_lowercase().into_bytes();
    let part = |b: u8| b.is_ascii_alphanumeric() || b".-_+%@".contains(&b) || b >= 0x80;
    let mut from = 0;
    while let Some(at) = find(&hay[from..], &needle) {
        let start = from + at;
        let end = start + needle.len();
        let before = start.checked_sub(1).map(|i| hay[i]);
        // A full stop that ends a sentence is not part of the address.
        let after = match hay.get(end) {
            Some(b'.') => hay.get(end + 1).copied().filter(|b| part(*b)),
            other => other.copied(),
        };
        if !before.is_some_and(part) && !after.is_some_and(part) {
            return true;
        }
        from = start + 1;
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// A message that could not be applied, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The message's own headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The `aftercare.error` header: what was wrong, for a person.
    pub reason: String,
    /// The reason's class (`not_json`, `identifier`, `store_refused`, …): bounded, for
    /// metrics, the dashboard and `--reason`.
    pub class: String,
}

impl DeadLetter {
    /// Identifies the message: the same bytes at the same position are the same message, so
    /// a batch read again after a crash does not record its dead letters twice.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.key.as_deref().unwrap_or_default());
        h.update([0xff]);
        h.update(&self.value);
        let d = h.finalize();
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the message is about `customer` or one of `addresses`: its key is the id, its
    /// `subject` (a structured event's, or a binary event's `ce_subject` header) is the id, or
    /// one of the addresses appears in it as a whole address (any case). What an erasure
    /// removes besides the customer's own rows. An empty id names nobody.
    pub fn mentions(&self, customer: &str, addresses: &[String]) -> bool {
        let id = customer.as_bytes();
        let by_id = !id.is_empty()
            && (self.key.as_deref() == Some(id)
                || self
                    .headers
                    .iter()
                    .any(|(k, v)| k == "ce_subject" && v == id)
                || has_subject(&self.value, customer));
        by_id
            || addresses.iter().any(|a| {
                has_address(&self.value, a) || self.headers.iter().any(|(_, v)| has_address(v, a))
            })
    }

    /// The headers as stored: a JSON list of `[name, base64 value]`.
    pub fn headers_text(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let list: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), b64.encode(v)))
            .collect();
        serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
    }

    /// Reads [`DeadLetter::headers_text`] back; a list that does not decode is empty.
    pub fn parse_headers(text: &str) -> Vec<(String, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let list: Vec<(String, String)> = serde_json::from_str(text).unwrap_or_default();
        list.into_iter()
            .filter_map(|(k, v)| Some((k, b64.decode(v).ok()?)))
            .collect()
    }
}

/// A dead letter as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    pub letter: DeadLetter,
    /// When the dead-letter topic took it.
    pub published_at: Option<DateTime<Utc>>,
    /// Published with its value cut to `kafka.dlq_max_bytes` (the topic refused it whole).
    pub truncated: bool,
    /// The topic refused it even cut short: it stays in the store only.
    pub refused: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When `aftercare dead-letters replay` last sent it back to its topic.
    pub replayed_at: Option<DateTime<Utc>>,
}

impl StoredDeadLetter {
    /// `published`, `truncated`, `refused` or `pending`.
    pub fn state(&self) -> &'static str {
        match (self.published_at, self.truncated, self.refused) {
            (_, _, true) => "refused",
            (Some(_), true, _) => "truncated",
            (Some(_), false, _) => "published",
            (None, _, _) => "pending",
        }
    }
}

/// How publishing one dead letter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The topic took it whole.
    Whole,
    /// The topic took it with its value cut short.
    Truncated,
    /// Not this time (the broker away, a timeout): claimed again later.
    Retry(String),
    /// Never (the topic refuses even the cut message): kept in the store only, and counted.
    Refused(String),
}

/// The columns a publishing outcome sets: (published now, truncated, refused, error).
pub fn outcome_columns(p: &Published) -> (bool, bool, bool, Option<&str>) {
    match p {
        Published::Whole => (true, false, false, None),
        Published::Truncated => (true, true, false, None),
        Published::Retry(e) => (false, false, false, Some(e)),
        Published::Refused(e) => (false, false, true, Some(e)),
    }
}

/// Which dead letters `list` and `replay` take.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Whose reason or class contains this text.
    pub reason: Option<String>,
    /// At most this many, newest first (0: no limit).
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_names_a_customer_only_by_its_key_subject_or_whole_address() {
        let letter = |key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]| DeadLetter {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            ..DeadLetter::default()
        };
        let ann = ["ann@example.com".to_string()];
        let event = br#"{"specversion":"1.0","subject":"ann","data":{"x":"1.0"}}"#;
        assert!(letter(None, event, &[]).mentions("ann", &[]));
        // The id elsewhere in the message is not the subject.
        assert!(!letter(None, event, &[]).mentions("1.0", &[]));
        assert!(!letter(None, event, &[("ce_specversion", b"1.0")]).mentions("1.0", &[]));
        assert!(letter(None, b"x", &[("ce_subject", b"1.0")]).mentions("1.0", &[]));
        assert!(letter(Some(b"ann"), b"\xff", &[]).mentions("ann", &[]));
        // Not JSON: read as far as it goes.
        assert!(letter(None, br#"{"subject" : "ann", "data": {"#, &[]).mentions("ann", &[]));
        assert!(!letter(None, br#"{"subject":"anna""#, &[]).mentions("ann", &[]));
        // Nobody has an empty id, and an address counts only whole.
        assert!(!letter(Some(b""), b"", &[("e", b"")]).mentions("", &[]));
        assert!(letter(None, b"to: <ANN@Example.com>", &[]).mentions("zed", &ann));
        assert!(!letter(None, b"to: joann@example.com", &[]).mentions("zed", &ann));
        assert!(!letter(None, b"ann@example.community", &[]).mentions("zed", &ann));
        assert!(letter(None, b"x", &[("reply-to", b"ann@example.com")]).mentions("zed", &ann));
        assert!(letter(None, b"write to ann@example.com.", &[]).mentions("zed", &ann));
        let asa = ["åsa@example.se".to_string()];
        assert!(letter(None, "to ÅSA@example.se".as_bytes(), &[]).mentions("zed", &asa));
    }

    #[test]
    fn headers_round_trip_with_any_bytes() {
        let d = DeadLetter {
            topic: "orders".into(),
            partition: 1,
            offset: 7,
            key: None,
            value: b"x".to_vec(),
            headers: vec![
                ("ce_subject".into(), b"a\0b\xff".to_vec()),
                ("e".into(), vec![]),
            ],
            reason: "r".into(),
            class: "c".into(),
        };
        assert_eq!(DeadLetter::parse_headers(&d.headers_text()), d.headers);
        assert_eq!(d.digest().len(), 32);
        let other = DeadLetter {
            value: b"y".to_vec(),
            ..d.clone()
        };
        assert_ne!(d.digest(), other.digest());
    }
}
