//! Time vocabulary shared by sequences and config: durations, cron send windows, quiet hours.
//!
//! Everything here is pure: instants come in as arguments, never from the system clock.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A length of time written as `30s`, `15m`, `2h`, `3d`, `1w` (units may be combined: `1d12h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(pub Duration);

impl Period {
    pub const ZERO: Period = Period(Duration::zero());

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Period, String> {
        let bad = || not_a_duration(text);
        let s = text.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let mut total: i64 = 0;
        let mut digits = String::new();
        for ch in s.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = unit_seconds(ch).ok_or_else(bad)?;
            let n: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .filter(|v| *v <= 100 * 365 * 86_400)
                .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        }
        if !digits.is_empty() {
            return Err(format!(
                "`{text}` has no unit: write {digits}s, {digits}m, {digits}h, {digits}d or {digits}w"
            ));
        }
        Ok(Period(Duration::seconds(total)))
    }
}

/// Why `text` is not a duration.
fn not_a_duration(text: &str) -> String {
    format!("`{text}` is not a duration: write a number and a unit, like 30s, 15m, 2h, 3d or 1w")
}

/// The seconds in a duration unit (`s`, `m`, `h`, `d`, `w`).
fn unit_seconds(unit: char) -> Option<i64> {
    Some(match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    })
}

impl fmt::Display for Period {
    /// In the largest of d, h, m, s that divides it: `10d`, `36h`, `90m` — how people write
    /// durations, so reasons read like the sequence file (`1w` prints as `7d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.num_seconds();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs != 0 && secs % size == 0 {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

/// A cron schedule that says when emails of a step may go out, read in a local timezone.
#[derive(Debug, Clone)]
pub struct CronWindow {
    /// As the marketer wrote it, for reasons and errors.
    pub source: String,
    /// Usually one; two when a classic 5-field schedule restricts both day of month and
    /// weekday, which classic cron reads as "either" while the `cron` crate reads "both".
    schedules: Vec<cron::Schedule>,
}

impl CronWindow {
    /// Accepts classic 5-field cron (minute hour day month weekday, weekday 0-7 with 0 and 7 =
    /// Sunday) and the `cron` crate's 6-7 field form (seconds first, optional year).
    pub fn parse(text: &str) -> Result<CronWindow, String> {
        let schedules = cron_exprs(text)?
            .iter()
            .map(|e| {
                cron::Schedule::from_str(e)
                    .map_err(|err| format!("`{text}` is not a valid cron schedule: {err}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        // A schedule that never fires would hold a journey forever; refuse it up front. Looked
        // at from the epoch, not today, so a schedule limited to a past year stays valid for
        // replays of that year.
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        if schedules.iter().all(|s| s.after(&epoch).next().is_none()) {
            return Err(format!("`{text}` never fires"));
        }
        Ok(CronWindow {
            source: text.to_string(),
            schedules,
        })
    }

    /// The first slot at or after `at`, read in `tz`. `None` if the schedule has ended.
    pub fn next_slot(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        let whole = local.with_nanosecond(0).unwrap_or(local);
        if whole == local && !repeated(&local) && self.schedules.iter().any(|s| s.includes(local)) {
            return Some(at);
        }
        let next = self
            .schedules
            .iter()
            .filter_map(|s| s.after(&local).find(|t| !repeated(t)))
            .min()
            .map(|t| t.with_timezone(&Utc))?;
        // From a second before: at the very instant of the jump, the window is open.
        let gap = self
            .in_gap(at - Duration::seconds(1), next, tz)
            .filter(|j| *j >= at);
        Some(gap.unwrap_or(next))
    }

    /// When the clocks went forward between `from` and `to` and the window falls in the local
    /// times that were skipped (02:30 on the night 02:00 became 03:00), the instant the clocks
    /// jumped: the window opens right after the change rather than not at all that day (as
    /// cron does). The cron iterator alone would skip that day.
    fn in_gap(&self, from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        use chrono::Offset;
        let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix().local_minus_utc();
        let (before, after) = (offset(from), offset(to));
        if after <= before {
            return None;
        }
        // The first second on the new offset.
        let (mut lo, mut hi) = (from, to);
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if offset(mid) == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let jump = hi.with_nanosecond(0).unwrap_or(hi);
        let skipped_from = jump.naive_utc() + Duration::seconds(i64::from(before));
        let skipped_minutes = i64::from(after - before) / 60;
        (0..skipped_minutes)
            .map(|m| Utc.from_utc_datetime(&(skipped_from + Duration::minutes(m))))
            .any(|wall| self.schedules.iter().any(|s| s.includes(wall)))
            .then_some(jump)
            .filter(|j| *j >= from)
    }
}

/// `text` as the `cron` crate's schedules: a 5-field one with seconds added and its weekday
/// named, as two when it restricts both day of month and weekday (classic cron's "either").
fn cron_exprs(text: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    Ok(match fields.len() {
        5 => {
            let (min, hour, dom, month) = (fields[0], fields[1], fields[2], fields[3]);
            let dow = five_field_weekday(fields[4])?;
            let both = !matches!(dom, "*" | "?") && !matches!(dow.as_str(), "*" | "?");
            if both {
                vec![
                    format!("0 {min} {hour} {dom} {month} *"),
                    format!("0 {min} {hour} * {month} {dow}"),
                ]
            } else {
                vec![format!("0 {min} {hour} {dom} {month} {dow}")]
            }
        }
        6 | 7 => vec![fields.join(" ")],
        n => {
            return Err(format!(
                "`{text}` has {n} fields; a cron schedule has 5 (minute hour day month weekday)"
            ));
        }
    })
}

/// Whether `t` is the second pass of a local time the clocks went back over (the hour that
/// happens twice when daylight saving time ends). A window opens once per local time: on that
/// night, "30 1 * * *" is 01:30 the first time round, not again an hour later.
fn repeated(t: &DateTime<Tz>) -> bool {
    matches!(
        t.timezone().from_local_datetime(&t.naive_local()),
        chrono::LocalResult::Ambiguous(first, _) if first != *t
    )
}

/// Rewrites a classic cron weekday field (0-7, 0 and 7 = Sunday) into names, because the
/// `cron` crate numbers weekdays 1-7 from Sunday and would silently shift every day by one.
fn five_field_weekday(field: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut num = String::new();
    let mut last_sep = None;
    for ch in field.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
        } else {
            flush_weekday(&mut num, &mut out, last_sep)?;
            out.push(ch);
            last_sep = Some(ch);
        }
    }
    flush_weekday(&mut num, &mut out, last_sep)?;
    Ok(out)
}

/// Moves the number read so far (`num`) onto `out`: as a day's name, or as written after `/`
/// (a step, not a day).
fn flush_weekday(num: &mut String, out: &mut String, prev: Option<char>) -> Result<(), String> {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    if num.is_empty() {
        return Ok(());
    }
    if prev == Some('/') {
        out.push_str(num);
    } else {
        let n: usize = num.parse().map_err(|_| format!("bad weekday `{num}`"))?;
        let name = NAMES
            .get(n)
            .ok_or_else(|| format!("weekday {n} is out of range 0-7"))?;
        out.push_str(name);
    }
    num.clear();
    Ok(())
}

/// Local hours in which marketing email is held back, e.g. `21:00-08:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl FromStr for QuietHours {
    type Err = String;

    fn from_str(text: &str) -> Result<QuietHours, String> {
        let bad =
            || format!("`{text}` is not a time range: write it as HH:MM-HH:MM, like 21:00-08:00");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let start = NaiveTime::parse_from_str(a.trim(), "%H:%M").map_err(|_| bad())?;
        let end = NaiveTime::parse_from_str(b.trim(), "%H:%M").map_err(|_| bad())?;
        if start == end {
            return Err(format!("`{text}` is empty: start and end are the same"));
        }
        Ok(QuietHours { start, end })
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

impl QuietHours {
    /// If `at` falls in quiet hours in `tz`, the instant they end.
    pub fn end_if_inside(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        let t = local.time();
        let inside = if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        };
        if !inside {
            return None;
        }
        let mut day = local.date_naive();
        if t >= self.end {
            day = day.succ_opt()?;
        }
        let end = day.and_time(self.end);
        // In a DST gap the wall-clock end does not exist; the earliest later instant does.
        let resolved = tz.from_local_datetime(&end).earliest().or_else(|| {
            tz.from_local_datetime(&(end + Duration::hours(1)))
                .earliest()
        })?;
        Some(resolved.with_timezone(&Utc))
    }
}

/// Parses an IANA timezone name (`Asia/Seoul`).
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA timezone name"))
}

/// RFC 3339 with whole seconds and `Z`, the form used in every output line.
/// The end of 9999-12-31T23:59:59Z (a leap second included): the last instant a timer may
/// fire at. RFC 3339 has four-digit years, so a wait that ends later never ends (the journey
/// waits, due "never").
pub fn last_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 1_999_999_999).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether a timer at `t` can fire (it is not after [`last_instant`]).
pub fn fires(t: DateTime<Utc>) -> bool {
    t <= last_instant()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("3d".parse::<Period>().unwrap().0, Duration::days(3));
        assert_eq!("1d12h".parse::<Period>().unwrap().0, Duration::hours(36));
        assert_eq!("1w".parse::<Period>().unwrap().to_string(), "7d");
        assert_eq!("10d".parse::<Period>().unwrap().to_string(), "10d");
        assert_eq!("1d12h".parse::<Period>().unwrap().to_string(), "36h");
        assert_eq!("0s".parse::<Period>().unwrap().to_string(), "0s");
        assert!("3".parse::<Period>().unwrap_err().contains("no unit"));
        assert!("3 days".parse::<Period>().is_err());
        assert!("".parse::<Period>().is_err());
    }

    #[test]
    fn five_field_cron_uses_classic_weekdays() {
        // 2024-01-05 is a Friday; "1-5" must mean Monday to Friday.
        let w = CronWindow::parse("0 9 * * 1-5").unwrap();
        let fri_late = utc("2024-01-05T10:00:00Z");
        assert_eq!(
            w.next_slot(fri_late, Tz::UTC),
            Some(utc("2024-01-08T09:00:00Z"))
        );
        let sun = CronWindow::parse("0 9 * * 0").unwrap();
        assert_eq!(
            sun.next_slot(fri_late, Tz::UTC),
            Some(utc("2024-01-07T09:00:00Z"))
        );
    }

    #[test]
    fn slot_now_is_kept_and_timezone_is_honoured() {
        let w = CronWindow::parse("0 9-18 * * MON-FRI").unwrap();
        let at = utc("2024-01-08T00:00:00Z"); // 09:00 Monday in Seoul
        assert_eq!(w.next_slot(at, chrono_tz::Asia::Seoul), Some(at));
        let later = utc("2024-01-08T00:00:30Z");
        assert_eq!(
            w.next_slot(later, chrono_tz::Asia::Seoul),
            Some(utc("2024-01-08T01:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_weekday_mean_either_as_in_classic_cron() {
        // Thursday 2024-05-02: the next "1st of the month or a Monday" is Monday the 6th.
        let w = CronWindow::parse("0 9 1 * MON").unwrap();
        assert_eq!(
            w.next_slot(utc("2024-05-02T12:00:00Z"), Tz::UTC),
            Some(utc("2024-05-06T09:00:00Z"))
        );
        assert_eq!(
            w.next_slot(utc("2024-05-28T12:00:00Z"), Tz::UTC),
            Some(utc("2024-06-01T09:00:00Z"))
        );
    }

    #[test]
    fn a_schedule_of_a_past_year_is_still_valid() {
        assert!(CronWindow::parse("0 0 9 * * * 2020").is_ok());
        assert!(
            CronWindow::parse("0 0 30 2 *")
                .unwrap_err()
                .contains("never fires")
        );
    }

    #[test]
    fn bad_cron_is_refused() {
        assert!(CronWindow::parse("0 25 * * *").is_err());
        assert!(CronWindow::parse("every day").is_err());
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let q: QuietHours = "21:00-08:00".parse().unwrap();
        assert_eq!(
            q.end_if_inside(utc("2024-01-01T22:00:00Z"), Tz::UTC),
            Some(utc("2024-01-02T08:00:00Z"))
        );
        assert_eq!(
            q.end_if_inside(utc("2024-01-02T07:00:00Z"), Tz::UTC),
            Some(utc("2024-01-02T08:00:00Z"))
        );
        assert_eq!(q.end_if_inside(utc("2024-01-02T08:00:00Z"), Tz::UTC), None);
        assert_eq!(q.end_if_inside(utc("2024-01-02T12:00:00Z"), Tz::UTC), None);
    }
}
