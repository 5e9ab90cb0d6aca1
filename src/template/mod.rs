//! Email templates: `templates/<name>[.<locale>].{subject,html,mjml,txt}.j2`, rendered with
//! MiniJinja. An `.mjml.j2` body is MJML: rendered by MiniJinja first (HTML auto-escaped),
//! then to responsive HTML by mrml; it takes the place of `.html.j2`.
//!
//! Locale fallback is `ko-KR` → `ko` → the default file. The text part comes from the same
//! locale as the HTML part: a Korean HTML body never gets an English text twin.

mod fast;
pub mod text;

use fast::Simple;

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use crate::sequence::Limits;
use crate::sequence::diag::{Diagnostic, Pos, did_you_mean};
use crate::sequence::expr::describe;

/// The parts of one email template.
/// One locale of a template: the file of each part it has.
#[derive(Debug, Default)]
struct Variant {
    locale: String,
    files: [Option<String>; 4],
    /// The subject, when simple enough to render without MiniJinja.
    simple_subject: Option<Simple>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Subject,
    Html,
    Text,
    /// A webhook's body (`<name>.json.j2`), JSON-escaped.
    Json,
}

impl Part {
    fn index(self) -> usize {
        self as usize
    }

    fn suffix(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Html => "html",
            Part::Text => "txt",
            Part::Json => "json",
        }
    }
}

/// A rendered email body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// A render failure, naming the template file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RenderError {
    pub file: String,
    pub message: String,
    /// The render went past its budget (`sequences.template_fuel` or
    /// `sequences.template_recursion`), rather than meeting an error in the template.
    pub over_budget: bool,
}

/// Whether a MiniJinja error is the budget running out (fuel, recursion) rather than an error
/// of the template itself — also when it happened in an included template.
pub fn over_budget(e: &minijinja::Error) -> bool {
    let e = root_cause(e);
    matches!(e.kind(), minijinja::ErrorKind::OutOfFuel)
        || (e.kind() == minijinja::ErrorKind::InvalidOperation
            && e.detail() == Some("recursion limit exceeded"))
}

/// The innermost MiniJinja error: an include wraps its template's error as `BadInclude`.
pub fn root_cause(e: &minijinja::Error) -> &minijinja::Error {
    let mut e = e;
    while let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref()) {
        e = inner;
    }
    e
}

/// Every template of a sequences directory, compiled.
pub struct Templates {
    env: Environment<'static>,
    /// Logical name → its locale variants (`""` is the default); looked up for every email.
    index: BTreeMap<String, Vec<Variant>>,
    /// How template files are named in messages (`sequences/templates`).
    root: String,
    /// Every file compiled, by name: what a sequence version keeps of them
    /// ([`Templates::files_used`]).
    sources: BTreeMap<String, String>,
    limits: Limits,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("index", &self.index)
            .finish()
    }
}

impl Templates {
    /// Compiles template files given as (path under `root`, source), with the default
    /// budget. Syntax errors and unrecognised file names are returned as diagnostics; the rest
    /// still load.
    pub fn from_files(root: &str, files: Vec<(String, String)>) -> (Templates, Vec<Diagnostic>) {
        Templates::from_files_with(root, files, &Limits::default())
    }

    /// As [`Templates::from_files`]; every render is held to `limits`' fuel and recursion.
    pub fn from_files_with(
        root: &str,
        files: Vec<(String, String)>,
        limits: &Limits,
    ) -> (Templates, Vec<Diagnostic>) {
        let mut templates = Templates {
            env: environment(limits),
            index: BTreeMap::new(),
            root: root.to_string(),
            sources: BTreeMap::new(),
            limits: *limits,
        };
        let mut diags = Vec::new();
        for (file, source) in files {
            if let Err(d) = templates.add(file, source) {
                diags.push(d);
            }
        }
        (templates, diags)
    }

    /// Compiles one file (its path under `root`) into the set, under its name, locale and
    /// part; or the diagnostic why it is left out.
    fn add(&mut self, file: String, source: String) -> Result<(), Diagnostic> {
        let shown = format!("{}/{file}", self.root);
        let Some((name, locale, part)) = split_name(&file) else {
            return Err(
                Diagnostic::new(&shown, Pos::START, "unrecognised template file name").hint(
                    "name templates <name>.subject.j2, <name>.html.j2 (or <name>.mjml.j2), \
                     <name>.txt.j2 or, for a webhook's body, <name>.json.j2, with an optional \
                     locale: <name>.ko.html.j2",
                ),
            );
        };
        self.compile(&shown, &file, &source)?;
        let variant = variant(&mut self.index, name, locale);
        if part == Part::Subject {
            variant.simple_subject = Simple::parse(&source);
        }
        if let Some(other) = &variant.files[part.index()] {
            let message = format!("{}/{other} is the same part", self.root);
            return Err(Diagnostic::new(&shown, Pos::START, message)
                .hint("keep one of <name>.html.j2 and <name>.mjml.j2 per locale"));
        }
        variant.files[part.index()] = Some(file.clone());
        self.sources.insert(file, source);
        Ok(())
    }

    /// Adds `source` to the environment as `file`, unless it has a tag too long to parse or
    /// a syntax error (`shown` names it in the diagnostic).
    fn compile(&mut self, shown: &str, file: &str, source: &str) -> Result<(), Diagnostic> {
        if let Some((at, len)) = long_tag(source) {
            return Err(Diagnostic::new(
                shown,
                Pos::START.advance(source, at),
                format!("a tag of {len} bytes; `{{{{ }}}}` and `{{% %}}` tags are at most {MAX_TAG_BYTES}"),
            )
            .hint("compute a long expression in steps with {% set %}"));
        }
        self.env
            .add_template_owned(file.to_string(), source.to_string())
            .map_err(|e| {
                Diagnostic::new(shown, error_pos(&e, source), describe(&e))
                    .hint("check the {{ }} and {% %} tags near this position: each must be closed")
            })
    }

    /// Loads `dir` recursively (every `*.j2` file). A missing directory is an empty set.
    pub fn load(dir: &Path, shown: &str) -> std::io::Result<(Templates, Vec<Diagnostic>)> {
        Templates::load_with(dir, shown, &Limits::default())
    }

    /// As [`Templates::load`]: a file over `limits.max_file_bytes`, or not UTF-8, is a
    /// diagnostic naming it; a file that cannot be read at all is an error naming it.
    pub fn load_with(
        dir: &Path,
        shown: &str,
        limits: &Limits,
    ) -> std::io::Result<(Templates, Vec<Diagnostic>)> {
        let mut files = Vec::new();
        let mut diags = Vec::new();
        if dir.is_dir() {
            collect(dir, dir, &mut files, &mut diags, shown)?;
        }
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for (rel, path) in files {
            let shown_file = format!("{shown}/{rel}");
            match crate::sequence::catalog::read_source(&path, &shown_file, limits)? {
                Ok(text) => sources.push((rel, text)),
                Err(d) => diags.push(d),
            }
        }
        let (templates, mut more) = Templates::from_files_with(shown, sources, limits);
        diags.append(&mut more);
        Ok((templates, diags))
    }

    /// Renders every template file once against `ctx` (a sample customer) and reports those
    /// that go past the budget or include what is not there, naming the file: `validate`
    /// refuses them instead of their first email failing. Other runtime errors are left to
    /// the real data, which the sample cannot stand for.
    pub fn check_budget(&self, ctx: &Value) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let files = self.index.values().flatten();
        for file in files.flat_map(|v| v.files.iter().flatten()) {
            let e = match self.env.get_template(file).and_then(|t| t.render(ctx)) {
                Ok(body) if file.ends_with(".json.j2") => {
                    out.extend(self.not_json(file, &body));
                    continue;
                }
                Ok(_) => continue,
                Err(e) => e,
            };
            let Some((message, hint)) = sample_problem(&e) else {
                continue;
            };
            let shown = format!("{}/{file}", self.root);
            let pos = Pos::new(e.line().unwrap_or(1) as u32, 1);
            let message = format!("{message}: {}", describe(root_cause(&e)));
            out.push(Diagnostic::new(shown, pos, message).hint(hint));
        }
        out
    }

    /// A webhook body that renders to what is not JSON for the sample customer: no customer's
    /// would be (every value is written as JSON), so `validate` refuses it.
    fn not_json(&self, file: &str, body: &str) -> Option<Diagnostic> {
        let e = serde_json::from_str::<serde::de::IgnoredAny>(body).err()?;
        let shown = format!("{}/{file}", self.root);
        Some(
            Diagnostic::new(shown, Pos::START, format!("the rendered body is not JSON: {e}"))
                .hint("each {{ }} writes a JSON value, quotes included: write `\"name\": {{ customer.name }}`, not `\"{{ customer.name }}\"`"),
        )
    }

    /// Checks that an email step may use `name`: a default subject and HTML part exist.
    pub fn check(&self, name: &str) -> Result<(), (String, String)> {
        let Some(locales) = self.index.get(name) else {
            let msg = format!("unknown template `{name}`");
            let hint = match did_you_mean(name, self.index.keys().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "create {root}/{name}.subject.j2 and {root}/{name}.html.j2",
                    root = self.root
                ),
            };
            return Err((msg, hint));
        };
        let default = locales.iter().find(|v| v.locale.is_empty());
        for part in [Part::Subject, Part::Html] {
            if default.is_none_or(|v| v.files[part.index()].is_none()) {
                return Err((
                    format!("template `{name}` has no default {} part", part.suffix()),
                    format!("create {}/{name}.{}.j2", self.root, part.suffix()),
                ));
            }
        }
        Ok(())
    }

    /// Checks that a webhook step may post `name`: a default `.json.j2` part exists.
    pub fn check_body(&self, name: &str) -> Result<(), (String, String)> {
        let create = format!("create {}/{name}.json.j2", self.root);
        let Some(locales) = self.index.get(name) else {
            let hint = match did_you_mean(name, self.bodies()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => create,
            };
            return Err((format!("unknown webhook body `{name}`"), hint));
        };
        let default = locales.iter().find(|v| v.locale.is_empty());
        if default.is_none_or(|v| v.files[Part::Json.index()].is_none()) {
            return Err((
                format!("template `{name}` has no default json part"),
                create,
            ));
        }
        Ok(())
    }

    /// The names that have a webhook body.
    fn bodies(&self) -> impl Iterator<Item = &str> {
        self.index
            .iter()
            .filter(|(_, vs)| vs.iter().any(|v| v.files[Part::Json.index()].is_some()))
            .map(|(n, _)| n.as_str())
    }

    /// Renders a webhook's body: `name`'s `.json.j2` in the customer's locale, which must
    /// give one JSON value (it is posted as written).
    pub fn render_json(
        &self,
        name: &str,
        locale: Option<&str>,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        self.guarded(name, || {
            let variant = self
                .pick(name, locale, Part::Json)
                .ok_or_else(|| self.missing(name, Part::Json))?;
            let file = variant.files[Part::Json.index()]
                .as_deref()
                .unwrap_or_default();
            let body = self.render_file(file, ctx)?;
            match serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                Ok(_) => Ok(body),
                Err(e) => Err(RenderError {
                    file: format!("{}/{file}", self.root),
                    message: format!("the rendered body is not JSON: {e}"),
                    over_budget: false,
                }),
            }
        })
    }

    /// The files the emails of `names` may render, by file name: every part and locale of
    /// each, and every file they extend, include or import, transitively. A reference by a
    /// computed name could be any file: then every file is used.
    pub fn files_used<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, String)> {
        let mut todo: Vec<String> = names
            .into_iter()
            .filter_map(|n| self.index.get(n))
            .flatten()
            .flat_map(|v| v.files.iter().flatten().cloned())
            .collect();
        let mut used: BTreeMap<&str, &str> = BTreeMap::new();
        while let Some(file) = todo.pop() {
            let Some((file, source)) = self.sources.get_key_value(&file) else {
                continue;
            };
            if used.insert(file, source).is_some() {
                continue;
            }
            match references(source) {
                Some(files) => todo.extend(files),
                None => {
                    used = self
                        .sources
                        .iter()
                        .map(|(f, s)| (f.as_str(), s.as_str()))
                        .collect();
                    break;
                }
            }
        }
        used.into_iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect()
    }

    /// The limits every render of this set is held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The logical names known (`camera/basics`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The most specific variant of `name` that has `part`: `ko-KR`, then `ko`, then default.
    /// Runs for every email, so it compares in place instead of building locale strings.
    fn pick(&self, name: &str, locale: Option<&str>, part: Part) -> Option<&Variant> {
        let variants = self.index.get(name)?;
        let locale = locale.unwrap_or_default().trim();
        let lang = locale.split(['-', '_']).next().unwrap_or_default();
        let score = |v: &Variant| -> Option<u8> {
            v.files[part.index()].as_ref()?;
            if v.locale.is_empty() {
                Some(0)
            } else if !locale.is_empty() && same_locale(&v.locale, locale) {
                Some(2)
            } else if !lang.is_empty() && v.locale.eq_ignore_ascii_case(lang) {
                Some(1)
            } else {
                None
            }
        };
        variants
            .iter()
            .filter_map(|v| Some((score(v)?, v)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, v)| v)
    }

    fn render_file(&self, file: &str, ctx: &Value) -> Result<String, RenderError> {
        let err = |e: minijinja::Error| RenderError {
            file: format!("{}/{file}", self.root),
            message: describe(&e),
            over_budget: over_budget(&e),
        };
        self.env
            .get_template(file)
            .and_then(|t| t.render(ctx))
            .map_err(err)
    }

    fn missing(&self, name: &str, part: Part) -> RenderError {
        RenderError {
            file: format!("{}/{name}.{}.j2", self.root, part.suffix()),
            message: "template not found".into(),
            over_budget: false,
        }
    }

    /// Renders only the subject line (what `simulate` prints).
    pub fn render_subject(
        &self,
        name: &str,
        locale: Option<&str>,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        self.guarded(name, || self.subject_of(name, locale, ctx))
    }

    /// Runs a render; a panic in it (a bug the renderers met on some template or data) fails
    /// that render with the reason instead of the worker that ran it.
    fn guarded<T>(
        &self,
        name: &str,
        render: impl FnOnce() -> Result<T, RenderError>,
    ) -> Result<T, RenderError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(render)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(RenderError {
                file: format!("{}/{name}", self.root),
                message: format!("rendering failed: {}", crate::redact::text(&what)),
                over_budget: false,
            })
        })
    }

    fn subject_of(
        &self,
        name: &str,
        locale: Option<&str>,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        let variant = self
            .pick(name, locale, Part::Subject)
            .ok_or_else(|| self.missing(name, Part::Subject))?;
        if let Some(text) = variant.simple_subject.as_ref().and_then(|s| s.render(ctx)) {
            return Ok(one_line(&text));
        }
        let file = variant.files[Part::Subject.index()]
            .as_deref()
            .unwrap_or_default();
        Ok(one_line(&self.render_file(file, ctx)?))
    }

    /// Renders subject, HTML and text; text is derived from the HTML when there is no text part
    /// in the HTML's locale.
    pub fn render(
        &self,
        name: &str,
        locale: Option<&str>,
        ctx: &Value,
    ) -> Result<Rendered, RenderError> {
        self.guarded(name, || self.render_parts(name, locale, ctx))
    }

    fn render_parts(
        &self,
        name: &str,
        locale: Option<&str>,
        ctx: &Value,
    ) -> Result<Rendered, RenderError> {
        let subject = self.subject_of(name, locale, ctx)?;
        let variant = self
            .pick(name, locale, Part::Html)
            .ok_or_else(|| self.missing(name, Part::Html))?;
        let file = variant.files[Part::Html.index()]
            .as_deref()
            .unwrap_or_default();
        let mut html = self.render_file(file, ctx)?;
        if file.ends_with(".mjml.j2") {
            html = mjml_to_html(&html).map_err(|message| RenderError {
                file: format!("{}/{file}", self.root),
                message,
                over_budget: false,
            })?;
        }
        let text = match &variant.files[Part::Text.index()] {
            Some(file) => self.render_file(file, ctx)?,
            None => text::html_to_text(&html),
        };
        Ok(Rendered {
            subject,
            html,
            text,
        })
    }
}

/// The environment every template of a set renders in: held to `limits`, HTML escaped in
/// HTML and MJML bodies, an undefined field chainable.
fn environment(limits: &Limits) -> Environment<'static> {
    let mut env = Environment::new();
    // Fuel bounds both the time and the memory of one render (a loop over range(100000)
    // inside another, an output of gigabytes); the recursion limit, includes of itself and
    // macros that never stop.
    env.set_fuel(Some(limits.template_fuel));
    env.set_recursion_limit(limits.template_recursion);
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(auto_escape);
    env.set_formatter(format_value);
    env
}

/// HTML escaping for `.html.j2` and `.mjml.j2` files, JSON for `.json.j2` (a value is
/// written as a JSON value: a string with its quotes), none for the others.
fn auto_escape(name: &str) -> AutoEscape {
    if name.ends_with(".html.j2") || name.ends_with(".mjml.j2") {
        AutoEscape::Html
    } else if name.ends_with(".json.j2") {
        AutoEscape::Json
    } else {
        AutoEscape::None
    }
}

/// Writes a value into a template's output.
fn format_value(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    // MiniJinja's HTML escaping also writes `/` as `&#x2f;`, which turns every URL in
    // an email into `https:&#x2f;&#x2f;…`: valid, but unreadable in the source that
    // link scanners and spam filters read. Strings are escaped here without it.
    // A field the customer never gave (`customer.name` of someone who left it out)
    // is no text: "Hi None" is worse than "Hi". In JSON it is `null`, or the body would not
    // parse.
    if value.is_none() || value.is_undefined() {
        return match state.auto_escape() {
            AutoEscape::Json => out.write_str("null").map_err(minijinja::Error::from),
            _ => Ok(()),
        };
    }
    match value.as_str() {
        Some(s) if matches!(state.auto_escape(), AutoEscape::Html) && !value.is_safe() => out
            .write_str(&escape_html(s))
            .map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The variant of `name` in `locale`, added when it is the first file of that locale.
fn variant(
    index: &mut BTreeMap<String, Vec<Variant>>,
    name: String,
    locale: String,
) -> &mut Variant {
    let variants = index.entry(name).or_default();
    let i = match variants.iter().position(|v| v.locale == locale) {
        Some(i) => i,
        None => {
            variants.push(Variant {
                locale,
                ..Variant::default()
            });
            variants.len() - 1
        }
    };
    &mut variants[i]
}

/// What `check_budget` reports of a render error met with the sample customer, as (message,
/// hint); `None` for the errors left to the real data.
fn sample_problem(e: &minijinja::Error) -> Option<(&'static str, &'static str)> {
    budget_problem(e).or_else(|| reference_problem(root_cause(e)))
}

/// A render that goes past the budget: out of fuel, or recursing too deep.
fn budget_problem(e: &minijinja::Error) -> Option<(&'static str, &'static str)> {
    if matches!(root_cause(e).kind(), minijinja::ErrorKind::OutOfFuel) {
        Some((
            "does not finish within the template budget (sequences.template_fuel)",
            "look for loops over large ranges, nested loops, or output that grows without end",
        ))
    } else if over_budget(e) {
        Some((
            "recurses deeper than sequences.template_recursion",
            "a template that includes itself, or a macro that calls itself without end",
        ))
    } else {
        None
    }
}

/// A render that refers to what is not there (a template, a filter, a test, a function), or
/// to itself through `extends`: it would fail for every customer.
fn reference_problem(cause: &minijinja::Error) -> Option<(&'static str, &'static str)> {
    if cause.kind() == minijinja::ErrorKind::TemplateNotFound {
        Some((
            "includes a template that does not exist",
            "include templates of this folder by their path under templates/",
        ))
    } else if matches!(
        cause.kind(),
        minijinja::ErrorKind::UnknownFilter
            | minijinja::ErrorKind::UnknownTest
            | minijinja::ErrorKind::UnknownFunction
            | minijinja::ErrorKind::UnknownMethod
    ) {
        Some((
            "uses a filter, test or function that does not exist",
            "see MiniJinja's built-in filters and tests; it would fail for every customer",
        ))
    } else if cause
        .detail()
        .is_some_and(|d| d.starts_with("cycle in template inheritance"))
    {
        Some((
            "extends itself, directly or through another template",
            "a layout is extended by its pages, not by itself",
        ))
    } else {
        None
    }
}

/// Responsive HTML from rendered MJML.
fn mjml_to_html(mjml: &str) -> Result<String, String> {
    let parsed = mrml::parse(mjml).map_err(|e| format!("MJML: {e}"))?;
    let options = mrml::prelude::render::RenderOptions {
        // No HTML comments (they only add bytes) and no web fonts fetched from Google.
        disable_comments: true,
        fonts: Default::default(),
        ..Default::default()
    };
    parsed
        .element
        .render(&options)
        .map_err(|e| format!("MJML: {e}"))
}

/// The longest `{{ … }}` or `{% … %}` tag: MiniJinja's parser nests one level per operator of
/// a chain (`1+1+…`, `a|f|f|…`), and a long one overflows the stack of whoever loads it.
pub const MAX_TAG_BYTES: usize = 4096;

/// The first tag longer than [`MAX_TAG_BYTES`]: (its offset, its length). An unclosed tag is
/// left to MiniJinja's syntax error.
fn long_tag(source: &str) -> Option<(usize, usize)> {
    let bytes = source.as_bytes();
    let mut i = 0;
    while let Some(open) = source[i..].find('{').map(|o| i + o) {
        let close = match bytes.get(open + 1) {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            _ => {
                i = open + 1;
                continue;
            }
        };
        let Some(end) = source[open + 2..].find(close).map(|e| open + 2 + e + 2) else {
            return (source.len() - open > MAX_TAG_BYTES).then_some((open, source.len() - open));
        };
        if end - open > MAX_TAG_BYTES {
            return Some((open, end - open));
        }
        i = end;
    }
    None
}

/// `&`, `<`, `>`, `"` and `'` as entities: enough for text and attribute values.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A subject is one line: template newlines and runs of spaces collapse to single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `ko-KR`, `ko_kr` and `KO-kr` name the same locale.
fn same_locale(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(x) == norm(y)
        })
}

/// `camera/basics.ko-KR.html.j2` → (`camera/basics`, `ko-KR`, Html).
fn split_name(file: &str) -> Option<(String, String, Part)> {
    let stem = file.strip_suffix(".j2")?;
    let (rest, part) = stem.rsplit_once('.')?;
    let part = match part {
        "subject" => Part::Subject,
        "html" | "mjml" => Part::Html,
        "txt" => Part::Text,
        "json" => Part::Json,
        _ => return None,
    };
    if let Some((name, locale)) = rest.rsplit_once('.')
        && is_locale(locale)
        && !name.is_empty()
    {
        return Some((name.to_string(), locale.to_string(), part));
    }
    (!rest.is_empty()).then(|| (rest.to_string(), String::new(), part))
}

fn is_locale(s: &str) -> bool {
    let mut parts = s.split('-');
    let lang = parts.next().unwrap_or_default();
    (2..=3).contains(&lang.len())
        && lang.chars().all(|c| c.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Where a MiniJinja error points in `source`.
fn error_pos(e: &minijinja::Error, source: &str) -> Pos {
    if let Some(range) = e.range() {
        return Pos::START.advance(source, range.start);
    }
    Pos::new(e.line().unwrap_or(1) as u32, 1)
}

/// The template names `source` extends, includes or imports (`{% extends "x" %}`,
/// `{% include ["a", "b"] ignore missing %}`, `{% from "m" import f %}`), or `None` when one
/// of them is computed rather than written out.
fn references(source: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut raw = false;
    for tag in without_comments(source).split("{%").skip(1) {
        let body = tag.split("%}").next().unwrap_or_default();
        let body = body
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+']);
        let body = body.trim();
        // `{%include"a"%}` is a tag too: the keyword is the leading word, whatever follows.
        let keyword = &body[..body
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(body.len())];
        match keyword {
            "raw" => raw = true,
            "endraw" => raw = false,
            _ => {}
        }
        if raw || !matches!(keyword, "extends" | "include" | "import" | "from") {
            continue;
        }
        let (names, tail) = literal_list(&body[keyword.len()..])?;
        let tail = tail.trim();
        let plain = match keyword {
            "extends" => tail.is_empty() && names.len() == 1,
            "include" => tail
                .split_whitespace()
                .all(|w| matches!(w, "ignore" | "missing" | "with" | "without" | "context")),
            "import" => names.len() == 1 && tail.starts_with("as "),
            _ => names.len() == 1 && tail.starts_with("import "),
        };
        if !plain {
            return None;
        }
        out.extend(names.into_iter().map(str::to_string));
    }
    Some(out)
}

/// `source` without its `{# … #}` comments: a tag commented out references nothing.
fn without_comments(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("{#") {
        return std::borrow::Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{#") {
        out.push_str(&rest[..open]);
        match rest[open + 2..].find("#}") {
            Some(close) => rest = &rest[open + 2 + close + 2..],
            None => return std::borrow::Cow::Owned(out),
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A string literal or a `[…]` list of them at the start of `text`, and what follows; `None`
/// when `text` starts with anything else (a variable, an expression).
fn literal_list(text: &str) -> Option<(Vec<&str>, &str)> {
    let mut rest = text.trim_start();
    let list = rest.starts_with('[');
    if list {
        rest = &rest[1..];
    }
    let mut names = Vec::new();
    loop {
        rest = rest.trim_start();
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let after = &rest[1..];
        let close = after.find(quote)?;
        let name = &after[..close];
        if name.contains('\\') {
            return None;
        }
        names.push(name);
        rest = after[close + 1..].trim_start();
        if list && rest.starts_with(',') {
            rest = &rest[1..];
            continue;
        }
        if list {
            rest = rest.strip_prefix(']')?;
        }
        // The caller checks that only keywords follow: `"a" ~ x` is computed.
        return Some((names, rest));
    }
}

/// Every `*.j2` file under `dir`: (its path under `root` with `/`, its path). Symbolic links
/// are followed (a Kubernetes ConfigMap is made of them) but each directory is read once, so a
/// link to a parent cannot loop; entries that are not regular files (a FIFO would block the
/// read) and files that resolve outside `bound` (the sequences folder) are reported, not read.
fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf)>,
    diags: &mut Vec<Diagnostic>,
    shown: &str,
) -> std::io::Result<()> {
    let bound = root
        .parent()
        .unwrap_or(root)
        .canonicalize()
        .unwrap_or_else(|_| root.to_path_buf());
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(real) = d.canonicalize() else { continue };
        if !seen.insert(real) {
            continue;
        }
        for path in entries(&d)? {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "j2") {
                match admit(root, &bound, shown, path) {
                    Ok(file) => out.push(file),
                    Err(d) => diags.push(d),
                }
            }
        }
    }
    Ok(())
}

/// The paths in directory `d`, sorted; an error names `d`.
fn entries(d: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", d.display()));
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(d)
        .map_err(named)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(named)?;
    entries.sort();
    Ok(entries)
}

/// A `*.j2` file found under `root`, as (its path under `root` with `/`, its path); refused
/// when it is not a regular file or resolves outside `bound`.
fn admit(
    root: &Path,
    bound: &Path,
    shown: &str,
    path: std::path::PathBuf,
) -> Result<(String, std::path::PathBuf), Diagnostic> {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(&path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    let refuse = |message: &str| {
        Diagnostic::new(format!("{shown}/{rel}"), Pos::START, message)
            .hint("templates are regular files inside the sequences folder")
    };
    if !path.is_file() {
        Err(refuse("not a regular file"))
    } else if path.canonicalize().is_ok_and(|c| !c.starts_with(bound)) {
        Err(refuse("a link to a file outside the sequences folder"))
    } else {
        Ok((rel, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    /// A webhook body is JSON-escaped: a value is written as JSON (a string with its quotes,
    /// a quote or a newline in it escaped), a missing one as `null`; a body that is not JSON
    /// fails with where.
    #[test]
    fn a_json_body_escapes_values_as_json_and_must_parse() {
        let (ts, diags) = Templates::from_files(
            "templates",
            vec![
                (
                    "sms/shipped.json.j2".into(),
                    r#"{"to": {{ phone }}, "text": "Hi", "name": {{ name }}, "n": {{ n }}, "none": {{ missing }}}"#.into(),
                ),
                ("sms/shipped.ko.json.j2".into(), r#"{"text": "안녕"}"#.into()),
                ("bad/body.json.j2".into(), r#"{"to": {{ phone }},}"#.into()),
            ],
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(ts.check_body("sms/shipped"), Ok(()));
        let ctx = context! { phone => "+82 10\"1234\"\n", name => "Ann </script>", n => 3 };
        let body = ts.render_json("sms/shipped", None, &ctx).unwrap();
        assert_eq!(
            body,
            r#"{"to": "+82 10\"1234\"\n", "text": "Hi", "name": "Ann </script>", "n": 3, "none": null}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["to"], "+82 10\"1234\"\n");
        assert_eq!(parsed["name"], "Ann </script>");
        assert_eq!(
            ts.render_json("sms/shipped", Some("ko-KR"), &ctx).unwrap(),
            r#"{"text": "안녕"}"#
        );
        let e = ts.render_json("bad/body", None, &ctx).unwrap_err();
        assert_eq!(e.file, "templates/bad/body.json.j2");
        assert_eq!(
            e.message,
            "the rendered body is not JSON: key must be a string at line 1 column 27"
        );
        assert_eq!(
            ts.check_body("sms/shiped"),
            Err((
                "unknown webhook body `sms/shiped`".into(),
                "did you mean `sms/shipped`?".into()
            ))
        );
    }

    #[test]
    fn a_version_keeps_the_files_its_emails_render_and_what_they_extend() {
        let files = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(f, s)| (f.to_string(), s.to_string()))
                .collect::<Vec<_>>()
        };
        let (t, diags) = Templates::from_files(
            "t",
            files(&[
                ("a.subject.j2", "A"),
                (
                    "a.html.j2",
                    "{% extends \"_l/base.html.j2\" %}{% block b %}x{% endblock %}",
                ),
                (
                    "a.ko.html.j2",
                    "{%- include ['_l/ko.html.j2', \"_l/x.html.j2\"] ignore missing -%}",
                ),
                ("b.subject.j2", "B"),
                ("b.html.j2", "{% from '_l/m.html.j2' import f %}{{ f() }}"),
                ("_l/base.html.j2", "<b>{% block b %}{% endblock %}</b>"),
                ("_l/ko.html.j2", "ko"),
                ("_l/m.html.j2", "{% macro f() %}m{% endmacro %}"),
                ("c.subject.j2", "C"),
                ("c.html.j2", "{% include name ~ '.html.j2' %}"),
            ]),
        );
        assert!(diags.is_empty(), "{diags:?}");
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(
            names(t.files_used(["a"])),
            [
                "_l/base.html.j2",
                "_l/ko.html.j2",
                "a.html.j2",
                "a.ko.html.j2",
                "a.subject.j2"
            ]
        );
        assert_eq!(
            names(t.files_used(["b", "nothing"])),
            ["_l/m.html.j2", "b.html.j2", "b.subject.j2"]
        );
        // A computed name could be any file.
        assert_eq!(t.files_used(["c"]).len(), 10);
        assert_eq!(references("{% include \"a\" ~ x %}"), None);
        // No space after the keyword is still a tag; a parenthesis a computed name.
        assert_eq!(
            references("{%include\"f\"%}{%-extends'b'-%}"),
            Some(vec!["f".to_string(), "b".to_string()])
        );
        assert_eq!(references("{%extends(\"b\")%}"), None);
        // Commented out or raw: no reference.
        assert_eq!(
            references("{# {% include x %} #}{% raw %}{% include y %}{% endraw %}"),
            Some(vec![])
        );
        assert_eq!(references("{% extends layout %}"), None);
        assert_eq!(
            references("{% import 'm' as m %}{% if x %}{% endif %}"),
            Some(vec!["m".to_string()])
        );
    }

    #[test]
    fn a_value_the_customer_never_gave_renders_as_nothing() {
        let (t, diags) = Templates::from_files(
            "t",
            vec![
                ("m.subject.j2".into(), "Hi {{ customer.name }}".into()),
                (
                    "m.html.j2".into(),
                    "<p>Hi {{ customer.name }}{{ customer.name | default('') }}</p>".into(),
                ),
            ],
        );
        assert!(diags.is_empty(), "{diags:?}");
        let ctx = context! { customer => context! { name => Value::from(()) } };
        assert_eq!(t.render_subject("m", None, &ctx).unwrap(), "Hi");
        let r = t.render("m", None, &ctx).unwrap();
        assert!(r.html.contains("<p>Hi </p>"), "{}", r.html);
    }

    #[test]
    fn an_mjml_body_becomes_responsive_html_with_escaped_data_and_derived_text() {
        let (t, diags) = Templates::from_files(
            "seq/templates",
            vec![
                ("m.subject.j2".into(), "Hi {{ name }}".into()),
                (
                    "m.mjml.j2".into(),
                    "<mjml><mj-body><mj-section><mj-column><mj-text>Hello {{ name }}</mj-text>\
                     </mj-column></mj-section></mj-body></mjml>"
                        .into(),
                ),
                ("bad.subject.j2".into(), "x".into()),
                ("bad.mjml.j2".into(), "<mjml><mj-body><mj-text>".into()),
            ],
        );
        assert!(diags.is_empty(), "{diags:?}");
        let r = t.render("m", None, &context! { name => "<Ann>" }).unwrap();
        assert!(r.html.starts_with("<!doctype html>"), "{}", r.html);
        assert!(r.html.contains("Hello &lt;Ann&gt;"), "{}", r.html);
        assert!(
            r.html.contains("@media only screen"),
            "responsive CSS: {}",
            r.html
        );
        assert_eq!(r.text.trim(), "Hello <Ann>");
        let e = t.render("bad", None, &Value::UNDEFINED).unwrap_err();
        assert_eq!(e.file, "seq/templates/bad.mjml.j2");
        assert!(e.message.starts_with("MJML: "), "{}", e.message);
    }

    fn set(files: &[(&str, &str)]) -> Templates {
        let files = files
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let (t, diags) = Templates::from_files("templates", files);
        assert!(diags.is_empty(), "{diags:?}");
        t
    }

    #[test]
    fn locale_fallback_and_derived_text() {
        let t = set(&[
            ("a.subject.j2", "Hi {{ name }}"),
            ("a.html.j2", "<p>Hello {{ name }}</p>"),
            ("a.txt.j2", "Hello {{ name }} (text)"),
            ("a.ko.subject.j2", "안녕 {{ name }}"),
            ("a.ko.html.j2", "<p>안녕하세요 {{ name }}</p>"),
        ]);
        let ctx = context! { name => "<Ana>" };
        let ko = t.render("a", Some("ko-KR"), &ctx).unwrap();
        assert_eq!(ko.subject, "안녕 <Ana>");
        assert_eq!(ko.html, "<p>안녕하세요 &lt;Ana&gt;</p>");
        assert_eq!(ko.text, "안녕하세요 <Ana>\n");
        let en = t.render("a", Some("en-US"), &ctx).unwrap();
        assert_eq!(en.text, "Hello <Ana> (text)");
        assert_eq!(t.render("a", None, &ctx).unwrap().subject, "Hi <Ana>");
    }

    #[test]
    fn region_variant_wins() {
        let t = set(&[
            ("a.subject.j2", "default"),
            ("a.ko.subject.j2", "ko"),
            ("a.ko-KR.subject.j2", "ko-KR"),
            ("a.html.j2", "x"),
        ]);
        let ctx = Value::from(());
        assert_eq!(t.render_subject("a", Some("ko_kr"), &ctx).unwrap(), "ko-KR");
        assert_eq!(t.render_subject("a", Some("ko"), &ctx).unwrap(), "ko");
        assert_eq!(t.render_subject("a", Some("fr"), &ctx).unwrap(), "default");
    }

    #[test]
    fn syntax_error_names_file_and_position() {
        let files = vec![("a.html.j2".to_string(), "<p>\n  {{ name </p>".to_string())];
        let (_, diags) = Templates::from_files("seq/templates", files);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].path, "seq/templates/a.html.j2");
        assert_eq!(diags[0].pos.line, 2);
    }

    #[test]
    fn unknown_template_suggests() {
        let t = set(&[
            ("camera/tripod.subject.j2", "x"),
            ("camera/tripod.html.j2", "x"),
        ]);
        let (msg, hint) = t.check("camera/tripd").unwrap_err();
        assert_eq!(msg, "unknown template `camera/tripd`");
        assert_eq!(hint, "did you mean `camera/tripod`?");
        assert!(t.check("camera/tripod").is_ok());
    }
}
