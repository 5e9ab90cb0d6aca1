//! Money as exact fixed-point: `10.00` plus `0.10` must not print as `10.100000000000001`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount in ten-thousandths of the currency unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

const SCALE: i64 = 10_000;

impl Money {
    pub const ZERO: Money = Money(0);

    /// Parses a decimal string such as `10`, `10.5` or `-3.25` (at most 4 decimals).
    pub fn parse_decimal(s: &str) -> Option<Money> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = !whole.is_empty()
            && whole.chars().all(|c| c.is_ascii_digit())
            && frac.len() <= 4
            && frac.chars().all(|c| c.is_ascii_digit())
            && !(digits.contains('.') && frac.is_empty());
        if !ok {
            return None;
        }
        let whole: i64 = whole.parse().ok()?;
        let mut frac_units: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        for _ in frac.len()..4 {
            frac_units *= 10;
        }
        let v = whole.checked_mul(SCALE)?.checked_add(frac_units)?;
        Some(Money(if neg { -v } else { v }))
    }

    /// From a JSON number, rounded to 4 decimals.
    pub fn from_f64(v: f64) -> Option<Money> {
        let scaled = (v * SCALE as f64).round();
        (scaled.is_finite() && scaled.abs() < i64::MAX as f64).then_some(Money(scaled as i64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }
}

impl fmt::Display for Money {
    /// Two decimals at least (`12.00`), more only when needed (`0.125`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / SCALE as u64;
        let mut frac = format!("{:04}", abs % SCALE as u64);
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "{sign}{whole}.{frac}")
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Money {
    /// A number (as serialized) or a decimal string.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        let m = match Repr::deserialize(d)? {
            Repr::Number(v) => Money::from_f64(v),
            Repr::Text(s) => Money::parse_decimal(&s),
        };
        m.ok_or_else(|| serde::de::Error::custom("not an amount"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        let a = Money::parse_decimal("10.00").unwrap();
        let b = Money::parse_decimal("0.10").unwrap();
        assert_eq!((a + b).to_string(), "10.10");
        assert_eq!(
            Money::parse_decimal("-3.125").unwrap().to_string(),
            "-3.125"
        );
        assert_eq!(Money::from_f64(11.77).unwrap().to_string(), "11.77");
        assert!(Money::parse_decimal("1.2.3").is_none());
        assert!(Money::parse_decimal("abc").is_none());
        assert!(Money::parse_decimal("1.").is_none());
        assert!(Money::parse_decimal("1.23456").is_none());
    }
}
