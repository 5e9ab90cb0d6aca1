//! The sequence file as written: every field optional and positioned, shape-checked only.
//!
//! Decoding checks shape (mappings, lists, scalars, unknown keys); `compile` checks meaning.
//! These same types generate the JSON Schema (`aftercare schema`), so the schema editors use
//! and the keys `validate` accepts cannot drift apart: a unit test compares the two.

use std::collections::BTreeMap;

use schemars::JsonSchema;

use super::diag::{Diags, Pos, did_you_mean};
use super::yaml::{Node, NodeKind};

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Sp<T> {
    pub value: T,
    /// Where the value starts.
    pub pos: Pos,
    /// Where its key starts (the item itself in a list): errors about a key's presence point here.
    pub key: Pos,
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// How journeys are keyed.
#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
#[allow(dead_code)]
enum JourneyKey {
    /// One journey per customer and sequence.
    PerCustomer,
    /// One journey per customer, sequence and `order_id`.
    PerOrder,
}

/// What happens when a `wait_for` times out.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code)]
enum OnTimeoutSchema {
    Keyword(OnTimeoutKeyword),
    /// The id of a step in this file to jump to.
    Step(String),
}

#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
#[allow(dead_code)]
enum OnTimeoutKeyword {
    /// Go on to the next step without the action (the default).
    Skip,
    /// Run the action anyway.
    Continue,
    /// End the journey.
    Exit,
}

/// A post-purchase sequence: who enters, when each step runs, and what it does.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields, title = "aftercare sequence")]
pub struct RawSequence {
    /// Unique name of the sequence; defaults to the file name without `.yaml`.
    pub name: Option<Sp<String>>,
    /// `transactional` (ignores unsubscribes, caps and quiet hours) or a marketing category
    /// such as `education`, `cross_sell`, `review`. Defaults to `marketing`.
    pub category: Option<Sp<String>>,
    /// What the sequence is for, for the people who read it.
    pub description: Option<Sp<String>>,
    /// IANA timezone for send windows and quiet hours when the customer has none.
    pub timezone: Option<Sp<String>>,
    /// The event that enrols a customer.
    #[schemars(required)]
    pub trigger: Option<Sp<RawTrigger>>,
    /// `per_customer` (default) or `per_order`.
    #[schemars(with = "Option<JourneyKey>")]
    pub journey: Option<Sp<String>>,
    /// May a customer who finished enter again (per_customer only). Default false.
    pub reenter: Option<Sp<bool>>,
    /// Event types that end the journey at once, even mid-wait.
    #[schemars(default)]
    pub exit_on: Vec<Sp<String>>,
    /// Expression: hold the due step while true, run it when it turns false.
    pub pause_when: Option<Sp<String>>,
    /// The steps, in order.
    #[schemars(required)]
    pub steps: Option<Sp<Vec<RawStep>>>,
    /// Move journeys in flight on an older version of this file to this one.
    pub migrate: Option<Sp<RawMigrate>>,
    /// Hold some customers out of its marketing emails and measure what the emails earn.
    pub experiment: Option<Sp<RawExperiment>>,
}

/// A holdout test: a share of the customers who enter get none of the sequence's marketing
/// emails, and each measure is compared between the two groups.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawExperiment {
    /// The share of the customers who enter that is held out, `0%` to `50%`, e.g. `10%`.
    #[schemars(required, regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?%$"))]
    pub holdout: Option<Sp<String>>,
    /// Draws the groups: changing it draws them anew. Defaults to the sequence's name.
    pub salt: Option<Sp<String>>,
    /// Outcomes counted from each customer's entry.
    #[schemars(default)]
    pub measure: Vec<Sp<RawMeasure>>,
    /// The uplift the test should be able to detect, in percentage points, e.g. `2pp`
    /// (`aftercare plan` says how long that takes).
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?pp$"))]
    pub target: Option<Sp<String>>,
}

/// An outcome an experiment counts: the customer sends `event` within `within` of entering.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawMeasure {
    /// Unique in the experiment, e.g. `repeat_purchase`.
    #[schemars(required)]
    pub name: Option<Sp<String>>,
    /// Event type that counts, e.g. `order.placed`.
    #[schemars(required)]
    pub event: Option<Sp<String>>,
    /// How long after entering it still counts.
    #[schemars(required, regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub within: Option<Sp<String>>,
    /// Expression the event must satisfy.
    pub when: Option<Sp<String>>,
}

/// One side of a split of a step: the step as written, or with another action.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawVariant {
    #[schemars(skip)]
    pub pos: Pos,
    /// Unique among the step's variants, e.g. `a`.
    #[schemars(required)]
    pub id: Option<Sp<String>>,
    /// Its share, relative to the other variants' weights: a whole number from 1.
    #[schemars(required, with = "Option<std::num::NonZeroU32>")]
    pub weight: Option<Sp<String>>,
    /// Instead of the step's action: send this email.
    pub email: Option<Sp<RawEmail>>,
    /// Instead of the step's action: enrol the customer in this sequence.
    pub start: Option<Sp<String>>,
    /// Instead of the step's action: end the journey here (`true`).
    pub exit: Option<Sp<bool>>,
}

/// The event that enrols a customer, and an optional condition on it.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTrigger {
    /// Event type, e.g. `order.delivered` (or `date` instead).
    pub event: Option<Sp<String>>,
    /// Expression that must be true for the customer to enter.
    pub when: Option<Sp<String>>,
    /// Instead of an event, a date of the customer's: `customer.birthday` or
    /// `customer.attributes.NAME` (a `YYYY-MM-DD` or RFC 3339 value).
    pub date: Option<Sp<String>>,
    /// Days before (`-3d`) or after (`2d`) the date.
    #[schemars(regex(pattern = r"^[+-]?[0-9]+d$"))]
    pub offset: Option<Sp<String>>,
    /// The local time the journey starts, `HH:MM` in the customer's timezone (default 09:00).
    #[schemars(regex(pattern = r"^[0-2][0-9]:[0-5][0-9]$"))]
    pub at: Option<Sp<String>>,
    /// `yearly` (default), `monthly` or `once`.
    #[schemars(with = "Option<RepeatSchema>")]
    pub repeat: Option<Sp<String>>,
    /// Instead of an event: a reminder to order again, after an order of a category.
    pub reorder: Option<Sp<RawReorder>>,
}

/// `trigger.reorder`: a per_order journey starts this long after an order of `category`.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawReorder {
    /// The item category, e.g. `film`.
    #[schemars(required)]
    pub category: Option<Sp<String>>,
    /// How long after the order, e.g. `30d`; or `auto`: the median interval between
    /// consecutive orders of the category among the store's repeat buyers (at least 30 of
    /// them, else `fallback`), recomputed daily.
    #[schemars(required, regex(pattern = r"^(([0-9]+[smhdw])+|auto)$"))]
    pub after: Option<Sp<String>>,
    /// With `after: auto`: the interval while fewer than 30 customers bought the category twice.
    #[schemars(regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub fallback: Option<Sp<String>>,
    /// `after` times the quantity of that category in the order.
    pub per_quantity: Option<Sp<bool>>,
}

/// How often a date trigger fires.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum RepeatSchema {
    Yearly,
    Monthly,
    Once,
}

/// One step of a sequence.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawStep {
    #[schemars(skip)]
    pub pos: Pos,
    /// Unique in the file.
    #[schemars(required)]
    pub id: Option<Sp<String>>,
    /// Duration after the previous step (the trigger for the first): `30s`, `15m`, `2h`, `3d`, `1w`.
    #[schemars(regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub wait: Option<Sp<String>>,
    /// Wait for an event instead of a fixed time.
    pub wait_for: Option<Sp<RawWaitFor>>,
    /// Cron schedule (5 fields, or 6-7 with seconds) in the customer's timezone: send at the next slot.
    pub send_window: Option<Sp<String>>,
    /// Expression: when true the step is skipped.
    pub skip_when: Option<Sp<String>>,
    /// Overrides the sequence's category for this step (unsubscribes, caps).
    pub category: Option<Sp<String>>,
    /// A conversion to count for this step.
    pub goal: Option<Sp<RawGoal>>,
    /// Action: send an email.
    pub email: Option<Sp<RawEmail>>,
    /// Action: post a JSON body to a webhook endpoint (SMS, chat, CRM tasks), through the
    /// outbox as email goes.
    pub webhook: Option<Sp<RawWebhook>>,
    /// A coupon code for the step's email or webhook, read by its templates as `coupon.code`.
    pub coupon: Option<Sp<RawCoupon>>,
    /// Action: enrol the customer in another sequence (its name).
    pub start: Option<Sp<String>>,
    /// Action: end the journey here (`true`).
    pub exit: Option<Sp<bool>>,
    /// A split of this step: each customer gets one variant, by weight.
    pub variants: Option<Sp<Vec<RawVariant>>>,
    /// Action: go to the step of the first arm whose `when` is true; an arm without `when`
    /// (last) is the fallback; with no match and no fallback, on to the next step.
    pub branch: Option<Sp<Vec<RawBranch>>>,
}

/// One arm of a `branch`: a condition and the step it goes to.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawBranch {
    #[schemars(skip)]
    pub pos: Pos,
    /// Expression; absent on the last arm: otherwise.
    pub when: Option<Sp<String>>,
    /// The id of the step to go to.
    #[schemars(required)]
    pub goto: Option<Sp<String>>,
}

/// Wait for an event, with a timeout.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawWaitFor {
    /// Event type to wait for.
    #[schemars(required)]
    pub event: Option<Sp<String>>,
    /// Expression the event must satisfy.
    pub when: Option<Sp<String>>,
    /// How long to wait, counted from when the step starts waiting.
    #[schemars(required, regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub timeout: Option<Sp<String>>,
    /// `skip` (default), `continue`, `exit`, or a step id to jump to.
    #[schemars(with = "Option<OnTimeoutSchema>")]
    pub on_timeout: Option<Sp<String>>,
}

/// A conversion to count when the customer sends an event within a window after this step.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawGoal {
    /// Event type that counts as the conversion, e.g. `order.placed`.
    #[schemars(required)]
    pub event: Option<Sp<String>>,
    /// How long after the step the conversion still counts.
    #[schemars(required, regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub within: Option<Sp<String>>,
    /// Expression the event must satisfy.
    pub when: Option<Sp<String>>,
}

/// An email, by template name under `templates/`.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawEmail {
    /// Template name, e.g. `camera/basics` for `templates/camera/basics.subject.j2` and `.html.j2` (or `.mjml.j2`).
    #[schemars(required)]
    pub template: Option<Sp<String>>,
}

/// A webhook post: the endpoint (a `[webhooks.NAME]` of the config) and the body template.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawWebhook {
    /// The endpoint's name: `[webhooks.NAME]` in aftercare.toml gives its URL, headers and timeout.
    #[schemars(required)]
    pub endpoint: Option<Sp<String>>,
    /// Template name, e.g. `sms/shipped` for `templates/sms/shipped.json.j2`: the JSON body.
    #[schemars(required)]
    pub body: Option<Sp<String>>,
}

/// A step's coupon: a code generated for the journey and step.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawCoupon {
    /// A code derived from the step's idempotency key (`journey:step`) by HMAC: the same on
    /// every render, told apart by `aftercare coupon verify CODE`.
    #[schemars(required)]
    pub generate: Option<Sp<RawGenerate>>,
}

/// How a generated code is written.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawGenerate {
    /// Before the code, e.g. `TRI-`: capital letters, digits, `-` and `_`, at most 16.
    pub prefix: Option<Sp<String>>,
    /// Characters after the prefix (Crockford base32), 6 to 32; 8 by default.
    #[schemars(with = "Option<std::num::NonZeroU32>")]
    pub length: Option<Sp<String>>,
}

/// Moves journeys on an older version of this file to this version.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawMigrate {
    /// The version (content hash) the journeys are on, as `aftercare plan` shows it.
    #[schemars(required)]
    pub from: Option<Sp<String>>,
    /// Old step id → new step id.
    #[schemars(default)]
    pub steps: BTreeMap<String, Sp<String>>,
}

impl RawSequence {
    pub const KEYS: &[&str] = &[
        "name",
        "category",
        "description",
        "timezone",
        "trigger",
        "journey",
        "reenter",
        "exit_on",
        "pause_when",
        "steps",
        "migrate",
        "experiment",
    ];
}
impl RawExperiment {
    pub const KEYS: &[&str] = &["holdout", "salt", "measure", "target"];
}
impl RawMeasure {
    pub const KEYS: &[&str] = &["name", "event", "within", "when"];
}
impl RawVariant {
    pub const KEYS: &[&str] = &["id", "weight", "email", "start", "exit"];
}
impl RawTrigger {
    pub const KEYS: &[&str] = &["event", "when", "date", "offset", "at", "repeat", "reorder"];
}
impl RawReorder {
    pub const KEYS: &[&str] = &["category", "after", "fallback", "per_quantity"];
}
impl RawStep {
    pub const KEYS: &[&str] = &[
        "id",
        "wait",
        "wait_for",
        "send_window",
        "skip_when",
        "category",
        "goal",
        "email",
        "webhook",
        "coupon",
        "start",
        "exit",
        "variants",
        "branch",
    ];
}
impl RawBranch {
    pub const KEYS: &[&str] = &["when", "goto"];
}
impl RawWaitFor {
    pub const KEYS: &[&str] = &["event", "when", "timeout", "on_timeout"];
}
impl RawGoal {
    pub const KEYS: &[&str] = &["event", "within", "when"];
}
impl RawWebhook {
    pub const KEYS: &[&str] = &["endpoint", "body"];
}
impl RawCoupon {
    pub const KEYS: &[&str] = &["generate"];
}
impl RawGenerate {
    pub const KEYS: &[&str] = &["prefix", "length"];
}
impl RawEmail {
    pub const KEYS: &[&str] = &["template"];
}
impl RawMigrate {
    pub const KEYS: &[&str] = &["from", "steps"];
}

/// A value found under a key.
#[derive(Clone, Copy)]
struct Entry<'n> {
    node: &'n Node,
    key: Pos,
}

impl<'n> Entry<'n> {
    fn item(node: &'n Node) -> Entry<'n> {
        Entry {
            node,
            key: node.pos,
        }
    }

    fn wrap<T>(self, value: T) -> Sp<T> {
        Sp {
            value,
            pos: self.node.pos,
            key: self.key,
        }
    }
}

/// The keys of one mapping, handed out one by one; whatever is left over is unknown.
struct Fields<'n> {
    entries: Vec<(&'n str, Pos, &'n Node)>,
    taken: Vec<bool>,
}

impl<'n> Fields<'n> {
    /// Reads a mapping; reports a non-mapping or duplicate keys.
    fn of(node: &'n Node, what: &str, d: &mut Diags) -> Option<Fields<'n>> {
        let NodeKind::Map(pairs) = &node.kind else {
            d.error(
                node.pos,
                format!(
                    "{what} must be a mapping of `key: value` lines, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let entries = Fields::entries(pairs, what, d);
        let taken = vec![false; entries.len()];
        Some(Fields { entries, taken })
    }

    /// A mapping's entries as (key, its position, value); keys that are not plain words and
    /// repeated keys are reported and left out.
    fn entries(
        pairs: &'n [(Node, Node)],
        what: &str,
        d: &mut Diags,
    ) -> Vec<(&'n str, Pos, &'n Node)> {
        let mut entries: Vec<(&'n str, Pos, &'n Node)> = Vec::with_capacity(pairs.len());
        // A set, not a scan of the entries: a 1 MiB file of distinct keys took 48 s.
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (k, v) in pairs {
            let Some(key) = k.as_str() else {
                d.error(k.pos, format!("keys in {what} must be plain words"));
                continue;
            };
            if !seen.insert(key) {
                d.error_hint(
                    k.pos,
                    format!("duplicate key `{key}` in {what}"),
                    "a key may appear once; remove or merge the repeated one",
                );
                continue;
            }
            entries.push((key, k.pos, v));
        }
        entries
    }

    /// The value of `key` and the key's position, if present and not null.
    fn get(&mut self, key: &str) -> Option<Entry<'n>> {
        let i = self.entries.iter().position(|(k, _, _)| *k == key)?;
        self.taken[i] = true;
        let (_, key, node) = self.entries[i];
        (node.kind != NodeKind::Null).then_some(Entry { node, key })
    }

    /// Reports every key that no `get` asked for, suggesting the closest known key.
    fn finish(self, known: &[&str], what: &str, d: &mut Diags) {
        for ((key, pos, _), taken) in self.entries.iter().zip(&self.taken) {
            if *taken {
                continue;
            }
            let msg = format!("unknown key `{key}` in {what}");
            match did_you_mean(key, known.iter().copied()) {
                Some(s) => d.error_hint(*pos, msg, format!("did you mean `{s}`?")),
                None => d.error_hint(*pos, msg, format!("known keys here: {}", known.join(", "))),
            }
        }
    }
}

fn string(e: Entry, what: &str, d: &mut Diags) -> Option<Sp<String>> {
    match &e.node.kind {
        NodeKind::Scalar { text, .. } => Some(e.wrap(text.clone())),
        _ => {
            d.error(
                e.node.pos,
                format!("{what} must be a single value, found {}", e.node.describe()),
            );
            None
        }
    }
}

fn boolean(e: Entry, what: &str, d: &mut Diags) -> Option<Sp<bool>> {
    match &e.node.kind {
        NodeKind::Scalar {
            text,
            quoted: false,
        } if text == "true" || text == "false" => Some(e.wrap(text == "true")),
        _ => {
            d.error_hint(
                e.node.pos,
                format!("{what} must be true or false"),
                "write `true` or `false` without quotes",
            );
            None
        }
    }
}

fn list<'n>(node: &'n Node, what: &str, d: &mut Diags) -> Option<&'n [Node]> {
    match &node.kind {
        NodeKind::Seq(items) => Some(items),
        _ => {
            d.error_hint(
                node.pos,
                format!("{what} must be a list, found {}", node.describe()),
                "write one item per line starting with `- `, or [a, b]",
            );
            None
        }
    }
}

fn strings(e: Entry, what: &str, d: &mut Diags) -> Vec<Sp<String>> {
    match &e.node.kind {
        // A single value is a list of one: `exit_on: order.refunded` reads naturally.
        NodeKind::Scalar { .. } => string(e, what, d).into_iter().collect(),
        _ => list(e.node, what, d)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| string(Entry::item(n), what, d))
            .collect(),
    }
}

/// Decodes a whole file's root node; shape errors go to `d`.
pub fn decode(root: &Node, d: &mut Diags) -> RawSequence {
    let mut raw = RawSequence::default();
    let Some(mut f) = Fields::of(root, "a sequence file", d) else {
        return raw;
    };
    raw.name = f.get("name").and_then(|e| string(e, "`name`", d));
    raw.category = f.get("category").and_then(|e| string(e, "`category`", d));
    raw.description = f
        .get("description")
        .and_then(|e| string(e, "`description`", d));
    raw.timezone = f.get("timezone").and_then(|e| string(e, "`timezone`", d));
    raw.trigger = f
        .get("trigger")
        .and_then(|e| decode_trigger(e.node, d).map(|t| e.wrap(t)));
    raw.journey = f.get("journey").and_then(|e| string(e, "`journey`", d));
    raw.reenter = f.get("reenter").and_then(|e| boolean(e, "`reenter`", d));
    raw.exit_on = f
        .get("exit_on")
        .map(|e| strings(e, "`exit_on`", d))
        .unwrap_or_default();
    raw.pause_when = f
        .get("pause_when")
        .and_then(|e| string(e, "`pause_when`", d));
    raw.steps = f
        .get("steps")
        .and_then(|e| decode_list(e.node, "`steps`", d, decode_step).map(|s| e.wrap(s)));
    raw.migrate = f
        .get("migrate")
        .and_then(|e| decode_migrate(e.node, d).map(|m| e.wrap(m)));
    raw.experiment = f
        .get("experiment")
        .and_then(|e| decode_experiment(e.node, d).map(|x| e.wrap(x)));
    f.finish(RawSequence::KEYS, "the sequence", d);
    raw
}

fn decode_trigger(node: &Node, d: &mut Diags) -> Option<RawTrigger> {
    let mut f = Fields::of(node, "`trigger`", d)?;
    let t = RawTrigger {
        event: f.get("event").and_then(|e| string(e, "`trigger.event`", d)),
        when: f.get("when").and_then(|e| string(e, "`trigger.when`", d)),
        date: f.get("date").and_then(|e| string(e, "`trigger.date`", d)),
        offset: f
            .get("offset")
            .and_then(|e| string(e, "`trigger.offset`", d)),
        at: f.get("at").and_then(|e| string(e, "`trigger.at`", d)),
        repeat: f
            .get("repeat")
            .and_then(|e| string(e, "`trigger.repeat`", d)),
        reorder: f
            .get("reorder")
            .and_then(|e| decode_reorder(e.node, d).map(|r| e.wrap(r))),
    };
    f.finish(RawTrigger::KEYS, "`trigger`", d);
    Some(t)
}

/// The items of the list `what` that decode; each that does not is reported and left out.
fn decode_list<T>(
    node: &Node,
    what: &str,
    d: &mut Diags,
    one: fn(&Node, &mut Diags) -> Option<T>,
) -> Option<Vec<T>> {
    let items = list(node, what, d)?;
    Some(items.iter().filter_map(|item| one(item, d)).collect())
}

fn decode_step(node: &Node, d: &mut Diags) -> Option<RawStep> {
    let mut f = Fields::of(node, "a step", d)?;
    let step = RawStep {
        pos: node.pos,
        id: f.get("id").and_then(|e| string(e, "`id`", d)),
        wait: f.get("wait").and_then(|e| string(e, "`wait`", d)),
        wait_for: f
            .get("wait_for")
            .and_then(|e| decode_wait_for(e.node, d).map(|w| e.wrap(w))),
        send_window: f
            .get("send_window")
            .and_then(|e| string(e, "`send_window`", d)),
        skip_when: f.get("skip_when").and_then(|e| string(e, "`skip_when`", d)),
        category: f.get("category").and_then(|e| string(e, "`category`", d)),
        goal: f
            .get("goal")
            .and_then(|e| decode_goal(e.node, d).map(|g| e.wrap(g))),
        email: f
            .get("email")
            .and_then(|e| decode_email(e.node, d).map(|m| e.wrap(m))),
        webhook: f
            .get("webhook")
            .and_then(|e| decode_webhook(e.node, d).map(|w| e.wrap(w))),
        coupon: f
            .get("coupon")
            .and_then(|e| decode_coupon(e.node, d).map(|c| e.wrap(c))),
        start: f.get("start").and_then(|e| string(e, "`start`", d)),
        exit: f.get("exit").and_then(|e| boolean(e, "`exit`", d)),
        variants: f
            .get("variants")
            .and_then(|e| decode_list(e.node, "`variants`", d, decode_variant).map(|v| e.wrap(v))),
        branch: f
            .get("branch")
            .and_then(|e| decode_list(e.node, "`branch`", d, decode_branch).map(|b| e.wrap(b))),
    };
    f.finish(RawStep::KEYS, "a step", d);
    Some(step)
}

fn decode_experiment(node: &Node, d: &mut Diags) -> Option<RawExperiment> {
    let mut f = Fields::of(node, "`experiment`", d)?;
    let x = RawExperiment {
        holdout: f
            .get("holdout")
            .and_then(|e| string(e, "`experiment.holdout`", d)),
        salt: f
            .get("salt")
            .and_then(|e| string(e, "`experiment.salt`", d)),
        measure: f
            .get("measure")
            .and_then(|e| list(e.node, "`experiment.measure`", d))
            .unwrap_or_default()
            .iter()
            .filter_map(|m| decode_measure(m, d).map(|x| Entry::item(m).wrap(x)))
            .collect(),
        target: f
            .get("target")
            .and_then(|e| string(e, "`experiment.target`", d)),
    };
    f.finish(RawExperiment::KEYS, "`experiment`", d);
    Some(x)
}

fn decode_measure(node: &Node, d: &mut Diags) -> Option<RawMeasure> {
    let mut f = Fields::of(node, "a measure", d)?;
    let m = RawMeasure {
        name: f.get("name").and_then(|e| string(e, "`measure.name`", d)),
        event: f.get("event").and_then(|e| string(e, "`measure.event`", d)),
        within: f
            .get("within")
            .and_then(|e| string(e, "`measure.within`", d)),
        when: f.get("when").and_then(|e| string(e, "`measure.when`", d)),
    };
    f.finish(RawMeasure::KEYS, "a measure", d);
    Some(m)
}

fn decode_reorder(node: &Node, d: &mut Diags) -> Option<RawReorder> {
    let mut f = Fields::of(node, "`trigger.reorder`", d)?;
    let r = RawReorder {
        category: f
            .get("category")
            .and_then(|e| string(e, "`reorder.category`", d)),
        after: f.get("after").and_then(|e| string(e, "`reorder.after`", d)),
        fallback: f
            .get("fallback")
            .and_then(|e| string(e, "`reorder.fallback`", d)),
        per_quantity: f
            .get("per_quantity")
            .and_then(|e| boolean(e, "`reorder.per_quantity`", d)),
    };
    f.finish(RawReorder::KEYS, "`trigger.reorder`", d);
    Some(r)
}

fn decode_branch(node: &Node, d: &mut Diags) -> Option<RawBranch> {
    let mut f = Fields::of(node, "a branch arm", d)?;
    let b = RawBranch {
        pos: node.pos,
        when: f.get("when").and_then(|e| string(e, "`branch.when`", d)),
        goto: f.get("goto").and_then(|e| string(e, "`branch.goto`", d)),
    };
    f.finish(RawBranch::KEYS, "a branch arm", d);
    Some(b)
}

fn decode_variant(node: &Node, d: &mut Diags) -> Option<RawVariant> {
    let mut f = Fields::of(node, "a variant", d)?;
    let v = RawVariant {
        pos: node.pos,
        id: f.get("id").and_then(|e| string(e, "`variant.id`", d)),
        weight: f
            .get("weight")
            .and_then(|e| string(e, "`variant.weight`", d)),
        email: f
            .get("email")
            .and_then(|e| decode_email(e.node, d).map(|m| e.wrap(m))),
        start: f.get("start").and_then(|e| string(e, "`variant.start`", d)),
        exit: f.get("exit").and_then(|e| boolean(e, "`variant.exit`", d)),
    };
    // A step key in a variant: it overrides only the action; the rest is the step's.
    for key in RawStep::KEYS
        .iter()
        .filter(|k| !RawVariant::KEYS.contains(k))
    {
        if let Some(e) = f.get(key) {
            d.error_hint(
                e.key,
                format!("`{key}` cannot differ between variants"),
                "a variant overrides only the step's action (`email`, `start` or `exit`); \
                 the rest is the step's",
            );
        }
    }
    f.finish(RawVariant::KEYS, "a variant", d);
    Some(v)
}

fn decode_wait_for(node: &Node, d: &mut Diags) -> Option<RawWaitFor> {
    let mut f = Fields::of(node, "`wait_for`", d)?;
    let w = RawWaitFor {
        event: f
            .get("event")
            .and_then(|e| string(e, "`wait_for.event`", d)),
        when: f.get("when").and_then(|e| string(e, "`wait_for.when`", d)),
        timeout: f
            .get("timeout")
            .and_then(|e| string(e, "`wait_for.timeout`", d)),
        on_timeout: f
            .get("on_timeout")
            .and_then(|e| string(e, "`wait_for.on_timeout`", d)),
    };
    f.finish(RawWaitFor::KEYS, "`wait_for`", d);
    Some(w)
}

fn decode_goal(node: &Node, d: &mut Diags) -> Option<RawGoal> {
    let mut f = Fields::of(node, "`goal`", d)?;
    let g = RawGoal {
        event: f.get("event").and_then(|e| string(e, "`goal.event`", d)),
        within: f.get("within").and_then(|e| string(e, "`goal.within`", d)),
        when: f.get("when").and_then(|e| string(e, "`goal.when`", d)),
    };
    f.finish(RawGoal::KEYS, "`goal`", d);
    Some(g)
}

fn decode_email(node: &Node, d: &mut Diags) -> Option<RawEmail> {
    let mut f = Fields::of(node, "`email`", d)?;
    let e = RawEmail {
        template: f
            .get("template")
            .and_then(|e| string(e, "`email.template`", d)),
    };
    f.finish(RawEmail::KEYS, "`email`", d);
    Some(e)
}

fn decode_webhook(node: &Node, d: &mut Diags) -> Option<RawWebhook> {
    let mut f = Fields::of(node, "`webhook`", d)?;
    let w = RawWebhook {
        endpoint: f
            .get("endpoint")
            .and_then(|e| string(e, "`webhook.endpoint`", d)),
        body: f.get("body").and_then(|e| string(e, "`webhook.body`", d)),
    };
    f.finish(RawWebhook::KEYS, "`webhook`", d);
    Some(w)
}

fn decode_coupon(node: &Node, d: &mut Diags) -> Option<RawCoupon> {
    let mut f = Fields::of(node, "`coupon`", d)?;
    let c = RawCoupon {
        generate: f
            .get("generate")
            .and_then(|e| decode_generate(e.node, d).map(|g| e.wrap(g))),
    };
    f.finish(RawCoupon::KEYS, "`coupon`", d);
    Some(c)
}

fn decode_generate(node: &Node, d: &mut Diags) -> Option<RawGenerate> {
    let mut f = Fields::of(node, "`coupon.generate`", d)?;
    let g = RawGenerate {
        prefix: f
            .get("prefix")
            .and_then(|e| string(e, "`coupon.generate.prefix`", d)),
        length: f
            .get("length")
            .and_then(|e| string(e, "`coupon.generate.length`", d)),
    };
    f.finish(RawGenerate::KEYS, "`coupon.generate`", d);
    Some(g)
}

fn decode_migrate(node: &Node, d: &mut Diags) -> Option<RawMigrate> {
    let mut f = Fields::of(node, "`migrate`", d)?;
    let mut m = RawMigrate {
        from: f.get("from").and_then(|e| string(e, "`migrate.from`", d)),
        steps: BTreeMap::new(),
    };
    if let Some(steps) = f.get("steps")
        && let Some(mut sf) = Fields::of(steps.node, "`migrate.steps`", d)
    {
        let keys: Vec<&str> = sf.entries.iter().map(|(k, _, _)| *k).collect();
        for key in keys {
            if let Some(v) = sf.get(key).and_then(|e| string(e, "a step id", d)) {
                m.steps.insert(key.to_string(), v);
            }
        }
    }
    f.finish(RawMigrate::KEYS, "`migrate`", d);
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `validate` accepts are exactly the properties the JSON Schema offers.
    #[test]
    fn schema_and_decoder_agree_on_keys() {
        fn props<T: JsonSchema>() -> Vec<String> {
            let json = serde_json::to_value(schemars::schema_for!(T)).unwrap();
            let mut keys: Vec<String> = json["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        }
        fn sorted(k: &[&str]) -> Vec<String> {
            let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        }
        assert_eq!(props::<RawSequence>(), sorted(RawSequence::KEYS));
        assert_eq!(props::<RawStep>(), sorted(RawStep::KEYS));
        assert_eq!(props::<RawTrigger>(), sorted(RawTrigger::KEYS));
        assert_eq!(props::<RawWaitFor>(), sorted(RawWaitFor::KEYS));
        assert_eq!(props::<RawGoal>(), sorted(RawGoal::KEYS));
        assert_eq!(props::<RawEmail>(), sorted(RawEmail::KEYS));
        assert_eq!(props::<RawWebhook>(), sorted(RawWebhook::KEYS));
        assert_eq!(props::<RawCoupon>(), sorted(RawCoupon::KEYS));
        assert_eq!(props::<RawGenerate>(), sorted(RawGenerate::KEYS));
        assert_eq!(props::<RawMigrate>(), sorted(RawMigrate::KEYS));
        assert_eq!(props::<RawExperiment>(), sorted(RawExperiment::KEYS));
        assert_eq!(props::<RawMeasure>(), sorted(RawMeasure::KEYS));
        assert_eq!(props::<RawVariant>(), sorted(RawVariant::KEYS));
        assert_eq!(props::<RawBranch>(), sorted(RawBranch::KEYS));
        assert_eq!(props::<RawReorder>(), sorted(RawReorder::KEYS));
    }
}
