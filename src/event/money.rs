//! Money as exact decimals: `10.00` plus `0.10` is `10.10`, and `922337203685477.58` stays
//! what it says. Never binary floating point — not when parsing (JSON numbers are read from
//! their text), not in the stored state (amounts are stored as decimal strings).
//!
//! An amount from an event has at most [`MAX_DIGITS`] significant digits, is below 10^18 and
//! has at most 18 decimal places (SPEC §7); anything else is refused with the reason. Sums
//! (`total_spent`) are exact to 28 significant digits and saturate beyond.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most significant digits an amount may have.
pub const MAX_DIGITS: u32 = 18;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a text is not an amount, worded for a dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a number or a decimal string like \"10.00\"")]
    NotDecimal,
    #[error("has {0} significant digits; amounts have at most 18")]
    TooPrecise(u32),
    #[error("is out of range: amounts are below 10^18")]
    TooLarge,
    #[error("has {0} decimal places; amounts have at most 18")]
    TooManyPlaces(u32),
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// A decimal string as events write it: `10`, `10.5`, `-3.25` (no exponent, no `+`).
    /// Surrounding ASCII whitespace is ignored.
    pub fn parse_decimal(s: &str) -> Result<Money, MoneyError> {
        let s = s.trim_ascii();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = split_decimal(digits)?;
        Money::from_parts(neg, whole, frac, 0)
    }

    /// A JSON number as written (`30`, `10.5`, `1.25e2`), read from its text so that no
    /// digit is lost to floating point.
    pub fn parse_json_number(s: &str) -> Result<Money, MoneyError> {
        let (neg, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let exp = match exp {
            None => 0,
            Some(e) => exponent(e)?,
        };
        let (whole, frac) = split_decimal(mantissa)?;
        Money::from_parts(neg, whole, frac, exp)
    }

    /// `±whole.frac × 10^exp`, checked against the limits.
    fn from_parts(neg: bool, whole: &str, frac: &str, exp: i64) -> Result<Money, MoneyError> {
        // The significant digits and the power of ten of the last one.
        let all = format!("{whole}{frac}");
        let significant = all.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        let dropped = (significant.len() - trimmed.len()) as i64;
        if trimmed.is_empty() {
            return Ok(Money::ZERO);
        }
        let digits = trimmed.len();
        if digits > MAX_DIGITS as usize {
            return Err(MoneyError::TooPrecise(digits as u32));
        }
        // value = trimmed × 10^power
        let power = exp
            .saturating_sub(frac.len() as i64)
            .saturating_add(dropped);
        // Digits before the point: digits + power when positive.
        if (digits as i64).saturating_add(power) > 18 {
            return Err(MoneyError::TooLarge);
        }
        if power < -18 {
            return Err(MoneyError::TooManyPlaces(
                power.unsigned_abs().min(u64::from(u32::MAX)) as u32,
            ));
        }
        let (mut mantissa, scale) = Money::mantissa_scale(trimmed, power)?;
        if neg {
            mantissa = -mantissa;
        }
        Ok(Money(Decimal::new(mantissa, scale)))
    }

    /// `digits × 10^power` as a mantissa and scale. At most 18 digits: fits an i64, and the
    /// scale is 0-18.
    fn mantissa_scale(digits: &str, power: i64) -> Result<(i64, u32), MoneyError> {
        let mut mantissa: i64 = digits.parse().map_err(|_| MoneyError::NotDecimal)?;
        let mut scale = 0u32;
        if power >= 0 {
            for _ in 0..power {
                mantissa = mantissa.checked_mul(10).ok_or(MoneyError::TooLarge)?;
            }
        } else {
            scale = power.unsigned_abs() as u32;
        }
        Ok((mantissa, scale))
    }

    /// The amount as a float, for expressions and templates only (`customer.total_spent >
    /// 100`): MiniJinja compares numbers, not decimals. Never stored, never summed.
    pub fn as_f64(self) -> f64 {
        use rust_decimal::prelude::ToPrimitive;
        self.0.to_f64().unwrap_or_default()
    }

    /// `self / n`, cut (not rounded) to 4 decimal places: a unit price from a line total.
    pub fn per_unit(self, n: u32) -> Money {
        if n == 0 {
            return self;
        }
        let d = self.0.checked_div(Decimal::from(n)).unwrap_or(self.0);
        Money(d.trunc_with_scale(4).normalize())
    }
}

/// A decimal's digits as (whole, fraction): digits, a point only with digits after it.
fn split_decimal(digits: &str) -> Result<(&str, &str), MoneyError> {
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(MoneyError::NotDecimal);
    }
    Ok((whole, frac))
}

/// A JSON number's exponent, after the `e` (`2`, `+2`, `-2`).
fn exponent(e: &str) -> Result<i64, MoneyError> {
    let e = e.strip_prefix('+').unwrap_or(e);
    let digits = e.strip_prefix('-').unwrap_or(e);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MoneyError::NotDecimal);
    }
    // Beyond any amount's range either way; saturating keeps the errors right.
    Ok(e.parse::<i64>().unwrap_or(if e.starts_with('-') {
        i64::MIN / 2
    } else {
        i64::MAX / 2
    }))
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
        let mut d = self.0.normalize();
        if d.scale() < 2 {
            d.rescale(2);
        }
        write!(f, "{d}")
    }
}

impl Serialize for Money {
    /// As a decimal string: exact, whatever reads it back.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    /// A decimal string (as serialized), or a number: stores written before amounts were
    /// decimals hold them as JSON numbers (ten-thousandths of the unit, printed as the
    /// shortest text that reads back as the same float), which read back exactly as that
    /// text. Stored state is not held to the event limits: a sum may be larger.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse::<Decimal>()
                    .or_else(|_| Decimal::from_scientific(v))
                    .map(Money)
                    .map_err(|_| E::custom(format!("`{v}` is not an amount")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                Ok(Money(Decimal::from(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                Ok(Money(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
                // Rust prints the shortest text that reads back as `v`: the text the older
                // store wrote.
                self.visit_str(&format!("{v}"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> String {
        Money::parse_decimal(s).unwrap().to_string()
    }

    #[test]
    fn decimals_are_exact() {
        let a = Money::parse_decimal("10.00").unwrap();
        let b = Money::parse_decimal("0.10").unwrap();
        assert_eq!((a + b).to_string(), "10.10");
        assert_eq!(dec("-3.125"), "-3.125");
        assert_eq!(dec("922337203685477.58"), "922337203685477.58");
        assert_eq!(dec("999999999999999999"), "999999999999999999.00");
        assert_eq!(dec("0.000000000000000001"), "0.000000000000000001");
        assert_eq!(dec("0"), "0.00");
        assert_eq!(dec("-0.00"), "0.00");
        for bad in [
            "1.2.3", "abc", "1.", ".5", "", "-", "+1", "1e3", "NaN", "inf", "1 2", "١",
        ] {
            assert_eq!(
                Money::parse_decimal(bad),
                Err(MoneyError::NotDecimal),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_numbers_are_read_from_their_text() {
        let n = |s: &str| Money::parse_json_number(s).map(|m| m.to_string());
        assert_eq!(n("30"), Ok("30.00".into()));
        assert_eq!(n("11.77"), Ok("11.77".into()));
        assert_eq!(n("1.25e2"), Ok("125.00".into()));
        assert_eq!(n("125E-3"), Ok("0.125".into()));
        assert_eq!(n("123456789012345678"), Ok("123456789012345678.00".into()));
        assert_eq!(n("1234567890123456.78"), Ok("1234567890123456.78".into()));
        assert_eq!(n("-0"), Ok("0.00".into()));
    }

    #[test]
    fn amounts_past_the_limits_are_refused_with_the_reason() {
        let n = Money::parse_json_number;
        assert_eq!(n("1234567890123456789"), Err(MoneyError::TooPrecise(19)));
        assert_eq!(
            Money::parse_decimal("0.1234567890123456789"),
            Err(MoneyError::TooPrecise(19))
        );
        assert_eq!(n("1e18"), Err(MoneyError::TooLarge));
        assert_eq!(n("1e999999999999999999999"), Err(MoneyError::TooLarge));
        assert_eq!(n("1e-19"), Err(MoneyError::TooManyPlaces(19)));
        assert_eq!(
            n("1e-99999999999999999999"),
            Err(MoneyError::TooManyPlaces(u32::MAX))
        );
        assert_eq!(n("999999999999999999"), n("999999999999999999.0"));
        assert!(n("1e17").is_ok());
    }

    #[test]
    fn stored_amounts_read_back_exactly_from_strings_and_from_the_old_floats() {
        let stored = |json: &str| serde_json::from_str::<Money>(json).unwrap().to_string();
        assert_eq!(stored("\"922337203685477.58\""), "922337203685477.58");
        // What the float store wrote for 922337203685477.58 (no longer readable there).
        assert_eq!(stored("922337203685477.6"), "922337203685477.60");
        assert_eq!(stored("11.77"), "11.77");
        assert_eq!(stored("30"), "30.00");
        let m = Money::parse_decimal("0.10").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"0.10\"");
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let big = Money(Decimal::MAX);
        assert_eq!(big + big, big);
        assert_eq!(
            Money::parse_decimal("10").unwrap().per_unit(3).to_string(),
            "3.3333"
        );
    }
}
