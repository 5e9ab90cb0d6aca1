//! Unsubscribe tokens: who and which category, signed with HMAC-SHA256.
//!
//! A token is `base64url(payload) . base64url(mac)`, the payload `0x01` (the format's
//! version), the customer id's length as 4 bytes big-endian, the id, then the category: each
//! field is read by its length, never by a separator, so no id can make a token say another
//! customer's name. Tokens of the first format (`customer \n category`, no version byte)
//! already mailed keep working when they read one way only (exactly one `\n`); one that could
//! read two ways is refused. A token carries no expiry: an unsubscribe link must keep working
//! for as long as the email sits in a mailbox. A forged or altered token fails verification
//! and the caller learns nothing else (no customer lookup happens before the signature is
//! checked).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies tokens with one key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub customer: String,
    /// The category of the email the link came in (`all` for a preferences-only link).
    pub category: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<key>)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    /// The shortest key accepted: a key must be as long as the MAC it makes (RFC 2104 §3).
    pub const MIN_KEY_BYTES: usize = 32;

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }

    /// The keyed hash an erased customer's address is kept as (64 hex digits): enough to know
    /// the address again if it comes back, not to read it. Case and surrounding space do not
    /// count; the domain tag keeps it apart from every token this key signs.
    pub fn address_hash(&self, address: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"aftercare erased address\0");
        mac.update(address.trim().to_lowercase().as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn sign(&self, customer: &str, category: &str) -> String {
        let mut payload = Vec::with_capacity(5 + customer.len() + category.len());
        payload.push(VERSION);
        // Ids are at most 256 bytes (SPEC §7); a longer one would still be read back whole.
        payload.extend_from_slice(&(customer.len() as u32).to_be_bytes());
        payload.extend_from_slice(customer.as_bytes());
        payload.extend_from_slice(category.as_bytes());
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The claim of a token this key signed; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claim> {
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&tag).ok()?;
        claim(payload)
    }
}

/// What a payload this key signed claims, in either format; `None` when it is not well formed.
fn claim(payload: Vec<u8>) -> Option<Claim> {
    let (customer, category) = match payload.split_first() {
        Some((&VERSION, rest)) => {
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            if len > rest.len() {
                return None;
            }
            let (customer, category) = rest.split_at(len);
            (
                String::from_utf8(customer.to_vec()).ok()?,
                String::from_utf8(category.to_vec()).ok()?,
            )
        }
        _ => {
            // The first format: unambiguous only with exactly one separator.
            let payload = String::from_utf8(payload).ok()?;
            let mut parts = payload.split('\n');
            let (Some(customer), Some(category), None) = (parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            (customer.to_string(), category.to_string())
        }
    };
    Some(Claim { customer, category })
}

/// The first byte of a token's payload: its format.
const VERSION: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_and_any_change_is_refused() {
        let s = Signer::new(b"k1");
        let t = s.sign("cust-7", "review");
        assert_eq!(
            s.verify(&t),
            Some(Claim {
                customer: "cust-7".into(),
                category: "review".into()
            })
        );
        // Another key, an altered payload, an altered tag, garbage: all refused.
        assert_eq!(Signer::new(b"k2").verify(&t), None);
        let (p, tag) = t.split_once('.').unwrap();
        let other = B64.encode("cust-8\nreview");
        assert_eq!(s.verify(&format!("{other}.{tag}")), None);
        let mut bad_tag = tag.to_string();
        bad_tag.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
        assert_eq!(s.verify(&format!("{p}.{bad_tag}")), None);
        assert_eq!(s.verify("nonsense"), None);
        assert_eq!(s.verify(""), None);
    }

    /// The first format's token, signed as it was: `customer \n category`.
    fn first_format(s: &Signer, payload: &str) -> String {
        let mut mac = s.mac();
        mac.update(payload.as_bytes());
        format!(
            "{}.{}",
            B64.encode(payload),
            B64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn an_id_holding_separators_reads_back_as_itself_only() {
        let s = Signer::new(b"k1");
        for id in ["victim\nall", "a.b", "\u{1}x", "", "ü\n\n"] {
            let t = s.sign(id, "review");
            assert_eq!(
                s.verify(&t),
                Some(Claim {
                    customer: id.into(),
                    category: "review".into()
                }),
                "{id:?}"
            );
        }
        // A claimed length past the end, or a payload cut inside the length: refused.
        let mut mac = s.mac();
        let payload = [VERSION, 0, 0, 0, 9, b'a'];
        mac.update(&payload);
        let t = format!(
            "{}.{}",
            B64.encode(payload),
            B64.encode(mac.finalize().into_bytes())
        );
        assert_eq!(s.verify(&t), None);
        let mut mac = s.mac();
        mac.update(&[VERSION, 0]);
        let t = format!(
            "{}.{}",
            B64.encode([VERSION, 0]),
            B64.encode(mac.finalize().into_bytes())
        );
        assert_eq!(s.verify(&t), None);
    }

    #[test]
    fn tokens_already_mailed_keep_working_unless_they_read_two_ways() {
        let s = Signer::new(b"k1");
        assert_eq!(
            s.verify(&first_format(&s, "cust-7\nreview")),
            Some(Claim {
                customer: "cust-7".into(),
                category: "review".into()
            })
        );
        // `victim\nall` + `review`: victim's `all\nreview`, or `victim\nall`'s review.
        assert_eq!(s.verify(&first_format(&s, "victim\nall\nreview")), None);
        assert_eq!(s.verify(&first_format(&s, "no-separator")), None);
    }
}
