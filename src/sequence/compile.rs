//! One sequence file: YAML → raw → a [`Sequence`] that cannot be invalid, or every error.

use std::collections::HashMap;
use std::sync::Arc;

use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use super::diag::{Diags, Pos, did_you_mean};
use super::expr::Expr;
use super::raw::{self, RawStep, Sp};
use super::{
    Action, Branch, Category, Coupon, DateField, DateTrigger, Experiment, Goal, JourneyKind,
    Limits, Measure, Migrate, OnTimeout, ReorderAfter, ReorderTrigger, Repeat, Sequence, Step,
    Timing, Trigger, Variant, WaitFor,
};
use crate::template::Templates;
use crate::time::{CronWindow, Period, parse_tz};

/// `Some(None)` (absent) and `Some(Some(v))` (valid) pass; `None` means "present but invalid".
fn each<T>(x: Option<Option<T>>) -> Option<Option<T>> {
    match x {
        None => Some(None),
        Some(None) => None,
        Some(v) => Some(v),
    }
}

const DURATION_HINT: &str = "durations look like 30s, 15m, 2h, 3d or 1w";
const CRON_HINT: &str =
    "cron has 5 fields: minute hour day month weekday, e.g. \"0 9-18 * * MON-FRI\"";

/// The action keys of a step or of a variant.
struct Acts<'r> {
    email: Option<&'r Sp<raw::RawEmail>>,
    webhook: Option<&'r Sp<raw::RawWebhook>>,
    start: Option<&'r Sp<String>>,
    exit: Option<&'r Sp<bool>>,
    branch: Option<&'r Sp<Vec<raw::RawBranch>>>,
    /// What has them, for messages: `a step`, `a variant`.
    what: &'static str,
}

/// A compiled file, with the `start` targets still to check against the other files.
pub struct Compiled {
    pub sequence: Sequence,
    pub starts: Vec<Sp<String>>,
}

/// The content hash that names a version of a sequence: its file and the template files its
/// emails render ([`Templates::files_used`]), so an edited template is a new version and
/// journeys in flight keep the one they started with.
pub fn version_of(source: &str, templates: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    // Lengths first: no two different sets of files hash alike.
    for (file, text) in templates {
        for part in [file, text] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The longest name, category or step id: they go into headers, URLs and metric labels.
const MAX_WORD: usize = 100;

/// The largest weight of a variant: weights are relative, and their sum must not overflow.
const MAX_WEIGHT: u32 = 1_000_000;

/// Most steps in one sequence: a journey may run them all at one instant, and each compiled
/// expression takes memory (39,000 steps of a 1 MiB file took 700 MB).
pub const MAX_STEPS: usize = 1000;

/// Compiles one file with the default limits. Returns `None` when `d` received any error for
/// it.
pub fn compile(
    path: &str,
    source: &str,
    templates: &Arc<Templates>,
    d: &mut Diags,
) -> Option<Compiled> {
    compile_limited(path, source, templates, d, &Limits::default())
}

/// As [`compile`], refusing a file that goes past `limits` (size, nesting, aliases).
pub fn compile_limited(
    path: &str,
    source: &str,
    templates: &Arc<Templates>,
    d: &mut Diags,
    limits: &Limits,
) -> Option<Compiled> {
    if source.len() > limits.max_file_bytes {
        d.error_hint(
            Pos::START,
            format!(
                "the file is {} bytes, over the {}-byte limit",
                source.len(),
                limits.max_file_bytes
            ),
            "split it into several sequences (sequences.max_file_bytes)",
        );
        return None;
    }
    compile_with(path, source, templates, true, d, limits)
}

/// Compiles a stored older version so its journeys can finish, rendering with `templates`
/// (the files kept with it) and keeping the version it was stored under. Its templates are
/// not checked again: they were when it was first loaded.
pub fn compile_kept(
    record: &crate::store::VersionRecord,
    templates: Arc<Templates>,
) -> Result<Sequence, Vec<super::Diagnostic>> {
    let mut d = Diags::new(&record.path);
    let limits = *templates.limits();
    match compile_with(
        &record.path,
        &record.source,
        &templates,
        false,
        &mut d,
        &limits,
    ) {
        Some(c) => Ok(Sequence {
            version: record.version.as_str().into(),
            ..c.sequence
        }),
        None => Err(d.list),
    }
}

fn compile_with(
    path: &str,
    source: &str,
    templates: &Arc<Templates>,
    check_templates: bool,
    d: &mut Diags,
    limits: &Limits,
) -> Option<Compiled> {
    let yaml = super::yaml::YamlLimits {
        max_depth: limits.max_depth,
        max_alias_nodes: limits.max_alias_nodes,
    };
    // A byte-order mark is no content (editors on Windows write one).
    let text = source.strip_prefix('\u{feff}').unwrap_or(source);
    let root = match super::yaml::parse_limited(text, yaml) {
        Ok(root) => root,
        Err(e) => {
            d.error_hint(
                e.pos,
                format!("YAML syntax error: {}", e.message),
                e.hint.unwrap_or(
                    "check indentation (spaces, not tabs) and that quotes and brackets are closed",
                ),
            );
            return None;
        }
    };
    let before = d.list.len();
    let raw = raw::decode(&root, d);
    let mut c = Compiler {
        d,
        templates: check_templates.then_some(&**templates),
        renders_with: templates,
        starts: Vec::new(),
    };
    let sequence = c.sequence(path, source, raw).map(|mut s| {
        s.version = version_of(source, &templates.files_used(s.email_templates())).into();
        s
    });
    let starts = c.starts;
    (d.list.len() == before)
        .then_some(())
        .and(sequence)
        .map(|sequence| Compiled { sequence, starts })
}

/// Each step's index and the position of its id, by id.
type Ids<'s> = HashMap<&'s str, (usize, Pos)>;

struct Compiler<'a, 'b, 'd> {
    d: &'d mut Diags<'a>,
    /// `None` when reviving a stored version: templates are not checked then.
    templates: Option<&'b Templates>,
    /// The templates the sequence's emails are rendered with.
    renders_with: &'b Arc<Templates>,
    starts: Vec<Sp<String>>,
}

impl Compiler<'_, '_, '_> {
    fn sequence(&mut self, path: &str, source: &str, raw: raw::RawSequence) -> Option<Sequence> {
        let name = self.name(raw.name.as_ref(), path);
        let category = match &raw.category {
            Some(c) => self.category(c),
            None => Some(Category("marketing".into())),
        };
        let timezone = raw.timezone.as_ref().and_then(|tz| self.timezone(tz));
        let trigger = self.trigger(raw.trigger.as_ref());
        let journey = self.journey(raw.journey.as_ref());
        let reorder_per_customer = trigger.as_ref().is_some_and(|t| t.reorder.is_some())
            && journey == Some(JourneyKind::PerCustomer);
        if reorder_per_customer {
            let pos = raw.trigger.as_ref().map_or(Pos::START, |t| t.key);
            self.d.error_hint(
                pos,
                "a `reorder` trigger starts a journey per order",
                "add `journey: per_order`",
            );
        }
        let reenter = self.reenter(raw.reenter.as_ref(), journey);
        let exit_on = raw
            .exit_on
            .iter()
            .filter_map(|e| self.event_type(e))
            .collect();
        let pause_when = raw.pause_when.as_ref().and_then(|e| self.expr(e));
        let steps = self.steps(raw.steps.as_ref());
        let migrate = match (&raw.migrate, &steps) {
            (Some(m), Some(steps)) => self.migrate(m, steps),
            _ => None,
        };
        let experiment = match (&raw.experiment, &name) {
            (Some(x), Some(name)) => Some(self.experiment(x, name)),
            _ => None,
        };
        let experiment = match (experiment, &category, &raw.experiment) {
            (Some(Some(x)), Some(c), Some(raw)) => Some(self.holdout_fits(x, c, raw)),
            (other, _, _) => other,
        };
        Some(Sequence {
            name: name?.into(),
            // Set once the templates its steps use are known (`compile_with`).
            version: "".into(),
            path: path.to_string(),
            source: source.into(),
            templates: self.renders_with.clone(),
            category: category?,
            description: raw.description.map(|d| d.value).unwrap_or_default(),
            timezone,
            trigger: trigger?,
            journey: journey?,
            reenter,
            exit_on,
            pause_when,
            steps: steps?,
            migrate,
            experiment: each(experiment)?,
        })
        .filter(|_| !reorder_per_customer)
    }

    /// The sequence's name: as written, else the file's name without its extension.
    fn name(&mut self, name: Option<&Sp<String>>, path: &str) -> Option<String> {
        let stem = std::path::Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name {
            Some(n) => self.word(n, "sequence name").map(|_| n.value.clone()),
            None => Some(stem),
        }
    }

    /// The sequence's `timezone`: an IANA name.
    fn timezone(&mut self, tz: &Sp<String>) -> Option<Tz> {
        parse_tz(&tz.value)
            .map_err(|m| {
                self.d
                    .error_hint(tz.pos, m, "use a name like Asia/Seoul or America/New_York")
            })
            .ok()
    }

    /// `reenter`, false when absent; an error on a per_order journey, which runs once per
    /// order.
    fn reenter(&mut self, reenter: Option<&Sp<bool>>, journey: Option<JourneyKind>) -> bool {
        if let (Some(JourneyKind::PerOrder), Some(r)) = (journey, reenter)
            && r.value
        {
            self.d.error_hint(
                r.key,
                "`reenter` applies to per_customer journeys only",
                "a per_order journey runs once per order; remove `reenter`",
            );
        }
        reenter.is_some_and(|r| r.value)
    }

    /// Names and categories are plain words: they appear in headers, URLs and output lines.
    fn word(&mut self, w: &Sp<String>, what: &str) -> Option<()> {
        if w.value.len() > MAX_WORD {
            self.d.error_hint(
                w.pos,
                format!(
                    "{what} is {} characters long; at most {MAX_WORD}",
                    w.value.len()
                ),
                "for example camera-education or cross_sell",
            );
            return None;
        }
        let ok = !w.value.is_empty()
            && w.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.d.error_hint(
                w.pos,
                format!("{what} `{}` may only use letters, digits, - and _", w.value),
                "for example camera-education or cross_sell",
            );
        }
        ok.then_some(())
    }

    fn category(&mut self, c: &Sp<String>) -> Option<Category> {
        self.word(c, "category")?;
        if c.value == "all" {
            self.d.error_hint(
                c.pos,
                "`all` cannot be a category: it means every category in unsubscribes",
                "pick a word such as marketing, education or review",
            );
            return None;
        }
        Some(Category(c.value.as_str().into()))
    }

    fn event_type(&mut self, e: &Sp<String>) -> Option<Arc<str>> {
        if e.value.is_empty() || e.value.chars().any(char::is_whitespace) {
            self.d.error_hint(
                e.pos,
                format!("`{}` is not an event type", e.value),
                "event types look like order.delivered or support.ticket_resolved",
            );
            return None;
        }
        Some(e.value.as_str().into())
    }

    fn expr(&mut self, e: &Sp<String>) -> Option<Expr> {
        Expr::compile(&e.value)
            .map_err(|m| {
                let shown: String = e.value.chars().take(80).collect();
                let more = if shown.len() < e.value.len() {
                    "…"
                } else {
                    ""
                };
                self.d.error_hint(
                    e.pos,
                    format!("expression `{shown}{more}`: {m}"),
                    "expressions use Jinja syntax, e.g. customer.open_tickets > 0",
                )
            })
            .ok()
    }

    fn period(&mut self, p: &Sp<String>) -> Option<Period> {
        p.value
            .parse()
            .map_err(|m| self.d.error_hint(p.pos, m, DURATION_HINT))
            .ok()
    }

    fn trigger(&mut self, t: Option<&Sp<raw::RawTrigger>>) -> Option<Trigger> {
        let Some(t) = t else {
            self.d.error_hint(
                Pos::START,
                "missing `trigger`",
                "add `trigger: { event: order.delivered }` to say which event enrols customers",
            );
            return None;
        };
        let when = t.value.when.as_ref().map(|w| self.expr(w));
        if let Some(r) = &t.value.reorder {
            return self.reorder_trigger(&t.value, r, when);
        }
        let (event, date) = match (&t.value.event, &t.value.date) {
            (Some(event), None) => {
                self.date_keys_need_a_date(&t.value);
                (self.event_type(event), Some(None))
            }
            (None, Some(date)) => (Some("".into()), self.date_trigger(&t.value, date).map(Some)),
            (Some(_), Some(date)) => {
                self.d.error_hint(
                    date.key,
                    "a trigger has either `event` or `date`, not both",
                    "one sequence per trigger: split it in two",
                );
                return None;
            }
            (None, None) => {
                self.d.error_hint(
                    t.pos,
                    "`trigger` has no `event`",
                    "add `event: order.placed` (or another event type), or `date: customer.birthday`",
                );
                return None;
            }
        };
        Some(Trigger {
            event: event?,
            when: each(when)?,
            date: date?,
            reorder: None,
        })
    }

    /// `reorder: { category, after, per_quantity }`, alone: it is an `order.placed` trigger.
    fn reorder_trigger(
        &mut self,
        t: &raw::RawTrigger,
        r: &Sp<raw::RawReorder>,
        when: Option<Option<Expr>>,
    ) -> Option<Trigger> {
        if let Some(other) = t.event.as_ref().or(t.date.as_ref()) {
            self.d.error_hint(
                other.key,
                "a `reorder` trigger has no `event` or `date`: it starts after an order",
                "remove it; the orders that count are those with an item of `reorder.category`",
            );
            return None;
        }
        self.date_keys_need_a_date(t);
        let category = match &r.value.category {
            Some(c) => self
                .word(c, "a category")
                .map(|()| Arc::from(c.value.as_str())),
            None => {
                self.d
                    .error_hint(r.pos, "`reorder` has no `category`", "add `category: film`");
                None
            }
        };
        let after = match &r.value.after {
            Some(a) => self.reorder_after(a, r.value.fallback.as_ref()),
            None => {
                self.d.error_hint(
                    r.pos,
                    "`reorder` needs `after`",
                    "add `after: 30d`: how long after the order to remind",
                );
                None
            }
        };
        Some(Trigger {
            event: "order.placed".into(),
            when: each(when)?,
            date: None,
            reorder: Some(ReorderTrigger {
                category: category?,
                after: after?,
                per_quantity: r.value.per_quantity.as_ref().is_some_and(|p| p.value),
            }),
        })
    }

    /// `after: 30d`, or `after: auto` with its `fallback`; each longer than 0s.
    fn reorder_after(
        &mut self,
        after: &Sp<String>,
        fallback: Option<&Sp<String>>,
    ) -> Option<ReorderAfter> {
        if after.value != "auto" {
            if let Some(f) = fallback {
                self.d.error_hint(
                    f.key,
                    "`fallback` goes with `after: auto`",
                    "remove it: a fixed `after` is always used",
                );
                return None;
            }
            return self
                .positive(after, "`reorder.after`", "e.g. `after: 30d`")
                .map(ReorderAfter::Fixed);
        }
        match fallback {
            Some(f) => self
                .positive(f, "`reorder.fallback`", "e.g. `fallback: 30d`")
                .map(|fallback| ReorderAfter::Auto { fallback }),
            None => {
                self.d.error_hint(
                    after.pos,
                    "`after: auto` needs a `fallback`",
                    "add `fallback: 30d`: the interval used while fewer than 30 customers have bought the category twice",
                );
                None
            }
        }
    }

    /// A duration longer than 0s.
    fn positive(&mut self, v: &Sp<String>, what: &str, hint: &str) -> Option<Period> {
        let p = self.period(v)?;
        if p.is_zero() {
            self.d
                .error_hint(v.pos, format!("{what} must be longer than 0s"), hint);
            return None;
        }
        Some(p)
    }

    /// `offset`, `at` and `repeat` belong to a date trigger.
    fn date_keys_need_a_date(&mut self, t: &raw::RawTrigger) {
        for (key, v) in [("offset", &t.offset), ("at", &t.at), ("repeat", &t.repeat)] {
            if let Some(v) = v {
                self.d.error_hint(
                    v.key,
                    format!("`{key}` goes with a `date` trigger"),
                    "remove it, or trigger on `date: customer.birthday` instead of an event",
                );
            }
        }
    }

    /// `date` (`customer.birthday` or `customer.attributes.NAME`), `offset` (whole days),
    /// `at` (`HH:MM`, default 09:00) and `repeat` (default yearly).
    fn date_trigger(&mut self, t: &raw::RawTrigger, date: &Sp<String>) -> Option<DateTrigger> {
        let field = self.date_field(date);
        let offset_days = match &t.offset {
            None => Some(0),
            Some(o) => self.offset(o),
        };
        let at = match &t.at {
            None => chrono::NaiveTime::from_hms_opt(9, 0, 0),
            Some(a) => self.time_of_day(a),
        };
        let repeat = match &t.repeat {
            None => Some(Repeat::Yearly),
            Some(r) => self.repeat(r),
        };
        Some(DateTrigger {
            field: field?,
            offset_days: offset_days?,
            at: at?,
            repeat: repeat?,
        })
    }

    /// `customer.birthday`, or `customer.attributes.NAME` (letters, digits, `_`; 64 at most).
    fn date_field(&mut self, date: &Sp<String>) -> Option<DateField> {
        let text = date.value.as_str();
        if text == "customer.birthday" {
            return Some(DateField::Birthday);
        }
        let name = text.strip_prefix("customer.attributes.").filter(|name| {
            !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if name.is_none() {
            self.d.error_hint(
                date.pos,
                format!(
                    "`date` must be customer.birthday or customer.attributes.NAME, found `{text}`"
                ),
                "the customer's profile field that holds a YYYY-MM-DD or RFC 3339 date",
            );
        }
        name.map(|n| DateField::Attribute(n.into()))
    }

    /// `offset`: whole days, `-3d` or `2d`.
    fn offset(&mut self, o: &Sp<String>) -> Option<i32> {
        let days = parse_offset(&o.value);
        if days.is_none() {
            self.d.error_hint(
                o.pos,
                format!(
                    "`offset` must be whole days, e.g. `-3d` or `2d`, found `{}`",
                    o.value
                ),
                "days before (-) or after the date; the time of day is `at`",
            );
        }
        days
    }

    /// `at`: a time of day, `HH:MM`.
    fn time_of_day(&mut self, a: &Sp<String>) -> Option<chrono::NaiveTime> {
        let parsed = chrono::NaiveTime::parse_from_str(&a.value, "%H:%M").ok();
        if parsed.is_none() {
            self.d.error_hint(
                a.pos,
                format!("`at` must be a time of day HH:MM, found `{}`", a.value),
                "e.g. `at: \"09:00\"`, in the customer's timezone",
            );
        }
        parsed
    }

    /// `repeat`: yearly, monthly or once.
    fn repeat(&mut self, r: &Sp<String>) -> Option<Repeat> {
        match r.value.as_str() {
            "yearly" => Some(Repeat::Yearly),
            "monthly" => Some(Repeat::Monthly),
            "once" => Some(Repeat::Once),
            other => {
                let hint = match did_you_mean(other, ["yearly", "monthly", "once"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "use yearly, monthly or once".into(),
                };
                self.d
                    .error_hint(r.pos, format!("unknown `repeat` `{other}`"), hint);
                None
            }
        }
    }

    fn journey(&mut self, j: Option<&Sp<String>>) -> Option<JourneyKind> {
        match j.map(|j| j.value.as_str()) {
            None | Some("per_customer") => Some(JourneyKind::PerCustomer),
            Some("per_order") => Some(JourneyKind::PerOrder),
            Some(other) => {
                let hint = match did_you_mean(other, ["per_customer", "per_order"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "use per_customer or per_order".into(),
                };
                let pos = j.map_or(Pos::START, |j| j.pos);
                self.d
                    .error_hint(pos, format!("unknown journey kind `{other}`"), hint);
                None
            }
        }
    }

    fn steps(&mut self, steps: Option<&Sp<Vec<RawStep>>>) -> Option<Vec<Step>> {
        let steps = self.step_list(steps)?;
        // Ids first: `on_timeout` may jump forward to a step not compiled yet.
        let (ids, ok) = self.step_ids(steps);
        let compiled: Vec<Option<Step>> = steps.iter().map(|s| self.step(s, &ids)).collect();
        let compiled: Option<Vec<Step>> = compiled.into_iter().collect();
        let compiled = compiled.filter(|steps| self.no_branch_loops(steps));
        if ok { compiled } else { None }
    }

    /// The `steps` list, if there is one, not empty and not over [`MAX_STEPS`].
    fn step_list<'s>(&mut self, steps: Option<&'s Sp<Vec<RawStep>>>) -> Option<&'s [RawStep]> {
        let Some(steps) = steps else {
            self.d.error_hint(
                Pos::START,
                "missing `steps`",
                "add a `steps:` list; each step has an `id` and one action such as `email`",
            );
            return None;
        };
        if steps.value.is_empty() {
            self.d
                .error_hint(steps.pos, "`steps` is empty", "add at least one step");
            return None;
        }
        if steps.value.len() > MAX_STEPS {
            self.d.error_hint(
                steps.pos,
                format!(
                    "{} steps; a sequence has at most {MAX_STEPS}",
                    steps.value.len()
                ),
                "split it into sequences that hand over with `start`",
            );
            return None;
        }
        Some(&steps.value)
    }

    /// Each step's index by its id, and whether every step has an id that is a word and its
    /// own.
    fn step_ids<'s>(&mut self, steps: &'s [RawStep]) -> (Ids<'s>, bool) {
        let mut ids = Ids::new();
        let mut ok = true;
        for (i, s) in steps.iter().enumerate() {
            let Some(id) = &s.id else {
                self.d.error_hint(
                    s.pos,
                    "step has no `id`",
                    "give every step a unique `id`, like `id: welcome`",
                );
                ok = false;
                continue;
            };
            ok &= self.word(id, "step id").is_some();
            if let Some((_, first)) = ids.get(id.value.as_str()) {
                self.d.error_hint(
                    id.pos,
                    format!("duplicate step id `{}`", id.value),
                    format!(
                        "step ids must be unique in a file; `{}` is first used on line {}",
                        id.value, first.line
                    ),
                );
                ok = false;
            } else {
                ids.insert(&id.value, (i, id.pos));
            }
        }
        (ids, ok)
    }

    fn step(&mut self, s: &RawStep, ids: &Ids) -> Option<Step> {
        let id: Arc<str> =
            s.id.as_ref()
                .map(|i| i.value.as_str())
                .unwrap_or_default()
                .into();
        let timing = match (&s.wait, &s.wait_for) {
            (Some(_), Some(w)) => {
                self.d.error_hint(
                    w.key,
                    "a step has either `wait` or `wait_for`, not both",
                    "split it into two steps: one that waits, then one that waits for the event",
                );
                None
            }
            (Some(w), None) => self.period(w).map(Timing::Wait),
            (None, Some(w)) => self.wait_for(w, ids).map(Timing::WaitFor),
            (None, None) => Some(Timing::Now),
        };
        let send_window = s.send_window.as_ref().and_then(|w| {
            CronWindow::parse(&w.value)
                .map_err(|m| self.d.error_hint(w.pos, m, CRON_HINT))
                .ok()
        });
        let skip_when = s.skip_when.as_ref().map(|e| self.expr(e));
        let category = s.category.as_ref().map(|c| self.category(c));
        let goal = s.goal.as_ref().map(|g| self.goal(g));
        let action = self.action(s, ids);
        let coupon = s.coupon.as_ref().map(|c| self.coupon(c, s));
        let variants = s.variants.as_ref().map(|v| self.variants(v));
        let bad_window = s.send_window.is_some() && send_window.is_none();
        if bad_window {
            return None;
        }
        Some(Step {
            id,
            timing: timing?,
            send_window,
            skip_when: each(skip_when)?,
            category: each(category)?,
            goal: each(goal)?,
            action: action?,
            coupon: each(coupon)?,
            variants: each(variants)?.unwrap_or_default(),
        })
    }

    /// A step's `coupon`: on an email or webhook step, `generate` with a prefix of capitals,
    /// digits, `-` and `_` (at most 16) and a length of 6 to 32 (8 by default).
    fn coupon(&mut self, c: &Sp<raw::RawCoupon>, s: &RawStep) -> Option<Coupon> {
        if s.email.is_none() && s.webhook.is_none() {
            self.d.error_hint(
                c.key,
                "a `coupon` goes on a step that sends an `email` or a `webhook`",
                "move it to the step whose message carries the code",
            );
            return None;
        }
        let Some(g) = &c.value.generate else {
            self.d.error_hint(
                c.pos,
                "`coupon` has no `generate`",
                "add `generate: { prefix: \"TRI-\", length: 8 }`",
            );
            return None;
        };
        let prefix = g.value.prefix.as_ref().map_or(Some(""), |p| {
            let ok = p.value.len() <= 16
                && p.value
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                self.d.error_hint(
                    p.pos,
                    format!("`coupon.generate.prefix` `{}` may only use capital letters, digits, - and _ (at most 16)", p.value),
                    "for example `TRI-`",
                );
            }
            ok.then_some(p.value.as_str())
        });
        let length = g.value.length.as_ref().map_or(Some(8), |l| {
            let n = l
                .value
                .parse::<usize>()
                .ok()
                .filter(|n| (crate::engine::coupon::MIN_LENGTH..=32).contains(n));
            if n.is_none() {
                self.d.error_hint(
                    l.pos,
                    format!(
                        "`coupon.generate.length` must be a whole number from 6 to 32, found `{}`",
                        l.value
                    ),
                    "8 characters of base32 make over a trillion codes",
                );
            }
            n
        });
        Some(Coupon::Generate {
            prefix: prefix?.into(),
            length: length?,
        })
    }

    fn wait_for(&mut self, w: &Sp<raw::RawWaitFor>, ids: &Ids) -> Option<WaitFor> {
        let event = match &w.value.event {
            Some(e) => self.event_type(e),
            None => {
                self.d.error_hint(
                    w.pos,
                    "`wait_for` has no `event`",
                    "add `event: order.shipped`",
                );
                None
            }
        };
        let when = w.value.when.as_ref().map(|e| self.expr(e));
        let timeout = self.timeout(w);
        let on_timeout = match w.value.on_timeout.as_ref() {
            None => Some(OnTimeout::Skip),
            Some(o) => self.on_timeout(o, ids),
        };
        Some(WaitFor {
            event: event?,
            when: each(when)?,
            timeout: timeout?,
            on_timeout: on_timeout?,
        })
    }

    /// The `timeout` of a `wait_for`: required, and longer than zero.
    fn timeout(&mut self, w: &Sp<raw::RawWaitFor>) -> Option<Period> {
        let Some(t) = &w.value.timeout else {
            self.d.error_hint(
                w.key,
                "`wait_for` needs a `timeout`",
                "add `timeout: 3d`: how long to wait before `on_timeout` decides",
            );
            return None;
        };
        self.period(t).filter(|p| {
            // A zero timeout with `on_timeout` jumping back would loop without waiting.
            let ok = !p.is_zero();
            if !ok {
                self.d.error_hint(
                    t.pos,
                    "`timeout` must be longer than 0s",
                    "wait at least a second, e.g. `timeout: 1h`",
                );
            }
            ok
        })
    }

    /// `on_timeout`: skip, continue, exit, or the id of a step in the file to go to.
    fn on_timeout(&mut self, o: &Sp<String>, ids: &Ids) -> Option<OnTimeout> {
        match o.value.as_str() {
            "skip" => Some(OnTimeout::Skip),
            "continue" => Some(OnTimeout::Continue),
            "exit" => Some(OnTimeout::Exit),
            step => match ids.get(step) {
                Some((i, _)) => Some(OnTimeout::Goto(*i)),
                None => {
                    let hint = match did_you_mean(step, ids.keys().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "use skip, continue, exit or the id of a step in this file".into(),
                    };
                    self.d.error_hint(
                        o.pos,
                        format!("`on_timeout` names an unknown step `{step}`"),
                        hint,
                    );
                    None
                }
            },
        }
    }

    fn goal(&mut self, g: &Sp<raw::RawGoal>) -> Option<Goal> {
        let event = match &g.value.event {
            Some(e) => self.event_type(e),
            None => {
                self.d
                    .error_hint(g.pos, "`goal` has no `event`", "add `event: order.placed`");
                None
            }
        };
        let within = match &g.value.within {
            Some(w) => self.period(w),
            None => {
                self.d.error_hint(
                    g.key,
                    "`goal` needs `within`",
                    "add `within: 14d`: how long after the email a conversion counts",
                );
                None
            }
        };
        let when = g.value.when.as_ref().map(|e| self.expr(e));
        Some(Goal {
            event: event?,
            within: within?,
            when: each(when)?,
        })
    }

    /// The step's one action; `Some(None)` for a step that only waits.
    fn action(&mut self, s: &RawStep, ids: &Ids) -> Option<Option<Action>> {
        let acts = Acts {
            email: s.email.as_ref(),
            webhook: s.webhook.as_ref(),
            start: s.start.as_ref(),
            exit: s.exit.as_ref(),
            branch: s.branch.as_ref(),
            what: "a step",
        };
        match s.branch.as_ref() {
            Some(b) => {
                self.one_action(&acts)?;
                self.branch(b, ids).map(|arms| Some(Action::Branch(arms)))
            }
            None => self.action_of(acts),
        }
    }

    /// A `branch`: arms in order, each going to a step of this file; only the last may go
    /// without `when` (the fallback: arms after it would never run).
    fn branch(&mut self, b: &Sp<Vec<raw::RawBranch>>, ids: &Ids) -> Option<Vec<Branch>> {
        if b.value.is_empty() {
            self.d.error_hint(
                b.pos,
                "`branch` has no arms",
                "add `- { when: \"...\", goto: STEP }`, and `- { goto: STEP }` for otherwise",
            );
            return None;
        }
        let last = b.value.len() - 1;
        let arms: Vec<Option<Branch>> = b
            .value
            .iter()
            .enumerate()
            .map(|(i, arm)| self.arm(arm, i == last, ids))
            .collect();
        arms.into_iter().collect()
    }

    fn arm(&mut self, arm: &raw::RawBranch, last: bool, ids: &Ids) -> Option<Branch> {
        let when = match &arm.when {
            Some(w) => Some(self.expr(w)),
            None if last => None,
            None => {
                self.d.error_hint(
                    arm.pos,
                    "only the last arm of a `branch` may go without `when`",
                    "an arm without `when` always matches: the arms after it would never run; move it last",
                );
                return None;
            }
        };
        let Some(goto) = &arm.goto else {
            self.d.error_hint(
                arm.pos,
                "a branch arm has no `goto`",
                "add `goto: STEP`, the id of a step in this file",
            );
            return None;
        };
        let target = match ids.get(goto.value.as_str()) {
            Some((i, _)) => Some(*i),
            None => {
                let hint = match did_you_mean(&goto.value, ids.keys().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "use the id of a step in this file".into(),
                };
                self.d.error_hint(
                    goto.pos,
                    format!("`goto` names an unknown step `{}`", goto.value),
                    hint,
                );
                None
            }
        };
        Some(Branch {
            when: each(when)?,
            goto: target?,
            pos: arm.pos,
        })
    }

    /// A branch that goes back to itself or an earlier step with no wait on the way would run
    /// those steps again and again at one instant.
    fn no_branch_loops(&mut self, steps: &[Step]) -> bool {
        let mut ok = true;
        for (i, step) in steps.iter().enumerate() {
            let Some(Action::Branch(arms)) = &step.action else {
                continue;
            };
            for arm in arms.iter().filter(|a| a.goto <= i) {
                let looped = &steps[arm.goto..=i];
                let waits = looped.iter().any(|s| match &s.timing {
                    Timing::Now => false,
                    Timing::Wait(p) => !p.is_zero(),
                    Timing::WaitFor(w) => !w.timeout.is_zero(),
                });
                // The outbox keeps one email (or post) per (journey, step): one sent again
                // would be decided but never sent.
                let sends = |a: &Option<Action>| {
                    matches!(a, Some(Action::Email { .. } | Action::Webhook { .. }))
                };
                let emails = looped
                    .iter()
                    .find(|s| sends(&s.action) || s.variants.iter().any(|v| sends(&v.action)));
                if let Some(email) = emails.filter(|_| waits) {
                    self.d.error_hint(
                        arm.pos,
                        format!(
                            "this arm goes back over `{}`, whose email (or webhook) a journey sends once",
                            email.id
                        ),
                        "go back only to steps that wait or branch, or `start` a new journey of a sequence for the repeat",
                    );
                    ok = false;
                }
                if !waits {
                    self.d.error_hint(
                        arm.pos,
                        format!(
                            "this arm goes back to `{}` with no wait on the way: it would loop at one instant",
                            steps[arm.goto].id
                        ),
                        "add a `wait` (or `wait_for`) to a step between the target and the branch",
                    );
                    ok = false;
                }
            }
        }
        ok
    }

    /// The one action among `acts`; `Some(None)` when there is none.
    fn action_of(&mut self, acts: Acts<'_>) -> Option<Option<Action>> {
        self.one_action(&acts)?;
        if let Some(email) = acts.email {
            return self.email(email).map(Some);
        }
        if let Some(webhook) = acts.webhook {
            return self.webhook(webhook).map(Some);
        }
        if let Some(start) = acts.start {
            self.word(start, "sequence name")?;
            self.starts.push(start.clone());
            return Some(Some(Action::Start {
                sequence: start.value.as_str().into(),
            }));
        }
        if let Some(exit) = acts.exit {
            if !exit.value {
                self.d.error_hint(
                    exit.pos,
                    "`exit: false` does nothing",
                    "write `exit: true` to end the journey here, or remove it",
                );
                return None;
            }
            return Some(Some(Action::Exit));
        }
        Some(None)
    }

    /// A step (or a variant) has at most one action: `email`, `start` or `exit`.
    fn one_action(&mut self, acts: &Acts<'_>) -> Option<()> {
        let present: Vec<(&str, Pos)> = [
            acts.email.map(|e| ("email", e.key)),
            acts.webhook.map(|e| ("webhook", e.key)),
            acts.start.map(|e| ("start", e.key)),
            acts.exit.map(|e| ("exit", e.key)),
            acts.branch.map(|e| ("branch", e.key)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if present.len() > 1 {
            let names: Vec<String> = present.iter().map(|(n, _)| format!("`{n}`")).collect();
            self.d.error_hint(
                present[1].1,
                format!(
                    "{} has one action; this one has {}",
                    acts.what,
                    names.join(" and ")
                ),
                "split it into one step per action",
            );
            return None;
        }
        Some(())
    }

    /// An `email` action: its `template`, which must exist (checked unless reviving a stored
    /// version).
    fn email(&mut self, email: &Sp<raw::RawEmail>) -> Option<Action> {
        let Some(t) = &email.value.template else {
            self.d.error_hint(
                email.pos,
                "`email` has no `template`",
                "add `template: camera/basics` (a file under templates/)",
            );
            return None;
        };
        if let Some(Err((msg, hint))) = self.templates.map(|ts| ts.check(&t.value)) {
            self.d.error_hint(t.pos, msg, hint);
            return None;
        }
        Some(Action::Email {
            template: t.value.as_str().into(),
        })
    }

    /// A `webhook` action: an `endpoint` name and a `body` template, which must exist
    /// (checked unless reviving a stored version). Whether the config has the endpoint is
    /// checked by `run`, which has the config.
    fn webhook(&mut self, w: &Sp<raw::RawWebhook>) -> Option<Action> {
        let endpoint = match &w.value.endpoint {
            Some(e) => self.word(e, "a webhook endpoint").map(|()| e),
            None => {
                self.d.error_hint(
                    w.pos,
                    "`webhook` has no `endpoint`",
                    "add `endpoint: sms`, the name of a [webhooks.sms] section of aftercare.toml",
                );
                None
            }
        };
        let body = match &w.value.body {
            Some(b) => match self.templates.map(|ts| ts.check_body(&b.value)) {
                Some(Err((msg, hint))) => {
                    self.d.error_hint(b.pos, msg, hint);
                    None
                }
                _ => Some(b),
            },
            None => {
                self.d.error_hint(
                    w.pos,
                    "`webhook` has no `body`",
                    "add `body: sms/shipped` (templates/sms/shipped.json.j2)",
                );
                None
            }
        };
        Some(Action::Webhook {
            endpoint: endpoint?.value.as_str().into(),
            body: body?.value.as_str().into(),
            endpoint_pos: endpoint?.pos,
        })
    }

    /// A sequence's `experiment`: a holdout of 0-50%, a salt (else the sequence's `name`),
    /// measures with unique names, an optional target.
    fn experiment(&mut self, x: &Sp<raw::RawExperiment>, name: &str) -> Option<Experiment> {
        let holdout = match &x.value.holdout {
            Some(h) => self.holdout(h),
            None => {
                self.d.error_hint(
                    x.pos,
                    "`experiment` has no `holdout`",
                    "add `holdout: 10%`: the share of the customers who enter held out",
                );
                None
            }
        };
        let salt = match &x.value.salt {
            Some(salt) => self
                .word(salt, "`experiment.salt`")
                .map(|()| salt.value.as_str()),
            None => Some(name),
        };
        let target = x.value.target.as_ref().map(|t| self.target(t));
        let measures = self.measures(&x.value.measure);
        Some(Experiment {
            holdout: holdout?,
            salt: salt?.into(),
            measures: measures?,
            target: each(target)?,
        })
    }

    /// A holdout withholds marketing email to measure it: not on a transactional sequence
    /// (transactional email is never held out), and not without a measure.
    fn holdout_fits(
        &mut self,
        x: Experiment,
        category: &Category,
        raw: &Sp<raw::RawExperiment>,
    ) -> Option<Experiment> {
        if x.holdout == 0 {
            return Some(x);
        }
        if category.is_transactional() {
            self.d.error_hint(
                raw.key,
                "a transactional sequence cannot hold customers out: its emails are always sent",
                "remove `experiment`, or give the sequence a marketing category",
            );
            return None;
        }
        if x.measures.is_empty() {
            self.d.error_hint(
                raw.key,
                "a holdout without a `measure` withholds emails and measures nothing",
                "add `measure: [{ name: repeat_purchase, event: order.placed, within: 90d }]`",
            );
            return None;
        }
        Some(x)
    }

    /// `10%`, `12.5%`: basis points from 0 to 5,000.
    fn holdout(&mut self, h: &Sp<String>) -> Option<u32> {
        let points = crate::engine::experiment::parse_share(&h.value);
        match points {
            Some(p) if p <= 5_000 => Some(p),
            _ => {
                self.d.error_hint(
                    h.pos,
                    format!("`experiment.holdout` must be a share from 0% to 50%, found `{}`", h.value),
                    "write it like `10%`; holding out more than half leaves too few customers treated",
                );
                None
            }
        }
    }

    /// `2pp`: an uplift of two percentage points, as basis points (1 to 10,000).
    fn target(&mut self, t: &Sp<String>) -> Option<u32> {
        let points = t
            .value
            .strip_suffix("pp")
            .and_then(|n| crate::engine::experiment::parse_share(&format!("{n}%")));
        match points {
            Some(p) if (1..=10_000).contains(&p) => Some(p),
            _ => {
                self.d.error_hint(
                    t.pos,
                    format!(
                        "`experiment.target` must be an uplift in percentage points, found `{}`",
                        t.value
                    ),
                    "write it like `2pp` (from 29% to 31% is 2pp)",
                );
                None
            }
        }
    }

    /// Every measure, each checked; names must be unique.
    fn measures(&mut self, raw: &[Sp<raw::RawMeasure>]) -> Option<Vec<Measure>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        let mut ok = true;
        for m in raw {
            if let Some(name) = &m.value.name
                && !seen.insert(name.value.as_str())
            {
                self.d.error_hint(
                    name.pos,
                    format!("two measures are named `{}`", name.value),
                    "give each measure its own name: the figures are kept by name",
                );
                ok = false;
            }
            match self.measure(m) {
                Some(measure) => out.push(measure),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn measure(&mut self, m: &Sp<raw::RawMeasure>) -> Option<Measure> {
        let m_pos = m.pos;
        let m = &m.value;
        let missing = |d: &mut Diags, key: &str, example: &str| {
            d.error_hint(
                m_pos,
                format!("a measure has no `{key}`"),
                format!("add `{key}: {example}`"),
            );
        };
        let name = match &m.name {
            Some(n) => self
                .word(n, "a measure's name")
                .map(|()| Arc::from(n.value.as_str())),
            None => {
                missing(self.d, "name", "repeat_purchase");
                None
            }
        };
        let event = match &m.event {
            Some(e) => self.event_type(e),
            None => {
                missing(self.d, "event", "order.placed");
                None
            }
        };
        let within = match &m.within {
            Some(w) => self.period(w).filter(|p| {
                if p.is_zero() {
                    self.d.error_hint(
                        w.pos,
                        "`measure.within` must be longer than 0s: nothing could be counted",
                        "how long after entering a conversion counts, e.g. `within: 90d`",
                    );
                }
                !p.is_zero()
            }),
            None => {
                missing(self.d, "within", "90d");
                None
            }
        };
        let when = m.when.as_ref().map(|e| self.expr(e));
        Some(Measure {
            name: name?,
            event: event?,
            within: within?,
            when: each(when)?,
        })
    }

    /// A step's `variants`: two or more, unique ids, weights from 1, each at most one action
    /// in place of the step's.
    fn variants(&mut self, v: &Sp<Vec<raw::RawVariant>>) -> Option<Vec<Variant>> {
        if v.value.len() < 2 {
            self.d.error_hint(
                v.pos,
                format!(
                    "a split needs two variants or more, found {}",
                    v.value.len()
                ),
                "add `- { id: b, weight: 1, email: { template: ... } }`, or remove `variants`",
            );
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(v.value.len());
        let mut ok = true;
        for raw in &v.value {
            if let Some(id) = &raw.id
                && !seen.insert(id.value.as_str())
            {
                self.d.error_hint(
                    id.pos,
                    format!("two variants are named `{}`", id.value),
                    "give each variant its own id: decisions and figures name it",
                );
                ok = false;
            }
            match self.variant(raw) {
                Some(variant) => out.push(variant),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn variant(&mut self, v: &raw::RawVariant) -> Option<Variant> {
        let id = match &v.id {
            Some(i) => self
                .word(i, "a variant's id")
                .map(|()| Arc::from(i.value.as_str())),
            None => {
                self.d
                    .error_hint(v.pos, "a variant has no `id`", "add `id: b`");
                None
            }
        };
        let weight = match &v.weight {
            Some(w) => match w.value.parse::<u32>() {
                Ok(n) if (1..=MAX_WEIGHT).contains(&n) => Some(n),
                _ => {
                    self.d.error_hint(
                        w.pos,
                        format!("a variant's `weight` must be a whole number from 1 to {MAX_WEIGHT}, found `{}`", w.value),
                        "weights are relative: 1 and 1 split evenly, 3 and 1 give the first three in four",
                    );
                    None
                }
            },
            None => {
                self.d.error_hint(
                    v.pos,
                    "a variant has no `weight`",
                    "add `weight: 1` (weights are relative)",
                );
                None
            }
        };
        let action = self.action_of(Acts {
            email: v.email.as_ref(),
            webhook: None,
            start: v.start.as_ref(),
            exit: v.exit.as_ref(),
            branch: None,
            what: "a variant",
        });
        Some(Variant {
            id: id?,
            weight: weight?,
            action: action?,
        })
    }

    fn migrate(&mut self, m: &Sp<raw::RawMigrate>, steps: &[Step]) -> Option<Migrate> {
        let Some(from) = &m.value.from else {
            self.d.error_hint(
                m.pos,
                "`migrate` has no `from`",
                "add `from:` with the version hash `aftercare plan` shows",
            );
            return None;
        };
        if from.value.len() != 12 || !from.value.chars().all(|c| c.is_ascii_hexdigit()) {
            self.d.error_hint(
                from.pos,
                format!("`{}` is not a version hash", from.value),
                "versions are 12 hex digits, as `aftercare plan` shows them",
            );
            return None;
        }
        let mut mapped = Vec::new();
        for (old, new) in &m.value.steps {
            match steps.iter().position(|s| *s.id == *new.value) {
                Some(i) => mapped.push((old.clone(), i)),
                None => {
                    let ids = steps.iter().map(|s| &*s.id);
                    let hint = match did_you_mean(&new.value, ids) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "map each old step to a step id in this file".into(),
                    };
                    self.d.error_hint(
                        new.pos,
                        format!("`migrate.steps` maps to an unknown step `{}`", new.value),
                        hint,
                    );
                }
            }
        }
        Some(Migrate {
            from: from.value.clone(),
            steps: mapped,
        })
    }
}

/// `-3d`, `2d`, `+2d` as days; `None` for anything else or beyond ten years.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        _ => (1, text),
    };
    let digits = rest.strip_suffix('d')?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let days: i32 = digits.parse().ok()?;
    (days <= 3650).then_some(sign * days)
}
