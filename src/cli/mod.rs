//! The `aftercare` commands: one file per command, this one parses and dispatches.

mod cdnow;
mod coupon;
mod customer;
mod dead_letters;
mod forget;
pub mod plan;
mod preview;
mod publish;
mod run;
mod simulate;
mod status;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::sequence::{Catalog, Diagnostic};

#[derive(Parser)]
#[command(
    name = "aftercare",
    version,
    about = "Event-driven post-purchase follow-up engine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The service: consume events, advance journeys, send emails.
    Run(run::Args),
    /// A customer's profile, journeys and timeline, from the store.
    Customer(customer::Args),
    /// Erase one customer: every row of theirs, in one transaction (a privacy request).
    Forget(forget::Args),
    /// What deploying the sequence files in DIR would change for journeys in flight.
    Plan(plan::Args),
    /// What the store holds, in numbers: events, customers, journeys, emails, decisions.
    Status(status::Args),
    /// Messages that could not be applied: list, show one, replay them to their topics.
    #[command(name = "dead-letters")]
    DeadLetters(dead_letters::Args),
    /// Publish a JSON Lines file of CloudEvents to Kafka (quickstarts, tests).
    Publish(publish::Args),
    /// Check every sequence, expression, cron and template; exit 1 on any error.
    Validate {
        /// The sequences directory (default: `sequences.dir` from the config).
        dir: Option<PathBuf>,
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Replay a JSON Lines event file on a virtual clock and print every decision.
    Simulate(simulate::Args),
    /// Render one step's email for a sample event.
    Preview(preview::Args),
    /// Print the JSON Schema of the sequence file format.
    Schema,
    /// Convert the CDNOW purchase data set into CloudEvents (JSON Lines).
    Cdnow(cdnow::Args),
    /// Coupon codes steps gave: `coupon verify CODE` says who got it and whether it is ours.
    Coupon(coupon::Args),
}

/// Parses the command line and runs; the exit code is 0, 1 (findings, e.g. invalid
/// sequences) or 2 (the command could not run).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` sets up its logs (and traces) from its config file.
    if !matches!(cli.command, Command::Run(_)) {
        init_tracing();
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Customer(args) => customer::run(args),
        Command::Forget(args) => forget::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Publish(args) => publish::run(args),
        Command::DeadLetters(args) => dead_letters::run(args),
        Command::Status(args) => status::run(args),
        Command::Validate { dir, config } => validate::run(dir.as_deref(), config.as_deref()),
        Command::Simulate(args) => simulate::run(args),
        Command::Preview(args) => preview::run(args),
        Command::Schema => schema(),
        Command::Cdnow(args) => cdnow::run(args),
        Command::Coupon(args) => coupon::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr (stdout carries command output), filtered by `AFTERCARE_LOG`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AFTERCARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn schema() -> anyhow::Result<ExitCode> {
    println!("{}", schema_json());
    Ok(ExitCode::SUCCESS)
}

/// The JSON Schema of sequence files, as `aftercare schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(crate::sequence::raw::RawSequence);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// Loads the config: `-c FILE`, else `config/aftercare.toml` when present, else defaults.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("config error: {e}"))
}

/// Loads a catalog with the config's limits; prints every problem and fails if there is any.
fn load_catalog_strict(dir: &Path, config: &Config) -> anyhow::Result<Catalog> {
    let limits = limits(config)?;
    let (catalog, diags) =
        Catalog::load_with(dir, &limits).with_context(|| format!("loading {}", dir.display()))?;
    if !diags.is_empty() {
        print_diags(&diags);
        anyhow::bail!(
            "{} has {} error(s); run `aftercare validate` for details",
            dir.display(),
            diags.len()
        );
    }
    Ok(catalog)
}

/// The config's limits on sequence files, checked.
fn limits(config: &Config) -> anyhow::Result<crate::sequence::Limits> {
    config
        .limits()
        .map_err(|(key, m)| anyhow::anyhow!("config error: {key}: {m}"))
}

fn print_diags(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}
