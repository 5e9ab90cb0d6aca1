//! Sequences: the marketers' YAML, compiled into types that cannot be invalid.
//!
//! `yaml` reads the file into positioned nodes, `raw` checks its shape, `compile` checks its
//! meaning and builds a [`Sequence`]; `catalog` loads a directory, checks what spans files
//! (names, `start` targets, templates) and keeps every version by content hash.

pub mod budget;
pub mod catalog;
pub mod compile;
pub mod diag;
pub mod expr;
mod fast;
pub mod lint;
pub mod raw;
pub mod yaml;

use std::sync::Arc;

use chrono_tz::Tz;

pub use catalog::{Catalog, LoadError};
pub use diag::{Diagnostic, Pos};
pub use expr::Expr;

use crate::time::{CronWindow, Period};

/// What one sequences folder may cost to load and render (SPEC §7): the config's
/// `sequences.max_file_bytes`, `max_depth`, `max_alias_nodes`, `template_fuel` and
/// `template_recursion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: usize,
    pub max_depth: usize,
    pub max_alias_nodes: usize,
    pub template_fuel: u64,
    pub template_recursion: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 1 << 20,
            max_depth: 64,
            max_alias_nodes: 10_000,
            template_fuel: 200_000,
            template_recursion: 100,
        }
    }
}

/// A compiled, valid sequence at one version.
#[derive(Debug)]
pub struct Sequence {
    pub name: Arc<str>,
    /// Content hash of the file and the templates it renders (12 hex digits,
    /// [`compile::version_of`]); journeys stay on the version they started on.
    pub version: Arc<str>,
    /// The file it came from, as given to the loader.
    pub path: String,
    /// The file's text, as stored with the version.
    pub source: Arc<str>,
    /// What its emails are rendered with: the folder's templates when it was loaded, or those
    /// kept with a stored version.
    pub templates: Arc<crate::template::Templates>,
    pub category: Category,
    pub description: String,
    /// Timezone for customers whose profile has none (else the configured default).
    pub timezone: Option<Tz>,
    pub trigger: Trigger,
    pub journey: JourneyKind,
    pub reenter: bool,
    pub exit_on: Vec<Arc<str>>,
    pub pause_when: Option<Expr>,
    pub steps: Vec<Step>,
    pub migrate: Option<Migrate>,
    pub experiment: Option<Experiment>,
}

/// A holdout test on a sequence (SPEC §8).
#[derive(Debug)]
pub struct Experiment {
    /// The share held out, in basis points of the customers who enter (0 to 5,000).
    pub holdout: u32,
    /// Draws the groups; the sequence's name unless given.
    pub salt: Arc<str>,
    pub measures: Vec<Measure>,
    /// The uplift to detect, in basis points (`2pp` is 200), for `aftercare plan`.
    pub target: Option<u32>,
}

/// An outcome an experiment counts from each customer's entry.
#[derive(Debug)]
pub struct Measure {
    pub name: Arc<str>,
    pub event: Arc<str>,
    pub within: Period,
    pub when: Option<Expr>,
}

/// One side of a split step: the step's action, or another in its place.
#[derive(Debug)]
pub struct Variant {
    pub id: Arc<str>,
    pub weight: u32,
    /// `None`: the step as written.
    pub action: Option<Action>,
}

impl Sequence {
    /// The category that governs a step's email: the step's own, else the sequence's.
    pub fn step_category(&self, step: usize) -> &Category {
        self.steps
            .get(step)
            .and_then(|s| s.category.as_ref())
            .unwrap_or(&self.category)
    }

    /// The templates its steps send, in step order (each step's own, then its variants'):
    /// emails' and webhooks' bodies.
    pub fn email_templates(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().flat_map(|step| {
            std::iter::once(step.action.as_ref())
                .chain(step.variants.iter().map(|v| v.action.as_ref()))
                .filter_map(|a| match a {
                    Some(Action::Email { template }) => Some(&**template),
                    Some(Action::Webhook { body, .. }) => Some(&**body),
                    _ => None,
                })
        })
    }

    /// The webhook endpoints its steps post to, with where each is named.
    pub fn webhook_endpoints(&self) -> impl Iterator<Item = (&str, Pos)> {
        self.steps.iter().filter_map(|step| match &step.action {
            Some(Action::Webhook {
                endpoint,
                endpoint_pos,
                ..
            }) => Some((&**endpoint, *endpoint_pos)),
            _ => None,
        })
    }

    /// What draws its groups and variants: the experiment's salt, else its name (SPEC §8).
    pub fn salt(&self) -> &str {
        self.experiment.as_ref().map_or(&self.name, |x| &x.salt)
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| &*s.id == id)
    }
}

/// `transactional` or a marketing category (`education`, `review`, any word).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Category(pub Arc<str>);

impl Category {
    pub const TRANSACTIONAL: &str = "transactional";

    /// Transactional email ignores marketing unsubscribes, frequency caps and quiet hours.
    pub fn is_transactional(&self) -> bool {
        &*self.0 == Self::TRANSACTIONAL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug)]
pub struct Trigger {
    /// The event type that enrols; empty for a date trigger.
    pub event: Arc<str>,
    pub when: Option<Expr>,
    /// A date trigger: the journey starts on a date of the customer's.
    pub date: Option<DateTrigger>,
    /// A reorder trigger (`event` is `order.placed`): the journey starts `after` the order.
    pub reorder: Option<ReorderTrigger>,
}

/// `trigger: { reorder: { category, after, per_quantity } }` (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReorderTrigger {
    pub category: Arc<str>,
    pub after: ReorderAfter,
    pub per_quantity: bool,
}

/// How long after an order its reorder reminder waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReorderAfter {
    Fixed(Period),
    /// `after: auto`: the store's median interval for the category, while it has enough
    /// repeat buyers ([`crate::engine::intervals::MIN_BUYERS`]); `fallback` until then.
    Auto {
        fallback: Period,
    },
}

/// `trigger: { date, offset, at, repeat }` (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTrigger {
    pub field: DateField,
    /// Days from the date (negative: before).
    pub offset_days: i32,
    /// Local time of day, in the customer's timezone.
    pub at: chrono::NaiveTime,
    pub repeat: Repeat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateField {
    Birthday,
    Attribute(Arc<str>),
}

impl std::fmt::Display for DateField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DateField::Birthday => f.write_str("customer.birthday"),
            DateField::Attribute(a) => write!(f, "customer.attributes.{a}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Yearly,
    Monthly,
    Once,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JourneyKind {
    /// One journey per customer and sequence.
    PerCustomer,
    /// One journey per customer, sequence and order; it sees only its order's events.
    PerOrder,
}

#[derive(Debug)]
pub struct Step {
    pub id: Arc<str>,
    pub timing: Timing,
    pub send_window: Option<CronWindow>,
    pub skip_when: Option<Expr>,
    pub category: Option<Category>,
    pub goal: Option<Goal>,
    /// `None` for a step that only waits.
    pub action: Option<Action>,
    /// A coupon code its email or webhook carries (`coupon.code`).
    pub coupon: Option<Coupon>,
    /// A split of the step: empty, or two or more variants, each customer getting one.
    pub variants: Vec<Variant>,
}

/// How a step's coupon code is made (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coupon {
    /// Derived by HMAC from the step's idempotency key: `prefix` and `length` characters.
    Generate { prefix: Arc<str>, length: usize },
}

/// When a step becomes due, counted from when the previous step finished.
#[derive(Debug)]
pub enum Timing {
    Now,
    Wait(Period),
    WaitFor(WaitFor),
}

#[derive(Debug)]
pub struct WaitFor {
    pub event: Arc<str>,
    pub when: Option<Expr>,
    pub timeout: Period,
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Go on to the next step without the action.
    Skip,
    /// Run the action anyway.
    Continue,
    Exit,
    /// Jump to the step at this index.
    Goto(usize),
}

#[derive(Debug)]
pub struct Goal {
    pub event: Arc<str>,
    pub within: Period,
    pub when: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Email {
        template: Arc<str>,
    },
    /// Post `body` (a `.json.j2` template) to the `[webhooks.NAME]` endpoint.
    Webhook {
        endpoint: Arc<str>,
        body: Arc<str>,
        /// Where the endpoint is named, for `run`'s check against the config.
        endpoint_pos: Pos,
    },
    Start {
        sequence: Arc<str>,
    },
    Exit,
    /// Go to the step of the first arm that holds; none: on to the next step.
    Branch(Vec<Branch>),
}

/// An arm of a `branch` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// `None`: otherwise.
    pub when: Option<Expr>,
    /// The index of the step it goes to.
    pub goto: usize,
    /// Where it is written, for `validate`'s warnings.
    pub pos: Pos,
}

/// Moves journeys on version `from` to this version, renaming steps.
#[derive(Debug, Clone)]
pub struct Migrate {
    pub from: String,
    /// Old step id → index of the new step.
    pub steps: Vec<(String, usize)>,
}
