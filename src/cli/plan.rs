//! `aftercare plan [DIR]`: what deploying the sequence files in DIR would do to the journeys
//! in flight, read from the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::sequence::Catalog;
use crate::store::JourneyCount;

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
    let mut store = crate::store::open(&config.store.url).context("opening the store")?;
    let counts = store.journey_counts()?;
    for line in plan(&catalog, &counts) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per (sequence, version, step, status) in flight, saying what the files would do,
/// then a line per sequence whose version would change.
pub fn plan(catalog: &Catalog, counts: &[JourneyCount]) -> Vec<String> {
    let mut out = Vec::new();
    if counts.is_empty() {
        out.push("no journeys in flight".to_string());
    }
    for c in counts {
        let what = match catalog.get(&c.sequence) {
            None => "file removed: these journeys finish on their version".to_string(),
            Some(s) if *s.version == *c.version => "unchanged".to_string(),
            Some(s) => match &s.migrate {
                Some(m) if m.from == c.version => {
                    let to = m
                        .steps
                        .iter()
                        .find(|(from, _)| *from == c.step)
                        .map(|(_, i)| s.steps[*i].id.to_string())
                        .or_else(|| s.step_index(&c.step).map(|_| c.step.clone()));
                    match to {
                        Some(step) => format!("migrate to {} step {step}", s.version),
                        None => format!(
                            "stay on {} (step {} has no match in {})",
                            c.version, c.step, s.version
                        ),
                    }
                }
                _ => format!("stay on {} (new journeys take {})", c.version, s.version),
            },
        };
        out.push(format!(
            "{}@{} step {} ({}): {} journey(s): {what}",
            c.sequence, c.version, c.step, c.status, c.count
        ));
    }
    out
}
