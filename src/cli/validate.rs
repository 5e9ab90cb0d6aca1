//! `aftercare validate [DIR]`: every error in every file, `path:line:column: message`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::sequence::Catalog;

pub fn run(dir: Option<&Path>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let limits = super::limits(&config)?;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => config.sequences.dir,
    };
    let (catalog, diags) =
        Catalog::load_with(&dir, &limits).with_context(|| format!("loading {}", dir.display()))?;
    if diags.is_empty() {
        let n = catalog.sequences().len();
        println!("{}: {n} sequence(s) valid", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    for d in &diags {
        println!("{d}");
    }
    let files: std::collections::BTreeSet<&str> = diags.iter().map(|d| d.path.as_str()).collect();
    eprintln!("{} error(s) in {} file(s)", diags.len(), files.len());
    Ok(ExitCode::FAILURE)
}
