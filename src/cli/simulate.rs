//! `aftercare simulate`: replay events on a virtual clock; print decisions; send nothing.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::engine::Engine;
use crate::simulate::{Simulator, Summary, replay, replay_parallel};
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
    /// Worker threads (default, and at most: one per core). The output is the same for any
    /// number.
    #[arg(long)]
    threads: Option<usize>,
    /// Writes the experiments' figures (holdouts, variants, return on relationship) to FILE
    /// as JSON, and a summary of them to stderr.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let until: Period = args
        .until
        .parse()
        .map_err(|m: String| anyhow::anyhow!("--until: {m}"))?;
    let config = super::load_config(args.config.as_deref())?;
    let policy = config
        .policy()
        .map_err(|(key, m)| anyhow::anyhow!("config error: {key}: {m}"))?;
    let dir = args.sequences.unwrap_or(config.sequences.dir.clone());
    let catalog = Arc::new(super::load_catalog_strict(&dir, &config)?);
    if let Some((seq, step)) = crate::engine::coupon::first_generator(&catalog)
        && policy.coupon_key.is_none()
    {
        eprintln!(
            "warning: {}/{} generates coupon codes; without AFTERCARE_SIGNING_KEY they are not the codes `run` gives",
            seq.name, step.id
        );
    }
    let threads = threads(args.threads);
    // A partial file beside it, created before the replay (a path that cannot be written
    // fails at once) and renamed over it at the end: a failed replay leaves the old report.
    let report_file = match &args.report {
        Some(path) => Some(ReportFile::create(path, &args.events, &dir)?),
        None => None,
    };

    let shown = args.events.display().to_string();
    let input = input(&args.events, &shown)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let on_bad = |line: u64, reason: &str| eprintln!("{shown}:{line}: skipped: {reason}");
    let summary = if threads == 1 {
        replay_alone(
            Engine::new(catalog.clone(), policy),
            input,
            &mut out,
            until,
            on_bad,
        )
    } else {
        let engines = engines(Engine::new(catalog.clone(), policy), threads, &dir, &config)?;
        replay_parallel(engines, input, &mut out, until, on_bad)
    }
    .with_context(|| format!("replaying {shown}"))?;
    out.flush()?;
    report(&summary);
    if let Some(file) = report_file {
        let figures = summary.report(&catalog);
        file.write(&figures)?;
        let mut text = String::new();
        figures.write_text(&mut text);
        eprint!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--report FILE`, written through `FILE.partial` (removed if the run ends before).
struct ReportFile {
    path: PathBuf,
    partial: PathBuf,
    file: File,
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        // Renamed already when all went well; otherwise what is left of a failed run.
        let _ = std::fs::remove_file(&self.partial);
    }
}

impl ReportFile {
    /// Refuses a path that is the events file or inside the sequences folder (the replay
    /// reads both), then creates the partial file.
    fn create(path: &Path, events: &Path, sequences: &Path) -> anyhow::Result<ReportFile> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let target = absolute(path);
        let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => absolute(a) == absolute(b),
        };
        if same(path, events) {
            anyhow::bail!("--report {}: that is the events file", path.display());
        }
        let folder = std::fs::canonicalize(sequences).unwrap_or_else(|_| absolute(sequences));
        let parent = target
            .parent()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
        if parent.is_some_and(|p| p.starts_with(&folder)) {
            anyhow::bail!("--report {}: inside the sequences folder", path.display());
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            partial,
            file,
        })
    }

    fn write(self, figures: &crate::experiments::Report) -> anyhow::Result<()> {
        let mut w = BufWriter::new(&self.file);
        let written = serde_json::to_writer_pretty(&mut w, figures)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush());
        drop(w);
        let written = written
            .and_then(|()| self.file.sync_all())
            .and_then(|()| std::fs::rename(&self.partial, &self.path));
        written.with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Replays on this thread.
fn replay_alone(
    engine: Engine,
    input: impl std::io::BufRead,
    out: &mut impl Write,
    until: Period,
    on_bad: impl FnMut(u64, &str),
) -> std::io::Result<Summary> {
    let mut sim = Simulator::new(engine);
    let summary = replay(&mut sim, input, out, until, on_bad);
    // The process ends here: freeing every customer one by one would only cost time.
    std::mem::forget(sim);
    summary
}

/// `first` and an engine for each further worker. Each worker compiles its own catalog:
/// sharing one would make every decision bump reference counts on cache lines the other
/// cores are using.
fn engines(
    first: Engine,
    threads: usize,
    dir: &Path,
    config: &Config,
) -> anyhow::Result<Vec<Engine>> {
    let policy = first.policy.clone();
    // One set of reorder intervals, kept up by the reader, read by every worker.
    let intervals = first.intervals.clone();
    let mut engines = vec![first];
    for _ in 1..threads {
        let catalog = Arc::new(super::load_catalog_strict(dir, config)?);
        engines.push(Engine::new(catalog, policy.clone()).with_intervals(intervals.clone()));
    }
    Ok(engines)
}

/// The worker threads for `--threads`. Never more workers than cores: each holds a catalog
/// and its share of the customers, and more of them only divide the same cores
/// (`--threads 100000` once aborted).
fn threads(asked: Option<usize>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match asked {
        Some(n) if n > cores => {
            eprintln!("--threads {n}: using {cores}, the number of cores");
            cores
        }
        Some(n) => n.max(1),
        None => cores,
    }
}

/// The events file (`shown` as given), or stdin for `-`.
fn input(path: &Path, shown: &str) -> anyhow::Result<Box<dyn std::io::BufRead>> {
    Ok(if shown == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = File::open(path).with_context(|| format!("opening {shown}"))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    })
}

/// What was replayed, on stderr, with a warning when events came in too old to enrol.
fn report(summary: &Summary) {
    let s = &summary.stats;
    eprintln!(
        "simulated {} event(s) ({} bad line(s) skipped, {} duplicate(s) ignored): {} decision(s)",
        s.events, summary.bad_lines, s.duplicates, s.decisions
    );
    if s.backfilled > 0 {
        eprintln!(
            "warning: {} event(s) were older than policy.max_event_age when replayed (a later event had moved the clock past them): they updated profiles but enrolled nobody in marketing",
            s.backfilled
        );
    }
}
