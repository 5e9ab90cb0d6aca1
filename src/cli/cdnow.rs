//! `aftercare cdnow`: the CDNOW data set as a CloudEvents stream (see `crate::cdnow`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut rows = crate::cdnow::parse(&text).with_context(|| args.input.display().to_string())?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let n = match &args.output {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(f);
            let n = crate::cdnow::write_events(&rows, &mut w)?;
            w.flush()?;
            n
        }
        None => {
            let mut w = BufWriter::new(std::io::stdout().lock());
            let n = crate::cdnow::write_events(&rows, &mut w)?;
            w.flush()?;
            n
        }
    };
    eprintln!("{} row(s) → {n} event(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}
