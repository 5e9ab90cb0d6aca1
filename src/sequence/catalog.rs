//! The set of sequences an engine runs: every file of a directory, checked together, with
//! every version kept by content hash so journeys stay on the version they started on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::compile::{Compiled, compile_limited};
use super::diag::{Diagnostic, Diags, Pos, did_you_mean};
use super::raw::Sp;
use super::{JourneyKind, Limits, Sequence};
use crate::template::Templates;

#[derive(Debug)]
pub struct Catalog {
    /// The current version of each sequence, sorted by name (the order decisions are made in).
    current: Vec<Arc<Sequence>>,
    by_name: HashMap<Arc<str>, Arc<Sequence>>,
    /// Every version ever loaded, by (name, version).
    versions: HashMap<(Arc<str>, Arc<str>), Arc<Sequence>>,
    by_trigger: HashMap<Arc<str>, Vec<Arc<Sequence>>>,
    /// Sequences started by a date of the customer's, in name order.
    dated: Vec<Arc<Sequence>>,
    pub templates: Arc<Templates>,
}

/// A sequences directory, or a file in it, that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read sequences from {path}: {source}")]
pub struct LoadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// The text of a sequence or template file: refused with a diagnostic naming it when it is
/// over `limits.max_file_bytes` (read no further than that) or not UTF-8 (with the line and
/// column of the first bad byte). `Err` only when it cannot be read at all.
pub fn read_source(
    path: &Path,
    shown: &str,
    limits: &Limits,
) -> std::io::Result<Result<String, Diagnostic>> {
    use std::io::Read as _;
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{shown}: {e}"));
    let file = std::fs::File::open(path).map_err(named)?;
    let mut bytes = Vec::new();
    file.take(limits.max_file_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(named)?;
    if bytes.len() > limits.max_file_bytes {
        return Ok(Err(Diagnostic::new(
            shown,
            Pos::START,
            format!("the file is over the {}-byte limit", limits.max_file_bytes),
        )
        .hint("split it into smaller files (sequences.max_file_bytes)")));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Ok(text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let before = String::from_utf8_lossy(valid);
            let pos = Pos::START.advance(&before, before.len());
            Ok(Err(Diagnostic::new(
                shown,
                pos,
                "the file is not UTF-8 text: a byte here is no UTF-8 character",
            )
            .hint(
                "save the file as UTF-8 (most editors offer it under \"encoding\")",
            )))
        }
    }
}

/// Problems reported per file: a file of 80,000 unknown keys is one problem to its author.
const MAX_DIAGNOSTICS_PER_FILE: usize = 100;

/// The first `max` problems, and one line saying how many more there are.
fn at_most(mut list: Vec<Diagnostic>, max: usize) -> Vec<Diagnostic> {
    if list.len() > max {
        let more = list.len() - max;
        list.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        list.truncate(max);
        if let Some(last) = list.last().cloned() {
            list.push(
                Diagnostic::new(
                    last.path,
                    last.pos,
                    format!("… and {more} more problem(s) in this file"),
                )
                .hint("fix these first; the rest are often the same mistake"),
            );
        }
    }
    list
}

impl Catalog {
    /// Loads `dir/*.yaml` and `dir/templates/` with the default limits. Returns the valid
    /// sequences and every problem found; the caller decides whether problems are fatal
    /// (`validate`, `simulate`) or leave the last good version running (`run`).
    pub fn load(dir: &Path) -> Result<(Catalog, Vec<Diagnostic>), LoadError> {
        Catalog::load_with(dir, &Limits::default())
    }

    /// As [`Catalog::load`], holding every file and template to `limits`.
    pub fn load_with(dir: &Path, limits: &Limits) -> Result<(Catalog, Vec<Diagnostic>), LoadError> {
        let shown = dir.display().to_string();
        let err = |source| LoadError {
            path: shown.clone(),
            source,
        };
        let mut files = Vec::new();
        let mut diags = Vec::new();
        let bound = dir.canonicalize().map_err(err)?;
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.canonicalize().is_ok_and(|c| !c.starts_with(&bound)) {
                diags.push(
                    Diagnostic::new(
                        path.display().to_string(),
                        Pos::START,
                        "a link to a file outside the sequences folder",
                    )
                    .hint("sequence files are regular files inside the sequences folder"),
                );
            } else if is_yaml && path.is_file() {
                let file = path.display().to_string();
                match read_source(&path, &file, limits).map_err(err)? {
                    Ok(source) => files.push((file, source)),
                    Err(d) => diags.push(d),
                }
            }
        }
        files.sort();
        let tdir = dir.join("templates");
        let (templates, tdiags) =
            Templates::load_with(&tdir, &tdir.display().to_string(), limits).map_err(err)?;
        diags.extend(tdiags);
        Ok(Catalog::from_sources_with(files, templates, diags, limits))
    }

    /// Builds a catalog from (path, source) pairs already in memory, with the default limits.
    pub fn from_sources(
        files: Vec<(String, String)>,
        templates: Templates,
        diags: Vec<Diagnostic>,
    ) -> (Catalog, Vec<Diagnostic>) {
        Catalog::from_sources_with(files, templates, diags, &Limits::default())
    }

    /// As [`Catalog::from_sources`], holding every file to `limits`. Besides each file's
    /// own checks: names unique, `start` targets known, no cycle of `start`s without a wait,
    /// and every template and expression tried once against a sample customer within its
    /// budget.
    pub fn from_sources_with(
        files: Vec<(String, String)>,
        templates: Templates,
        mut diags: Vec<Diagnostic>,
        limits: &Limits,
    ) -> (Catalog, Vec<Diagnostic>) {
        let templates = Arc::new(templates);
        let (compiled, claimed) = compile_each(&files, &templates, &mut diags, limits);
        let (mut by_name, named) = unique_names(compiled, &mut diags);
        let (mut current, starts_of) = known_starts(named, &mut by_name, &claimed, &mut diags);
        let looping = super::budget::start_cycles(&current, &starts_of);
        if !looping.is_empty() {
            current.retain(|s| !looping.iter().any(|d| d.path == s.path));
            diags.extend(looping);
        }
        diags.extend(super::budget::check(&current, &templates));
        diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        diags.dedup();
        let catalog = Catalog::build(current, templates);
        (catalog, diags)
    }

    fn build(mut current: Vec<Arc<Sequence>>, templates: Arc<Templates>) -> Catalog {
        current.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_trigger: HashMap<Arc<str>, Vec<Arc<Sequence>>> = HashMap::new();
        let mut dated = Vec::new();
        for s in &current {
            if s.trigger.date.is_some() {
                dated.push(s.clone());
                continue;
            }
            by_trigger
                .entry(s.trigger.event.clone())
                .or_default()
                .push(s.clone());
        }
        Catalog {
            by_name: current
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            versions: current
                .iter()
                .map(|s| ((s.name.clone(), s.version.clone()), s.clone()))
                .collect(),
            current,
            by_trigger,
            dated,
            templates,
        }
    }

    /// The current version of every sequence, by name.
    pub fn sequences(&self) -> &[Arc<Sequence>] {
        &self.current
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Sequence>> {
        self.by_name.get(name)
    }

    /// A specific version, current or kept from before.
    pub fn version(&self, name: &str, version: &str) -> Option<&Arc<Sequence>> {
        self.versions.get(&(Arc::from(name), Arc::from(version)))
    }

    /// Sequences whose trigger is `event_type`, in name order.
    pub fn triggered_by(&self, event_type: &str) -> &[Arc<Sequence>] {
        self.by_trigger.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Sequences started by a date trigger, in name order.
    pub fn dated(&self) -> &[Arc<Sequence>] {
        &self.dated
    }

    /// Keeps an older version (read back from the store) so its journeys can finish on it.
    pub fn keep_version(&mut self, seq: Arc<Sequence>) {
        self.versions
            .entry((seq.name.clone(), seq.version.clone()))
            .or_insert(seq);
    }
}

/// Sequences by name.
type ByName = HashMap<Arc<str>, Arc<Sequence>>;

/// The `start` targets of each sequence, by its name.
type StartsOf = HashMap<Arc<str>, Vec<Sp<String>>>;

/// A compiled sequence whose name no earlier file took, with its `start` targets still to
/// check.
struct Named {
    path: String,
    sequence: Arc<Sequence>,
    starts: Vec<Sp<String>>,
}

/// Compiles each file, its problems (at most [`MAX_DIAGNOSTICS_PER_FILE`]) going to `diags`.
/// Also returns every name a file claims, valid or not, so `start` of a broken file is not
/// "unknown".
fn compile_each(
    files: &[(String, String)],
    templates: &Arc<Templates>,
    diags: &mut Vec<Diagnostic>,
    limits: &Limits,
) -> (Vec<(String, Compiled)>, Vec<String>) {
    let mut compiled = Vec::new();
    let mut claimed = Vec::new();
    for (path, source) in files {
        let mut d = Diags::new(path);
        if let Some(c) = compile_limited(path, source, templates, &mut d, limits) {
            claimed.push(c.sequence.name.to_string());
            compiled.push((path.clone(), c));
        } else if let Some(stem) = Path::new(path).file_stem() {
            claimed.push(stem.to_string_lossy().into_owned());
        }
        diags.extend(at_most(d.list, MAX_DIAGNOSTICS_PER_FILE));
    }
    (compiled, claimed)
}

/// Names must be unique: a file using a name an earlier file took is refused.
fn unique_names(
    compiled: Vec<(String, Compiled)>,
    diags: &mut Vec<Diagnostic>,
) -> (ByName, Vec<Named>) {
    let mut by_name = ByName::new();
    let mut named = Vec::new();
    for (path, c) in compiled {
        if let Some(first) = by_name.get(&c.sequence.name) {
            diags.push(
                Diagnostic::new(
                    &path,
                    Pos::START,
                    format!("duplicate sequence name `{}`", c.sequence.name),
                )
                .hint(format!(
                    "{} already uses this name; names must be unique",
                    first.path
                )),
            );
            continue;
        }
        let sequence = Arc::new(c.sequence);
        by_name.insert(sequence.name.clone(), sequence.clone());
        named.push(Named {
            path,
            sequence,
            starts: c.starts,
        });
    }
    (by_name, named)
}

/// The sequences whose `start` targets all pass [`check_start`], in order, with their
/// targets by name. The others' problems go to `diags`, and they leave `by_name`: the files
/// after them see them as broken.
fn known_starts(
    named: Vec<Named>,
    by_name: &mut ByName,
    claimed: &[String],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Arc<Sequence>>, StartsOf) {
    let mut current = Vec::new();
    let mut starts_of = StartsOf::new();
    for Named {
        path,
        sequence: seq,
        starts,
    } in named
    {
        let mut d = Diags::new(&path);
        for target in &starts {
            check_start(&mut d, &seq, target, by_name, claimed);
        }
        if d.list.is_empty() {
            starts_of.insert(seq.name.clone(), starts);
            current.push(seq);
        } else {
            by_name.remove(&seq.name);
            diags.extend(d.list);
        }
    }
    (current, starts_of)
}

/// One `start` target of `seq`: a sequence of the directory (a broken file's name counts),
/// and not per_order when `seq` is per_customer.
fn check_start(
    d: &mut Diags,
    seq: &Sequence,
    target: &Sp<String>,
    by_name: &ByName,
    claimed: &[String],
) {
    match by_name.get(target.value.as_str()) {
        Some(t)
            if t.journey == JourneyKind::PerOrder && seq.journey == JourneyKind::PerCustomer =>
        {
            d.error_hint(
                target.pos,
                format!(
                    "`{}` is per_order and cannot be started from a per_customer journey",
                    target.value
                ),
                "a per_order journey needs the order of the journey that starts it",
            );
        }
        Some(_) => {}
        None if claimed.contains(&target.value) => {}
        None => {
            let hint = match did_you_mean(&target.value, claimed.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "name a sequence defined in this directory".into(),
            };
            d.error_hint(
                target.pos,
                format!("`start` names an unknown sequence `{}`", target.value),
                hint,
            );
        }
    }
}
