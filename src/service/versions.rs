//! Sequence versions the catalog no longer holds, revived from the store with the templates
//! kept with them: a journey finishes on the version it started on, emails included, whatever
//! the folder holds now.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sequence::compile::{compile_kept, version_of};
use crate::sequence::{Catalog, Sequence};
use crate::store::{Result, VersionRecord};
use crate::template::Templates;

/// Versions revived so far, and their template sets by content (versions that render the
/// same files share one).
#[derive(Default)]
pub struct Kept {
    sequences: HashMap<(String, String), Arc<Sequence>>,
    templates: HashMap<String, Arc<Templates>>,
    /// Versions stored before templates were kept: they render with the folder's templates
    /// of the moment, so they are compiled again when a reload brings new ones.
    legacy: HashMap<(String, String), crate::store::VersionRecord>,
}

impl Kept {
    /// `name` at `version`: from `catalog`, from those revived before, or read with `fetch`
    /// and compiled. `None` when the store has no such version or it no longer compiles.
    pub fn resolve(
        &mut self,
        catalog: &Catalog,
        name: &str,
        version: &str,
        fetch: impl FnOnce() -> Result<Option<VersionRecord>>,
    ) -> Result<Option<Arc<Sequence>>> {
        if let Some(seq) = catalog.version(name, version) {
            return Ok(Some(seq.clone()));
        }
        let key = (name.to_string(), version.to_string());
        if let Some(seq) = self.sequences.get(&key) {
            let stale =
                self.legacy.contains_key(&key) && !Arc::ptr_eq(&seq.templates, &catalog.templates);
            if !stale {
                return Ok(Some(seq.clone()));
            }
        }
        let record = match self.legacy.get(&key) {
            Some(r) => r.clone(),
            None => match fetch()? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let templates = self.templates_of(catalog, &record);
        let Ok(seq) = compile_kept(&record, templates) else {
            // The last good compile (if any) goes on serving, as for every caller.
            return Ok(self.sequences.get(&key).cloned());
        };
        let seq = Arc::new(seq);
        self.sequences.insert(key.clone(), seq.clone());
        if record.templates.is_empty() {
            self.legacy.insert(key, record);
        }
        Ok(Some(seq))
    }

    /// The templates kept with `record`; the folder's for a version stored before templates
    /// were kept.
    fn templates_of(&mut self, catalog: &Catalog, record: &VersionRecord) -> Arc<Templates> {
        if record.templates.is_empty() {
            return catalog.templates.clone();
        }
        let limits = *catalog.templates.limits();
        self.templates
            .entry(version_of("", &record.templates))
            .or_insert_with(|| {
                let root = format!("templates kept with {}@{}", record.name, record.version);
                let (t, _) = Templates::from_files_with(&root, record.templates.clone(), &limits);
                Arc::new(t)
            })
            .clone()
    }
}
