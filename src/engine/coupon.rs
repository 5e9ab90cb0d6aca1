//! Generated coupon codes (SPEC §9): a code is derived by HMAC-SHA256 from the customer and
//! the step's idempotency key (`journey:step`) under the coupon key, so rendering an email
//! again, at send time or after a crash, gives the same code, and a code can be checked
//! against the step it claims to come from (`aftercare coupon verify`). The customer is part
//! of it: journey ids derive from what the producer sends, and two customers' may be made
//! equal; their codes still differ.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::JourneyId;

/// A code a step gave the customer: its use on an order is that step's goal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Given {
    pub code: Box<str>,
    pub journey: JourneyId,
    pub sequence: Arc<str>,
    pub version: Arc<str>,
    pub step: Arc<str>,
    /// Used on an order already: it counts once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redeemed: bool,
}

/// Codes kept per customer, the latest: a customer sent thousands keeps the newest.
pub const KEPT: usize = 64;

/// Crockford's base32: no I, L, O or U, so a code read aloud or typed is not mistaken.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The code for `customer`'s message whose idempotency key is `key`: `prefix`, then `length`
/// characters (at most 51: the 256 bits of the MAC).
pub fn generate(secret: &[u8], customer: &str, key: &str, prefix: &str, length: usize) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(b"aftercare coupon\0");
    // Lengths first: no two (customer, key) pairs feed the MAC the same bytes.
    mac.update(&(customer.len() as u64).to_be_bytes());
    mac.update(customer.as_bytes());
    mac.update(key.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let mut code = String::with_capacity(prefix.len() + length);
    code.push_str(prefix);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && code.len() < prefix.len() + length {
            bits -= 5;
            code.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    code
}

/// The code `step`'s `coupon` gives `customer`'s message with idempotency key `key`.
pub fn code_for(
    step: &crate::sequence::Step,
    secret: &[u8],
    customer: &str,
    key: &str,
) -> Option<String> {
    let crate::sequence::Coupon::Generate { prefix, length } = step.coupon.as_ref()?;
    Some(generate(secret, customer, key, prefix, *length))
}

/// The fewest characters after the prefix (`validate` refuses fewer).
pub const MIN_LENGTH: usize = 6;

/// Whether `code` is the one `customer`'s message with idempotency key `key` gives, with
/// `prefix` and at least [`MIN_LENGTH`] characters after it.
pub fn verify(secret: &[u8], customer: &str, key: &str, prefix: &str, code: &str) -> bool {
    let length = code.len().saturating_sub(prefix.len());
    code.starts_with(prefix)
        && length >= MIN_LENGTH
        && generate(secret, customer, key, prefix, length) == code
}

/// The coupon key: derived from the signing key, so one secret serves both and a link's MAC
/// is never a coupon's.
pub fn key_from(signing_key: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(signing_key) else {
        return Vec::new();
    };
    mac.update(b"aftercare coupon key");
    mac.finalize().into_bytes().to_vec()
}

/// The first step of `catalog` that generates coupon codes, and its sequence.
pub fn first_generator(
    catalog: &crate::sequence::Catalog,
) -> Option<(&crate::sequence::Sequence, &crate::sequence::Step)> {
    catalog.sequences().iter().find_map(|s| {
        let step = s.steps.iter().find(|st| st.coupon.is_some())?;
        Some((&**s, step))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_the_steps_alone_and_the_same_every_time() {
        let k = key_from(b"test-signing-key-of-at-least-32-bytes");
        let a = generate(&k, "ann", "j1:tripod", "TRI-", 8);
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("TRI-"), "{a}");
        assert!(a[4..].bytes().all(|b| ALPHABET.contains(&b)), "{a}");
        assert_eq!(a, generate(&k, "ann", "j1:tripod", "TRI-", 8));
        assert_ne!(a, generate(&k, "ann", "j2:tripod", "TRI-", 8));
        // Another customer on the same journey id (a producer can make them equal).
        assert_ne!(a, generate(&k, "bob", "j1:tripod", "TRI-", 8));
        assert_ne!(
            generate(&k, "ab", "c:s", "", 8),
            generate(&k, "a", "bc:s", "", 8)
        );
        assert_ne!(
            a,
            generate(&key_from(b"another key"), "ann", "j1:tripod", "TRI-", 8)
        );
        assert!(verify(&k, "ann", "j1:tripod", "TRI-", &a));
        assert!(!verify(&k, "ann", "j2:tripod", "TRI-", &a));
        assert!(!verify(&k, "bob", "j1:tripod", "TRI-", &a));
        // The last characters alone never make a code authentic.
        assert!(!verify(&k, "ann", "j1:tripod", &a[..11], &a));
        assert!(!verify(&k, "ann", "j1:tripod", "TRI-", "TRI-"));
        assert_eq!(generate(&k, "ann", "j1:tripod", "", 51).len(), 51);
        assert_eq!(generate(&k, "ann", "j1:tripod", "", 80).len(), 51);
    }
}
