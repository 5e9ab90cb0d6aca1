//! `aftercare simulate`: replay events on a virtual clock; print decisions; send nothing.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::engine::Engine;
use crate::simulate::{replay, Simulator};
use crate::time::Period;

#[derive(clap::Args)]
pub struct Args {
    /// JSON Lines file of CloudEvents (structured form), or `-` for stdin.
    #[arg(long)]
    events: PathBuf,
    /// The sequences directory (default: `sequences.dir` from the config).
    #[arg(long)]
    sequences: Option<PathBuf>,
    /// How long to keep running timers after the last event.
    #[arg(long, default_value = "90d")]
    until: String,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let until: Period = args.until.parse().map_err(|m: String| anyhow::anyhow!("--until: {m}"))?;
    let config = super::load_config(args.config.as_deref())?;
    let policy = config
        .policy()
        .map_err(|(key, m)| anyhow::anyhow!("config error: {key}: {m}"))?;
    let dir = args.sequences.unwrap_or(config.sequences.dir);
    let catalog = super::load_catalog_strict(&dir)?;
    let mut sim = Simulator::new(Engine::new(Arc::new(catalog), policy));

    let shown = args.events.display().to_string();
    let input: Box<dyn std::io::BufRead> = if shown == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = File::open(&args.events).with_context(|| format!("opening {shown}"))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let summary = replay(&mut sim, input, &mut out, until, |line, reason| {
        eprintln!("{shown}:{line}: skipped: {reason}");
    })
    .with_context(|| format!("replaying {shown}"))?;
    out.flush()?;
    let s = summary.stats;
    eprintln!(
        "simulated {} event(s) ({} bad line(s) skipped, {} duplicate(s) ignored): {} decision(s)",
        s.events, summary.bad_lines, s.duplicates, s.decisions
    );
    Ok(ExitCode::SUCCESS)
}
