//! `aftercare validate [DIR]`: every error in every file, `path:line:column: message`; and a
//! warning for each template that journeys in flight (in the configured store, if there is
//! one) use but the folder no longer has.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::sequence::Catalog;
use crate::sequence::compile::compile_kept;
use crate::store::{JourneyCount, VersionRecord};

pub fn run(dir: Option<&Path>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let limits = super::limits(&config)?;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => config.sequences.dir.clone(),
    };
    let (catalog, mut diags) =
        Catalog::load_with(&dir, &limits).with_context(|| format!("loading {}", dir.display()))?;
    // As `run` refuses them: steps posting to an endpoint the config lacks.
    let webhooks = config.settings().map(|s| s.webhooks).unwrap_or_default();
    diags.extend(crate::webhook::unknown_endpoints(&catalog, &webhooks));
    if diags.is_empty() {
        let n = catalog.sequences().len();
        println!("{}: {n} sequence(s) valid", dir.display());
        for w in crate::sequence::lint::warnings(&catalog) {
            println!("{w}");
        }
        match in_flight(&config.store.url) {
            Ok(Some((counts, versions))) => {
                for w in missing_templates(&catalog, &counts, &versions) {
                    println!("{w}");
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("journeys in flight not checked: {e:#}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    for d in &diags {
        println!("{d}");
    }
    let files: std::collections::BTreeSet<&str> = diags.iter().map(|d| d.path.as_str()).collect();
    eprintln!("{} error(s) in {} file(s)", diags.len(), files.len());
    Ok(ExitCode::FAILURE)
}

/// The versions stored for (sequence, version).
pub type Stored = BTreeMap<(String, String), VersionRecord>;

/// The journeys in flight in the store at `url` and their versions; `None` when there is no
/// store yet.
pub fn in_flight(url: &str) -> anyhow::Result<Option<(Vec<JourneyCount>, Stored)>> {
    let Some(mut store) = crate::store::open_existing(url).context("opening the store")? else {
        return Ok(None);
    };
    let counts = store.journey_counts()?;
    let mut versions = Stored::new();
    for c in &counts {
        let key = (c.sequence.clone(), c.version.clone());
        if !versions.contains_key(&key)
            && let Some(v) = store.version(&c.sequence, &c.version)?
        {
            versions.insert(key, v);
        }
    }
    Ok(Some((counts, versions)))
}

/// A warning per template that stored journeys will still send and the folder no longer has:
/// they render from the copy kept with their version, or, for a version stored before
/// templates were kept, fail at send time.
pub fn missing_templates(
    catalog: &Catalog,
    counts: &[JourneyCount],
    stored: &Stored,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, n) in journeys_per_version(counts, stored) {
        let record = &stored[key];
        let Ok(seq) = compile_kept(record, Arc::clone(&catalog.templates)) else {
            continue;
        };
        let mut gone: Vec<&str> = seq
            .email_templates()
            .filter(|t| {
                catalog.templates.check(t).is_err() && catalog.templates.check_body(t).is_err()
            })
            .collect();
        gone.sort_unstable();
        gone.dedup();
        out.extend(gone.into_iter().map(|t| missing_warning(record, t, n)));
    }
    out
}

/// The journeys in flight on each stored version, in the order of the versions.
fn journeys_per_version<'s>(
    counts: &[JourneyCount],
    stored: &'s Stored,
) -> BTreeMap<&'s (String, String), u64> {
    let mut journeys: BTreeMap<&(String, String), u64> = BTreeMap::new();
    for c in counts {
        if let Some((key, _)) = stored.get_key_value(&(c.sequence.clone(), c.version.clone())) {
            *journeys.entry(key).or_default() += c.count;
        }
    }
    journeys
}

/// The warning that template `t` of `record`, which `n` journeys in flight still send, is gone.
fn missing_warning(record: &VersionRecord, t: &str, n: u64) -> String {
    let what = if record.templates.is_empty() {
        "their emails from it will fail (the version was stored before templates were kept); restore the files until they finish"
    } else {
        "they render from the copy kept with their version; new journeys cannot use it"
    };
    format!(
        "{}: warning: template `{t}` is no longer in the folder but {n} journey(s) in flight on {}@{} send it: {what}",
        record.path, record.name, record.version
    )
}
