//! Unsubscribe tokens: who and which category, signed with HMAC-SHA256.
//!
//! A token is `base64url(customer \n category) . base64url(mac)`. It carries no expiry: an
//! unsubscribe link must keep working for as long as the email sits in a mailbox. A forged or
//! altered token fails verification and the caller learns nothing else (no customer lookup
//! happens before the signature is checked).

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

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }

    pub fn sign(&self, customer: &str, category: &str) -> String {
        let payload = format!("{customer}\n{category}");
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
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
        let payload = String::from_utf8(payload).ok()?;
        let (customer, category) = payload.split_once('\n')?;
        Some(Claim {
            customer: customer.to_string(),
            category: category.to_string(),
        })
    }
}

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
}
