//! A customer as stored, and back.
//!
//! One row per customer: a JSON document with the profile, orders, journeys in flight, pending
//! goals and finished sequences, and the next due time as a column the scheduler indexes.
//! One row written per customer per batch is what lets the store keep up with Kafka; `plan`
//! counts journeys with the databases' JSON functions instead of a table of its own.
//! Sequences are stored by (name, version) and resolved to compiled versions on load.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{
    Cause, Customer, Engine, Journey, JourneyId, Order, PendingGoal, Profile, State,
};
use crate::sequence::Sequence;

/// A customer as stored: the state document and the next due time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCustomer {
    pub id: String,
    /// JSON: profile, orders, journeys, pending goals, finished sequences.
    pub state: String,
    pub next_due: Option<DateTime<Utc>>,
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

/// The customer's state document with the profile's address marked bounced, if `address` is
/// still the profile's address (a new address has not bounced); `None` when nothing changes.
pub fn mark_bounced(c: &StoredCustomer, address: &str) -> crate::store::Result<Option<String>> {
    let corrupt = |reason: String| crate::store::StoreError::Corrupt {
        customer: c.id.clone(),
        reason,
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&c.state).map_err(|e| corrupt(e.to_string()))?;
    let Some(profile) = doc.get_mut("profile").and_then(|p| p.as_object_mut()) else {
        return Err(corrupt("no profile".into()));
    };
    let same = profile
        .get("email")
        .and_then(|e| e.as_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(address));
    if !same || profile.get("bounced") == Some(&serde_json::Value::Bool(true)) {
        return Ok(None);
    }
    profile.insert("bounced".into(), serde_json::Value::Bool(true));
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

/// Serializes a customer for saving.
pub fn to_stored(c: &Customer) -> StoredCustomer {
    let state = StateOut {
        profile: &c.profile,
        orders: c.orders.iter().map(|o| &**o).collect(),
        journeys: c.journeys.iter().map(journey_row).collect(),
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
    };
    StoredCustomer {
        id: c.profile.id.to_string(),
        // Serializing plain data into a String cannot fail.
        state: serde_json::to_string(&state).unwrap_or_default(),
        next_due: Engine::next_due(c),
    }
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

fn cause_of(name: &str) -> Cause {
    match name {
        "waited" => Cause::Waited,
        "event" => Cause::Event,
        "timeout-continue" => Cause::TimeoutContinue,
        "window" => Cause::Window,
        "quiet-hours-over" => Cause::QuietHoursOver,
        "resumed" => Cause::Resumed,
        _ => Cause::Immediate,
    }
}

/// The profile and orders of a stored customer: what rendering an email needs.
pub fn profile_and_orders(s: &StoredCustomer) -> Result<(Profile, Vec<Order>), String> {
    // Read for every email sent: journeys, goals and the rest are skipped, not built.
    #[derive(Deserialize)]
    struct ProfileAndOrders {
        profile: Profile,
        #[serde(default)]
        orders: Vec<Order>,
    }
    let mut p: ProfileAndOrders = serde_json::from_str(&s.state).map_err(|e| e.to_string())?;
    p.profile.id = s.id.as_str().into();
    Ok((p.profile, p.orders))
}

/// The journeys in flight of a stored customer, as stored.
pub fn journeys(s: &StoredCustomer) -> Result<Vec<JourneyRow>, String> {
    Ok(parse(s)?.journeys)
}

fn parse(s: &StoredCustomer) -> Result<StateIn, String> {
    let mut state: StateIn = serde_json::from_str(&s.state).map_err(|e| e.to_string())?;
    state.profile.id = s.id.as_str().into();
    Ok(state)
}

/// Rebuilds a customer. `resolve` finds a compiled sequence by (name, version); a journey on
/// a version that cannot be found is an error (its customer would otherwise silently lose it).
pub fn from_stored(
    s: &StoredCustomer,
    resolve: &mut dyn FnMut(&str, &str) -> Option<Arc<Sequence>>,
) -> Result<Customer, String> {
    let state = parse(s)?;
    let mut c = Customer::new(s.id.as_str().into());
    c.profile = Arc::new(state.profile);
    for o in state.orders {
        c.orders.push(Arc::new(o));
    }
    for f in state.finished {
        c.finished.push(f);
    }
    let mut find = |name: &str, version: &str| {
        resolve(name, version)
            .ok_or_else(|| format!("sequence {name} version {version} is not known"))
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
    for r in state.journeys {
        let sequence = find(&r.sequence, &r.version)?;
        let state = match (r.status.as_str(), r.due) {
            ("due", Some(at)) => State::Due {
                at,
                cause: cause_of(&r.cause),
            },
            ("waiting", Some(deadline)) => State::WaitingFor { deadline },
            _ => State::Paused,
        };
        if r.step as usize >= sequence.steps.len() {
            return Err(format!(
                "journey {} is at step {} of a {}-step sequence",
                r.id,
                r.step,
                sequence.steps.len()
            ));
        }
        c.journeys.push(Journey {
            id: r.id,
            sequence,
            order_id: r.order_id.as_deref().map(Arc::from),
            started_at: r.started_at,
            step: r.step as usize,
            state,
            backfill: r.backfill,
            held: r.held,
        });
    }
    Ok(c)
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
