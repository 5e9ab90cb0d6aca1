//! The statistics of an experiment's figures (SPEC §8): a proportion's Wilson score interval,
//! Newcombe's hybrid score interval for the difference of two proportions (his method 10,
//! without continuity correction), the two-sided p-value of the two-proportion z-test, and
//! what a test can detect (`aftercare plan`: α = 0.05 two-sided, power 0.8).

/// The standard normal quantile for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The standard normal quantile for a power of 0.8.
pub const Z_POWER_80: f64 = 0.841_621_233_572_914_3;

/// Customers needed in each of two equal groups to detect a rise from `baseline` to
/// `baseline + uplift` (both rates, 0 to 1) at α = 0.05 and power 0.8: the normal
/// approximation for two proportions, rounded up. `None` for an uplift that leaves 0..1 or is
/// not positive.
pub fn per_arm(baseline: f64, uplift: f64) -> Option<u64> {
    let (p1, p2) = (baseline, baseline + uplift);
    if !(uplift > 0.0 && (0.0..1.0).contains(&p1) && p2 < 1.0) {
        return None;
    }
    let mean = (p1 + p2) / 2.0;
    let root = Z_95 * (2.0 * mean * (1.0 - mean)).sqrt()
        + Z_POWER_80 * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    Some((root * root / (uplift * uplift)).ceil() as u64)
}

/// The smallest uplift (a difference of rates) groups of `treated` and `held` customers detect
/// at α = 0.05 and power 0.8, for a `baseline` rate: `(z₀.₉₇₅ + z₀.₈) · √(p(1 − p)(1/n₁ + 1/n₂))`.
/// `None` for an empty group, or a baseline of 0 or 1 or outside (its variance is nothing to
/// size from); at most 1.
pub fn minimum_detectable(baseline: f64, treated: u64, held: u64) -> Option<f64> {
    if treated == 0 || held == 0 || !(baseline > 0.0 && baseline < 1.0) {
        return None;
    }
    let variance = baseline * (1.0 - baseline) * (1.0 / treated as f64 + 1.0 / held as f64);
    Some(((Z_95 + Z_POWER_80) * variance.sqrt()).min(1.0))
}

/// Customers entering, both groups together, for a rise from `baseline` (held out) to
/// `baseline + uplift` (treated) to be detectable when `share` of them are held out: each
/// group's own variance, `(z₀.₉₇₅ + z₀.₈)² (p₁(1 − p₁)/h + p₂(1 − p₂)/(1 − h)) / d²`. `None`
/// without a holdout, for an uplift that is not positive or rates outside 0..1.
pub fn customers_needed(baseline: f64, uplift: f64, share: f64) -> Option<u64> {
    let (p1, p2) = (baseline, baseline + uplift);
    if !(uplift > 0.0 && share > 0.0 && share < 1.0 && p1 >= 0.0 && p2 <= 1.0) {
        return None;
    }
    let z = (Z_95 + Z_POWER_80) / uplift;
    let total = z * z * (p1 * (1.0 - p1) / share + p2 * (1.0 - p2) / (1.0 - share));
    Some(total.ceil().max(1.0) as u64)
}

/// A proportion: `k` of `n`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub k: u64,
    pub n: u64,
}

impl Count {
    /// The rate, `None` for none counted.
    pub fn rate(self) -> Option<f64> {
        (self.n > 0).then(|| self.k as f64 / self.n as f64)
    }

    /// Wilson's score interval at `z`: `(low, high)`; `None` for none counted.
    pub fn wilson(self, z: f64) -> Option<(f64, f64)> {
        let p = self.rate()?;
        let n = self.n as f64;
        let z2 = z * z;
        let centre = p + z2 / (2.0 * n);
        let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        let denominator = 1.0 + z2 / n;
        Some((
            ((centre - spread) / denominator).max(0.0),
            ((centre + spread) / denominator).min(1.0),
        ))
    }
}

/// The difference of two rates, `a - b`, with Newcombe's hybrid score 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// `a`'s rate minus `b`'s with its 95% interval (Newcombe 1998, method 10); `None` when
/// either counted none.
pub fn difference(a: Count, b: Count) -> Option<Difference> {
    let (p1, p2) = (a.rate()?, b.rate()?);
    let (l1, u1) = a.wilson(Z_95)?;
    let (l2, u2) = b.wilson(Z_95)?;
    let estimate = p1 - p2;
    Some(Difference {
        estimate,
        low: estimate - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        high: estimate + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    })
}

/// The two-sided p-value of the pooled two-proportion z-test of `a` against `b`; `None` when
/// either counted none, and 1 when the pooled rate is 0 or 1 (nothing differs).
pub fn p_value(a: Count, b: Count) -> Option<f64> {
    let (p1, p2) = (a.rate()?, b.rate()?);
    let pooled = (a.k + b.k) as f64 / (a.n + b.n) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / a.n as f64 + 1.0 / b.n as f64)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = (p1 - p2) / se;
    Some(libm::erfc(z.abs() / std::f64::consts::SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(k: u64, n: u64) -> Count {
        Count { k, n }
    }

    fn round4(x: f64) -> f64 {
        (x * 10_000.0).round() / 10_000.0
    }

    /// Newcombe (1998), "Interval estimation for the difference between independent
    /// proportions: comparison of eleven methods", Statistics in Medicine 17:873-890, Table II,
    /// method 10 (score, no continuity correction), to 4 decimals.
    #[test]
    fn newcombes_worked_examples() {
        for ((k1, n1, k2, n2), (low, high)) in [
            ((56, 70, 48, 80), (0.0524, 0.3339)),
            ((9, 10, 3, 10), (0.1705, 0.8090)),
            ((6, 7, 2, 7), (0.0582, 0.8062)),
            ((5, 56, 0, 29), (-0.0381, 0.1926)),
            ((0, 10, 0, 20), (-0.1611, 0.2775)),
            ((10, 10, 0, 20), (0.6791, 1.0000)),
        ] {
            let d = difference(count(k1, n1), count(k2, n2)).unwrap();
            assert_eq!(
                (round4(d.low), round4(d.high)),
                (low, high),
                "{k1}/{n1} - {k2}/{n2}"
            );
        }
    }

    /// Wilson's interval for 81 of 263 (Newcombe 1998's companion paper on single
    /// proportions, Table I): 0.2553 to 0.3662.
    #[test]
    fn wilsons_interval() {
        let (low, high) = count(81, 263).wilson(Z_95).unwrap();
        assert_eq!((round4(low), round4(high)), (0.2553, 0.3662));
    }

    /// Against Python's `math.erfc` on the same z: 56/70 against 48/80 gives z = 2.6502,
    /// p = 0.00805; equal rates give 1; a sure difference gives a tiny p.
    #[test]
    fn p_values() {
        assert_eq!(
            round4(p_value(count(56, 70), count(48, 80)).unwrap()),
            PYTHON_P
        );
        assert_eq!(p_value(count(3, 10), count(6, 20)), Some(1.0));
        assert_eq!(p_value(count(0, 10), count(0, 20)), Some(1.0));
        assert!(p_value(count(1000, 1000), count(0, 1000)).unwrap() < 1e-100);
        assert_eq!(p_value(count(0, 0), count(1, 2)), None);
    }

    const PYTHON_P: f64 = 0.008;

    /// The issue's own figures for CDNOW (29.2% reorder within 90 days, 23,570 customers):
    /// +2 points needs about 8,300 customers per group; a 10% holdout detects about 2.8 points.
    /// The per-group count is the same formula computed in Python (8,271.38, rounded up).
    #[test]
    fn what_a_test_can_detect() {
        assert_eq!(per_arm(0.292, 0.02), Some(8_272));
        let held = 2_357;
        let mde = minimum_detectable(0.292, 23_570 - held, held).unwrap();
        assert_eq!((mde * 1_000.0).round() / 10.0, 2.8, "{mde}");
        // Smaller effects need more customers; the edges are refused.
        assert!(per_arm(0.292, 0.01).unwrap() > 4 * 8_000);
        assert_eq!(per_arm(0.292, 0.0), None);
        assert_eq!(per_arm(0.99, 0.02), None);
        assert_eq!(minimum_detectable(0.3, 100, 0), None);
    }

    /// The total that a 10% holdout needs for +2 points on CDNOW's 29.2%: the same formula
    /// in Python gives 45,247 (rounded up), close to what the groups it makes detect; from a
    /// baseline of 0 (nothing converts without the emails) 0% → 2% with half held out needs
    /// 770 in all, not none.
    #[test]
    fn customers_needed_solves_the_minimum_detectable_uplift() {
        let n = customers_needed(0.292, 0.02, 0.1).unwrap();
        assert_eq!(n, 45_247);
        let held = (n as f64 * 0.1).round() as u64;
        let mde = minimum_detectable(0.292, n - held, held).unwrap();
        assert!((mde - 0.02).abs() < 3e-4, "{mde}");
        assert_eq!(customers_needed(0.0, 0.02, 0.5), Some(770));
        assert_eq!(customers_needed(0.292, 0.02, 0.0), None);
        assert_eq!(customers_needed(0.292, -0.01, 0.1), None);
        assert_eq!(customers_needed(0.99, 0.02, 0.1), None);
        // A baseline of 0 or 1 has no variance to size from; a tiny group detects at most 100pp.
        assert_eq!(minimum_detectable(0.0, 1000, 1000), None);
        assert_eq!(minimum_detectable(1.0, 1000, 1000), None);
        assert_eq!(minimum_detectable(0.5, 1, 1), Some(1.0));
    }
}
