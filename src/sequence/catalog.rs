//! The set of sequences an engine runs: every file of a directory, checked together, with
//! every version kept by content hash so journeys stay on the version they started on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::compile::{Compiled, compile};
use super::diag::{Diagnostic, Diags, Pos, did_you_mean};
use super::{JourneyKind, Sequence};
use crate::template::Templates;

#[derive(Debug)]
pub struct Catalog {
    /// The current version of each sequence, sorted by name (the order decisions are made in).
    current: Vec<Arc<Sequence>>,
    by_name: HashMap<Arc<str>, Arc<Sequence>>,
    /// Every version ever loaded, by (name, version).
    versions: HashMap<(Arc<str>, Arc<str>), Arc<Sequence>>,
    by_trigger: HashMap<Arc<str>, Vec<Arc<Sequence>>>,
    pub templates: Arc<Templates>,
}

/// A sequences directory that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read sequences from {path}: {source}")]
pub struct LoadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl Catalog {
    /// Loads `dir/*.yaml` and `dir/templates/`. Returns the valid sequences and every problem
    /// found; the caller decides whether problems are fatal (`validate`, `simulate`) or leave
    /// the last good version running (`run`).
    pub fn load(dir: &Path) -> Result<(Catalog, Vec<Diagnostic>), LoadError> {
        let shown = dir.display().to_string();
        let err = |source| LoadError {
            path: shown.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.is_file() {
                let source = std::fs::read_to_string(&path).map_err(err)?;
                files.push((path.display().to_string(), source));
            }
        }
        files.sort();
        let tdir = dir.join("templates");
        let (templates, tdiags) =
            Templates::load(&tdir, &tdir.display().to_string()).map_err(err)?;
        Ok(Catalog::from_sources(files, templates, tdiags))
    }

    /// Builds a catalog from (path, source) pairs already in memory.
    pub fn from_sources(
        files: Vec<(String, String)>,
        templates: Templates,
        mut diags: Vec<Diagnostic>,
    ) -> (Catalog, Vec<Diagnostic>) {
        let mut compiled: Vec<(String, Compiled)> = Vec::new();
        // Every name a file claims, valid or not, so `start` of a broken file is not "unknown".
        let mut claimed: Vec<String> = Vec::new();
        for (path, source) in &files {
            let mut d = Diags::new(path);
            if let Some(c) = compile(path, source, &templates, &mut d) {
                claimed.push(c.sequence.name.to_string());
                compiled.push((path.clone(), c));
            } else if let Some(stem) = Path::new(path).file_stem() {
                claimed.push(stem.to_string_lossy().into_owned());
            }
            diags.extend(d.list);
        }
        let mut by_name: HashMap<Arc<str>, Arc<Sequence>> = HashMap::new();
        let mut checked = Vec::new();
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
            let seq = Arc::new(c.sequence);
            by_name.insert(seq.name.clone(), seq.clone());
            checked.push((path, seq, c.starts));
        }
        let mut current = Vec::new();
        for (path, seq, starts) in checked {
            let mut d = Diags::new(&path);
            for target in &starts {
                match by_name.get(target.value.as_str()) {
                    Some(t)
                        if t.journey == JourneyKind::PerOrder
                            && seq.journey == JourneyKind::PerCustomer =>
                    {
                        d.error_hint(
                            target.pos,
                            format!("`{}` is per_order and cannot be started from a per_customer journey", target.value),
                            "a per_order journey needs the order of the journey that starts it",
                        );
                    }
                    Some(_) => {}
                    None if claimed.contains(&target.value) => {}
                    None => {
                        let hint =
                            match did_you_mean(&target.value, claimed.iter().map(String::as_str)) {
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
            if d.list.is_empty() {
                current.push(seq);
            } else {
                by_name.remove(&seq.name);
                diags.extend(d.list);
            }
        }
        diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let catalog = Catalog::build(current, Arc::new(templates));
        (catalog, diags)
    }

    fn build(mut current: Vec<Arc<Sequence>>, templates: Arc<Templates>) -> Catalog {
        current.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_trigger: HashMap<Arc<str>, Vec<Arc<Sequence>>> = HashMap::new();
        for s in &current {
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

    /// Keeps an older version (read back from the store) so its journeys can finish on it.
    pub fn keep_version(&mut self, seq: Arc<Sequence>) {
        self.versions
            .entry((seq.name.clone(), seq.version.clone()))
            .or_insert(seq);
    }
}
