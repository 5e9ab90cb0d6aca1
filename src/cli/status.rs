//! `aftercare status`: what the store holds, in numbers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let mut store = crate::store::open(&config.store.url).context("opening the store")?;
    for (name, n) in store.counts()? {
        println!("{name}: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
