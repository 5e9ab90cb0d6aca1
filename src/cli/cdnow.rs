//! `aftercare cdnow`: the CDNOW data set as a CloudEvents stream (see `crate::cdnow`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::cdnow::Row;

#[derive(clap::Args)]
pub struct Args {
    /// `CDNOW_master.txt`.
    input: PathBuf,
    /// Output JSON Lines file (default: stdout).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Only the first N rows (a smaller sample).
    #[arg(long)]
    limit: Option<usize>,
    /// Only the N most recent purchases (with `--end now`, a sample still in its journeys).
    #[arg(long, conflicts_with = "limit")]
    latest: Option<usize>,
    /// A live snapshot: move every time so the latest purchase happens at this instant
    /// (RFC 3339, or `now`) and leave out what would come later.
    #[arg(long)]
    end: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut rows = crate::cdnow::parse(&text).with_context(|| args.input.display().to_string())?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    if let Some(n) = args.latest {
        // Stable: rows of the same day keep their file order.
        rows.sort_by_key(|r| std::cmp::Reverse(r.date));
        rows.truncate(n);
        rows.reverse();
    }
    let end = end_at(args.end.as_deref())?;
    let n = match &args.output {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            write(&rows, end, f)?
        }
        None => write(&rows, end, std::io::stdout().lock())?,
    };
    eprintln!("{} row(s) → {n} event(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}

/// `--end`: an RFC 3339 time, or `now`.
fn end_at(end: Option<&str>) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(match end {
        None => None,
        Some("now") => Some(crate::clock::Clock::now(&crate::clock::SystemClock)),
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| anyhow::anyhow!("--end: `{t}` is not RFC 3339 or `now`"))?
                .with_timezone(&chrono::Utc),
        ),
    })
}

/// Writes the events of `rows` to `to`, buffered; how many.
fn write(rows: &[Row], end: Option<DateTime<Utc>>, to: impl Write) -> anyhow::Result<usize> {
    let mut w = BufWriter::new(to);
    let n = crate::cdnow::write_events(rows, end, &mut w)?;
    w.flush()?;
    Ok(n)
}
