//! A customer as stored, and back.
//!
//! One row per customer: a JSON document with the profile, orders, journeys in flight, pending
//! goals and finished sequences, and the next due time as a column the scheduler indexes.
//! One row written per customer per batch is what lets the store keep up with Kafka; `plan`
//! counts journeys with the databases' JSON functions instead of a table of its own.
//! Sequences are stored by (name, version) and resolved to compiled versions on load.
//!
//! A customer with many journeys or orders (a marketplace seller, a business account) keeps
//! them as rows of their own instead (`journey_rows`, `order_rows`: one JSON document per row, by the
//! number [`Journeys::changes`] gives), flagged in the document: an event then rewrites the
//! rows it changed, not the whole history (SPEC §7). Each write gives the customer row a new
//! revision, so a copy kept in memory is known to be current ([`Loaded`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::coupon::Given;
use crate::engine::customer::Relationship;
use crate::engine::dates::DateDue;
use crate::engine::experiment::Assignment;
use crate::engine::{
    Cause, Changed, Customer, Engine, Journey, JourneyId, Journeys, Order, Orders, PendingGoal,
    Profile, State,
};
use crate::sequence::Sequence;

/// Why a stored customer cannot be read back: its events are dead-lettered with this reason
/// until it is mended (nothing about it is guessed).
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{what} row {n}: {source}")]
    Row {
        what: &'static str,
        n: i64,
        source: serde_json::Error,
    },
    #[error("sequence {name} version {version} is not known")]
    UnknownVersion { name: String, version: String },
    #[error("journey {journey} is at step {step} of a {steps}-step sequence")]
    NoSuchStep {
        journey: JourneyId,
        step: u32,
        steps: usize,
    },
    #[error("journey {journey} has status `{status}` {}", if *.due { "with a due time" } else { "without a due time" })]
    NoSuchStatus {
        journey: JourneyId,
        status: String,
        due: bool,
    },
    #[error("journey {journey} was made due by `{cause}`, which this version does not know")]
    NoSuchCause { journey: JourneyId, cause: String },
}

/// A customer as stored: the state document and the next due time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredCustomer {
    pub id: String,
    /// JSON: profile, orders, journeys, pending goals, finished sequences.
    pub state: String,
    pub next_due: Option<DateTime<Utc>>,
    /// Changes with every write of the row: equal revisions, equal states. Written by the
    /// engine's saves; every other writer sets 0, which no saved copy has.
    pub rev: i64,
    /// The journeys and orders kept as rows, when the document says so: as read (every row,
    /// by number), or to write.
    pub rows: Rows,
}

/// A customer's journey and order rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub journeys: RowSet,
    pub orders: RowSet,
}

/// Rows of one table, by number: as read, `put` holds them all; to write, the customer's rows
/// go first if `clear`, then those `gone`, then `put` are inserted or replaced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowSet {
    pub clear: bool,
    pub put: Vec<(i64, String)>,
    pub gone: Vec<i64>,
}

impl RowSet {
    fn of<T>(
        changed: Option<Changed<'_, T>>,
        was_rows: bool,
        row: impl Fn(&T) -> String,
    ) -> RowSet {
        let Some(changed) = changed else {
            // Few: listed in the document; rows kept before go.
            return RowSet {
                clear: was_rows,
                ..RowSet::default()
            };
        };
        let mut set = RowSet {
            clear: changed.all,
            ..RowSet::default()
        };
        for (n, item) in changed.items {
            match item {
                Some(item) => set.put.push((n as i64, row(item))),
                None => set.gone.push(n as i64),
            }
        }
        set
    }
}

/// A customer revived from the store, with what its next save needs to know: the revision it
/// was read at (or last written with) and which of its lists were kept as rows.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub customer: Customer,
    pub rev: i64,
    journey_rows: bool,
    order_rows: bool,
}

impl Loaded {
    /// A customer the store does not have yet.
    pub fn new(customer: Customer) -> Loaded {
        Loaded {
            customer,
            rev: 0,
            journey_rows: false,
            order_rows: false,
        }
    }

    /// A customer to write over a stored one that cannot be read (an erasure needs only its
    /// address): the rows the stored one kept go with it.
    pub fn replacing(customer: Customer, stored: &StoredCustomer) -> Loaded {
        let kept = serde_json::from_str::<KeptAsRows>(&stored.state).unwrap_or(KeptAsRows {
            journey_rows: true,
            order_rows: true,
        });
        Loaded {
            customer,
            rev: stored.rev,
            journey_rows: kept.journey_rows,
            order_rows: kept.order_rows,
        }
    }

    /// Whether its journeys or orders are kept as rows: a customer worth keeping in memory.
    pub fn has_rows(&self) -> bool {
        self.journey_rows || self.order_rows
    }
}

/// One journey in flight, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyRow {
    pub id: JourneyId,
    pub sequence: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Index of the current step in its version.
    pub step: u32,
    /// Its id, for people reading the document.
    pub step_id: String,
    /// `due`, `waiting` (for an event) or `paused`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    /// Started from an event older than `policy.max_event_age`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// Paused by an operator (admin API) until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

#[derive(Serialize)]
struct StateOut<'a> {
    profile: &'a Profile,
    orders: Vec<&'a Order>,
    journeys: Vec<JourneyRow>,
    goals: Vec<GoalRecord>,
    finished: &'a [Arc<str>],
    #[serde(skip_serializing_if = "<[Assignment]>::is_empty")]
    experiments: &'a [Assignment],
    #[serde(skip_serializing_if = "<[DateDue]>::is_empty")]
    dates: &'a [DateDue],
    #[serde(skip_serializing_if = "<[Given]>::is_empty")]
    coupons: &'a [Given],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    journey_rows: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    order_rows: bool,
}

#[derive(Deserialize)]
struct StateIn {
    profile: Profile,
    #[serde(default)]
    orders: Vec<Order>,
    #[serde(default)]
    journeys: Vec<JourneyRow>,
    #[serde(default)]
    goals: Vec<GoalRecord>,
    #[serde(default)]
    finished: Vec<Arc<str>>,
    #[serde(default)]
    experiments: Vec<Assignment>,
    #[serde(default)]
    dates: Vec<DateDue>,
    #[serde(default)]
    coupons: Vec<Given>,
    #[serde(default)]
    journey_rows: bool,
    #[serde(default)]
    order_rows: bool,
}

/// Which of the customer's lists are rows of their own.
#[derive(Deserialize)]
struct KeptAsRows {
    #[serde(default)]
    journey_rows: bool,
    #[serde(default)]
    order_rows: bool,
}

/// Whether a state document keeps journeys or orders as rows: the store reads them too.
pub fn has_rows(state: &str) -> bool {
    // Nearly every document has neither flag, nor the text of one: no second parse for it.
    (state.contains("journey_rows") || state.contains("order_rows"))
        && serde_json::from_str::<KeptAsRows>(state).is_ok_and(|k| k.journey_rows || k.order_rows)
}

#[derive(Serialize, Deserialize)]
struct GoalRecord {
    journey: JourneyId,
    sequence: String,
    version: String,
    step: u32,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// The parts of a state document the experiments' figures count (see
/// [`crate::store::StoreFigures::experiments`]); an unreadable part counts as absent.
pub fn experiment_parts(
    experiments: Option<&str>,
    relationship: Option<&str>,
) -> (Vec<Assignment>, Option<Relationship>) {
    let experiments = experiments
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_default();
    let relationship = relationship.and_then(|r| serde_json::from_str(r).ok());
    (experiments, relationship)
}

/// The customer's state document with the profile's address marked bounced by the engine's
/// rule ([`Engine::bounce`]: if `address` is still the profile's address, a new address has not
/// bounced); `None` when nothing changes.
pub fn mark_bounced(c: &StoredCustomer, address: &str) -> crate::store::Result<Option<String>> {
    let corrupt = |reason: String| crate::store::StoreError::Corrupt {
        customer: c.id.clone(),
        reason,
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&c.state).map_err(|e| corrupt(e.to_string()))?;
    let Some(stored) = doc.get_mut("profile") else {
        return Err(corrupt("no profile".into()));
    };
    let mut profile: Profile =
        serde_json::from_value(stored.clone()).map_err(|e| corrupt(e.to_string()))?;
    // The engine's rule, on the profile as stored: the rest of the document is left as is.
    if !Engine::bounce(&mut profile, address) {
        return Ok(None);
    }
    *stored = serde_json::to_value(&profile).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(doc.to_string()))
}

/// The state document with its amounts as decimal strings, when some are still JSON numbers
/// (floats, from stores written before amounts were decimals); `None` when nothing changes.
/// The stores run it over every customer once, when they migrate.
pub fn amounts_as_decimals(state: &str) -> Option<String> {
    fn fix(v: Option<&mut serde_json::Value>, changed: &mut bool) {
        let Some(v) = v else { return };
        if !v.is_number() {
            return;
        }
        if let Ok(m) = serde_json::from_value::<crate::event::Money>(v.clone()) {
            *v = serde_json::Value::String(m.to_string());
            *changed = true;
        }
    }
    let mut doc: serde_json::Value = serde_json::from_str(state).ok()?;
    let mut changed = false;
    fix(doc.pointer_mut("/profile/total_spent"), &mut changed);
    if let Some(orders) = doc.get_mut("orders").and_then(|o| o.as_array_mut()) {
        for o in orders {
            fix(o.get_mut("total"), &mut changed);
            fix(o.get_mut("refunded"), &mut changed);
            if let Some(items) = o.get_mut("items").and_then(|i| i.as_array_mut()) {
                for item in items {
                    fix(item.get_mut("unit_price"), &mut changed);
                }
            }
        }
    }
    changed.then(|| doc.to_string())
}

/// Serializes a customer for saving as revision `rev`: its lists kept as rows when long,
/// then only what changed since it was loaded or last saved.
pub fn to_stored(l: &mut Loaded, rev: i64) -> StoredCustomer {
    let c = &mut l.customer;
    let journeys = RowSet::of(c.journeys.changes(!l.journey_rows), l.journey_rows, |j| {
        json(&journey_row(j))
    });
    let orders = RowSet::of(c.orders.changes(!l.order_rows), l.order_rows, json);
    l.journey_rows = c.journeys.is_indexed();
    l.order_rows = c.orders.is_indexed();
    l.rev = rev;
    let c = &l.customer;
    let state = StateOut {
        profile: &c.profile,
        orders: match l.order_rows {
            true => Vec::new(),
            false => c.orders.iter().map(|o| &**o).collect(),
        },
        journeys: match l.journey_rows {
            true => Vec::new(),
            false => c.journeys.iter().map(journey_row).collect(),
        },
        goals: c
            .goals
            .iter()
            .map(|g| GoalRecord {
                journey: g.journey,
                sequence: g.sequence.name.to_string(),
                version: g.sequence.version.to_string(),
                step: g.step as u32,
                from: g.from,
                until: g.until,
            })
            .collect(),
        finished: &c.finished,
        experiments: &c.experiments,
        dates: &c.dates,
        coupons: &c.coupons,
        journey_rows: l.journey_rows,
        order_rows: l.order_rows,
    };
    StoredCustomer {
        id: c.profile.id.to_string(),
        state: json(&state),
        next_due: Engine::next_due(c),
        rev,
        rows: Rows { journeys, orders },
    }
}

/// Serializing plain data into a String cannot fail.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn journey_row(j: &Journey) -> JourneyRow {
    let (status, due, cause) = match j.state {
        State::Due { at, cause } => ("due", Some(at), cause_name(cause)),
        State::WaitingFor { deadline } => ("waiting", Some(deadline), ""),
        State::Paused => ("paused", None, ""),
    };
    JourneyRow {
        id: j.id,
        sequence: j.sequence.name.to_string(),
        version: j.sequence.version.to_string(),
        order_id: j.order_id.as_deref().map(str::to_string),
        started_at: j.started_at,
        step: j.step as u32,
        step_id: j.step_id().map(|s| s.to_string()).unwrap_or_default(),
        status: status.to_string(),
        due,
        cause: cause.to_string(),
        backfill: j.backfill,
        held: j.held,
    }
}

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Immediate => "immediate",
        Cause::Waited => "waited",
        Cause::Event => "event",
        Cause::TimeoutContinue => "timeout-continue",
        Cause::Window => "window",
        Cause::QuietHoursOver => "quiet-hours-over",
        Cause::Resumed => "resumed",
    }
}

/// The cause as [`cause_name`] wrote it; `None` for a name it never writes.
fn cause_of(name: &str) -> Option<Cause> {
    Some(match name {
        // Journeys stored before causes were kept have none.
        "immediate" | "" => Cause::Immediate,
        "waited" => Cause::Waited,
        "event" => Cause::Event,
        "timeout-continue" => Cause::TimeoutContinue,
        "window" => Cause::Window,
        "quiet-hours-over" => Cause::QuietHoursOver,
        "resumed" => Cause::Resumed,
        _ => return None,
    })
}

/// A journey's state as [`journey_row`] wrote it.
fn state_of(r: &JourneyRow) -> Result<State, Unreadable> {
    Ok(match (r.status.as_str(), r.due) {
        ("due", Some(at)) => State::Due {
            at,
            cause: cause_of(&r.cause).ok_or_else(|| Unreadable::NoSuchCause {
                journey: r.id,
                cause: r.cause.clone(),
            })?,
        },
        ("waiting", Some(deadline)) => State::WaitingFor { deadline },
        ("paused", _) => State::Paused,
        (status, due) => {
            return Err(Unreadable::NoSuchStatus {
                journey: r.id,
                status: status.to_string(),
                due: due.is_some(),
            });
        }
    })
}

/// The profile and orders of a stored customer: what rendering an email needs.
pub fn profile_and_orders(s: &StoredCustomer) -> Result<(Profile, Vec<Order>), Unreadable> {
    // Read for every email sent: journeys, goals and the rest are skipped, not built.
    #[derive(Deserialize)]
    struct ProfileAndOrders {
        profile: Profile,
        #[serde(default)]
        orders: Vec<Order>,
    }
    let mut p: ProfileAndOrders = serde_json::from_str(&s.state)?;
    p.profile.id = s.id.as_str().into();
    p.orders.extend(
        rows_of::<Order>(&s.rows.orders, "order")?
            .into_iter()
            .map(|(_, o)| o),
    );
    Ok((p.profile, p.orders))
}

/// The journeys in flight of a stored customer, as stored.
pub fn journeys(s: &StoredCustomer) -> Result<Vec<JourneyRow>, Unreadable> {
    let mut listed = parse(s)?.journeys;
    listed.extend(
        rows_of::<JourneyRow>(&s.rows.journeys, "journey")?
            .into_iter()
            .map(|(_, j)| j),
    );
    Ok(listed)
}

fn parse(s: &StoredCustomer) -> Result<StateIn, Unreadable> {
    let mut state: StateIn = serde_json::from_str(&s.state)?;
    state.profile.id = s.id.as_str().into();
    Ok(state)
}

/// Rows as read, in number order.
fn rows_of<T: serde::de::DeserializeOwned>(
    set: &RowSet,
    what: &'static str,
) -> Result<Vec<(u64, T)>, Unreadable> {
    let mut rows = set
        .put
        .iter()
        .map(|(n, text)| {
            let item = serde_json::from_str(text).map_err(|source| Unreadable::Row {
                what,
                n: *n,
                source,
            })?;
            Ok((*n as u64, item))
        })
        .collect::<Result<Vec<_>, Unreadable>>()?;
    rows.sort_by_key(|(n, _)| *n);
    Ok(rows)
}

/// Rebuilds a customer. `resolve` finds a compiled sequence by (name, version); a journey on
/// a version that cannot be found is an error (its customer would otherwise silently lose it).
pub fn from_stored(
    s: &StoredCustomer,
    resolve: &mut dyn FnMut(&str, &str) -> Option<Arc<Sequence>>,
) -> Result<Loaded, Unreadable> {
    let state = parse(s)?;
    let mut c = Customer::new(s.id.as_str().into());
    c.profile = Arc::new(state.profile);
    if state.order_rows {
        let rows = rows_of::<Order>(&s.rows.orders, "order")?;
        c.orders = Orders::numbered(rows.into_iter().map(|(n, o)| (n, Arc::new(o))).collect());
    }
    for o in state.orders {
        c.orders.push(Arc::new(o));
    }
    for f in state.finished {
        c.finished.push(f);
    }
    c.experiments = state.experiments.into();
    c.dates = state.dates.into();
    c.coupons = state.coupons.into();
    let mut find = |name: &str, version: &str| {
        resolve(name, version).ok_or_else(|| Unreadable::UnknownVersion {
            name: name.to_string(),
            version: version.to_string(),
        })
    };
    for g in state.goals {
        let sequence = find(&g.sequence, &g.version)?;
        c.goals.push(PendingGoal {
            journey: g.journey,
            sequence,
            step: g.step as usize,
            from: g.from,
            until: g.until,
        });
    }
    let mut revive = |r: JourneyRow| revive_journey(r, &mut find);
    if state.journey_rows {
        let rows = rows_of::<JourneyRow>(&s.rows.journeys, "journey")?;
        let mut numbered = Vec::with_capacity(rows.len());
        for (n, r) in rows {
            numbered.push((n, revive(r)?));
        }
        c.journeys = Journeys::numbered(numbered);
    }
    for r in state.journeys {
        c.journeys.push(revive(r)?);
    }
    Ok(Loaded {
        customer: c,
        rev: s.rev,
        journey_rows: state.journey_rows,
        order_rows: state.order_rows,
    })
}

/// Finds a sequence version by (name, version), or says it is unknown.
type FindVersion<'a> = dyn FnMut(&str, &str) -> Result<Arc<Sequence>, Unreadable> + 'a;

/// A stored journey on its sequence version (found by `find`), at a step that version has.
fn revive_journey(r: JourneyRow, find: &mut FindVersion<'_>) -> Result<Journey, Unreadable> {
    let sequence = find(&r.sequence, &r.version)?;
    let state = state_of(&r)?;
    if r.step as usize >= sequence.steps.len() {
        return Err(Unreadable::NoSuchStep {
            journey: r.id,
            step: r.step,
            steps: sequence.steps.len(),
        });
    }
    Ok(Journey {
        id: r.id,
        sequence,
        order_id: r.order_id.as_deref().map(Arc::from),
        started_at: r.started_at,
        step: r.step as usize,
        state,
        backfill: r.backfill,
        held: r.held,
    })
}

/// A version's kept templates as stored: a JSON list of `[file, text]` pairs (JSON escapes
/// the NUL PostgreSQL's text refuses); `''` for none.
pub fn templates_text(files: &[(String, String)]) -> String {
    if files.is_empty() {
        return String::new();
    }
    serde_json::to_string(files).unwrap_or_default()
}

/// The templates kept with a version, read back from [`templates_text`].
pub fn templates_of(text: &str) -> super::Result<Vec<(String, String)>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| {
        super::StoreError::Unreadable(format!("the templates kept with a version: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::{StoredCustomer, from_stored};

    /// A customer whose one journey is stored with `status` and `cause`, revived against the
    /// starter set (any name resolves to its first sequence).
    /// What it reads back as: `read: STATE`, or `unreadable: WHY`.
    fn revive(status: &str, due: Option<&str>, cause: &str) -> String {
        let catalog = crate::engine::journeys::tests::catalog();
        let sequence = catalog.sequences()[0].clone();
        let due = due.map_or(String::new(), |d| format!(r#","due":"{d}""#));
        let state = format!(
            r#"{{"profile":{{}},"journeys":[{{"id":"0000000000000007","sequence":"s","version":"v","started_at":"2026-01-01T00:00:00Z","step":0,"step_id":"x","status":"{status}"{due},"cause":"{cause}"}}]}}"#
        );
        let stored = StoredCustomer {
            id: "c".into(),
            state,
            ..StoredCustomer::default()
        };
        from_stored(&stored, &mut |_, _| Some(sequence.clone())).map_or_else(
            |e| format!("unreadable: {e}"),
            |l| {
                format!(
                    "read: {:?}",
                    l.customer.journeys.iter().next().map(|j| j.state)
                )
            },
        )
    }

    /// Every state a journey is stored in reads back as written; anything else makes the
    /// customer unreadable, with what is wrong, rather than being guessed at.
    #[test]
    fn a_journey_state_reads_back_exactly_or_not_at_all() {
        let at = "2026-01-02T00:00:00Z";
        assert_eq!(
            revive("due", Some(at), "window"),
            "read: Some(Due { at: 2026-01-02T00:00:00Z, cause: Window })"
        );
        // Stored before causes were kept.
        assert_eq!(
            revive("due", Some(at), ""),
            "read: Some(Due { at: 2026-01-02T00:00:00Z, cause: Immediate })"
        );
        assert_eq!(
            revive("waiting", Some(at), ""),
            "read: Some(WaitingFor { deadline: 2026-01-02T00:00:00Z })"
        );
        assert_eq!(revive("paused", None, ""), "read: Some(Paused)");
        assert_eq!(
            revive("due", Some(at), "teleport"),
            "unreadable: journey 0000000000000007 was made due by `teleport`, which this version does not know"
        );
        assert_eq!(
            revive("due", None, "waited"),
            "unreadable: journey 0000000000000007 has status `due` without a due time"
        );
        assert_eq!(
            revive("sleeping", Some(at), ""),
            "unreadable: journey 0000000000000007 has status `sleeping` with a due time"
        );
    }
}
