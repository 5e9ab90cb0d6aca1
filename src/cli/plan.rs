//! `aftercare plan [DIR]`: what deploying the sequence files in DIR would do to the journeys
//! in flight, read from the store; and, per experiment, what it can detect from the store's
//! last 90 days (SPEC §8).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use super::validate::Stored;
use crate::sequence::{Catalog, Migrate, Sequence};
use crate::store::{JourneyCount, VersionRecord};

#[derive(clap::Args)]
pub struct Args {
    /// The edited sequences directory (default: `sequences.dir` from the config).
    dir: Option<PathBuf>,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let dir = args.dir.unwrap_or(config.sequences.dir.clone());
    let catalog = super::load_catalog_strict(&dir, &config)?;
    // No store yet: no journeys in flight.
    let (counts, stored) = super::validate::in_flight(&config.store.url)?.unwrap_or_default();
    for line in plan(&catalog, &counts, &stored) {
        println!("{line}");
    }
    for line in reorder_intervals(&config.store.url, &catalog)? {
        println!("{line}");
    }
    if let Some(report) = experiments(&config.store.url, &catalog)? {
        let mut text = String::new();
        report.write_text(&mut text);
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A line per `after: auto` reorder trigger: the interval a reminder would use today, from
/// the store's orders before today (as `run` computes it each midnight).
fn reorder_intervals(url: &str, catalog: &Catalog) -> anyhow::Result<Vec<String>> {
    use crate::engine::intervals::{MIN_BUYERS, day_of, watched};
    use crate::sequence::ReorderAfter;
    use anyhow::Context;
    let categories = watched(catalog);
    if categories.is_empty() {
        return Ok(Vec::new());
    }
    let today = day_of(crate::clock::system().now());
    let figures = match crate::store::open_existing(url).context("opening the store")? {
        Some(mut store) => crate::service::reorder::compute(&mut *store, &categories, today)
            .context("reading the customers' orders")?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for seq in catalog.sequences() {
        let Some(r) = &seq.trigger.reorder else {
            continue;
        };
        let ReorderAfter::Auto { fallback } = r.after else {
            continue;
        };
        let figure = figures
            .iter()
            .find(|(c, _)| *c == r.category)
            .map(|(_, i)| *i);
        let what = match figure {
            Some(i) if i.buyers >= MIN_BUYERS => format!(
                "{}, the median of {} repeat buyers",
                crate::time::Period(i.median),
                i.buyers
            ),
            other => format!(
                "the fallback {fallback}: {} repeat buyers of {}, fewer than {MIN_BUYERS}",
                other.map_or(0, |i| i.buyers),
                r.category
            ),
        };
        out.push(format!(
            "{}: reorder {} after: auto: {what}",
            seq.name, r.category
        ));
    }
    Ok(out)
}

/// The experiments' figures from the store, as of now, against the files' sequences: their
/// entry rate over the last 90 days, baseline and what they can detect. `None` without a
/// store or without an experiment in the files.
fn experiments(url: &str, catalog: &Catalog) -> anyhow::Result<Option<crate::experiments::Report>> {
    use anyhow::Context;
    if !catalog
        .sequences()
        .iter()
        .any(|s| crate::engine::experiment::is_experiment(s))
    {
        return Ok(None);
    }
    let Some(mut store) = crate::store::open_existing(url).context("opening the store")? else {
        return Ok(None);
    };
    let now = crate::clock::system().now();
    let stored = store
        .experiment_states()
        .context("reading the customers' experiments")?;
    Ok(Some(crate::service::figures::experiments(
        &stored, catalog, now,
    )))
}

/// One line per (sequence, version, step, status) in flight, saying what the files would do,
/// then a line per version in flight that the files would change, saying what changed: the
/// sequence file, and each template file edited, removed or added.
pub fn plan(catalog: &Catalog, counts: &[JourneyCount], stored: &Stored) -> Vec<String> {
    let mut out = Vec::new();
    if counts.is_empty() {
        out.push("no journeys in flight".to_string());
    }
    for c in counts {
        let what = fate(catalog, c);
        out.push(format!(
            "{}@{} step {} ({}): {} journey(s): {what}",
            c.sequence, c.version, c.step, c.status, c.count
        ));
    }
    out.extend(changed_versions(catalog, counts, stored));
    out
}

/// A line per version in flight that the files would change, saying what changed.
fn changed_versions(catalog: &Catalog, counts: &[JourneyCount], stored: &Stored) -> Vec<String> {
    let versions: BTreeSet<(&str, &str)> = counts
        .iter()
        .map(|c| (c.sequence.as_str(), c.version.as_str()))
        .collect();
    let mut out = Vec::new();
    for (name, version) in versions {
        let (Some(now), Some(before)) = (
            catalog.get(name),
            stored.get(&(name.to_string(), version.to_string())),
        ) else {
            continue;
        };
        if *now.version == *version {
            continue;
        }
        out.push(format!(
            "{name}@{version} -> {}: {}",
            now.version,
            changes(now, before).join(", ")
        ));
    }
    out
}

/// What the files would do to these journeys: nothing, let them finish on their version,
/// or migrate them to the new one (when its `migrate` is from their version and their step
/// has a match).
fn fate(catalog: &Catalog, c: &JourneyCount) -> String {
    match catalog.get(&c.sequence) {
        None => "file removed: these journeys finish on their version".to_string(),
        Some(s) if *s.version == *c.version => "unchanged".to_string(),
        Some(s) => match &s.migrate {
            Some(m) if m.from == c.version => match migrated_step(s, m, &c.step) {
                Some(step) => format!("migrate to {} step {step}", s.version),
                None => format!(
                    "stay on {} (step {} has no match in {})",
                    c.version, c.step, s.version
                ),
            },
            _ => format!("stay on {} (new journeys take {})", c.version, s.version),
        },
    }
}

/// The step of `s` a journey on the old `step` migrates to: the one `migrate` maps it to,
/// else the step of the same id.
fn migrated_step(s: &Sequence, m: &Migrate, step: &str) -> Option<String> {
    m.steps
        .iter()
        .find(|(from, _)| *from == step)
        .map(|(_, i)| s.steps[*i].id.to_string())
        .or_else(|| s.step_index(step).map(|_| step.to_string()))
}

/// What changed from the stored version to the one in the files: the sequence file, and
/// each template file edited, added or removed.
fn changes(now: &Sequence, before: &VersionRecord) -> Vec<String> {
    let mut changes = Vec::new();
    if *now.source != *before.source {
        changes.push(format!("{} edited", now.path));
    }
    if before.templates.is_empty() {
        changes.push("templates not kept with the old version".to_string());
        return changes;
    }
    let old: BTreeMap<&str, &str> = before
        .templates
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let new_files = now.templates.files_used(now.email_templates());
    let new: BTreeMap<&str, &str> = new_files
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    for (file, text) in &new {
        match old.get(file) {
            None => changes.push(format!("template {file} added")),
            Some(t) if t != text => changes.push(format!("template {file} edited")),
            Some(_) => {}
        }
    }
    for file in old.keys().filter(|f| !new.contains_key(*f)) {
        changes.push(format!("template {file} removed"));
    }
    changes
}
