//! `aftercare coupon verify CODE`: which step gave a coupon code, to whom, and whether it is
//! one of ours (derived under this installation's signing key).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Who was given CODE, by which step, and whether it is authentic.
    Verify { code: String },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Verify { code } = args.command;
    let config = super::load_config(args.config.as_deref())?;
    let policy = config
        .policy()
        .map_err(|(key, m)| anyhow::anyhow!("config error: {key}: {m}"))?;
    let Some(secret) = policy.coupon_key else {
        anyhow::bail!("codes are derived from AFTERCARE_SIGNING_KEY: set it to verify one");
    };
    let code = code.trim().to_ascii_uppercase();
    // A code is a prefix of at most 16 and at most 32 characters: anything longer is none.
    if code.is_empty() || code.len() > 48 {
        println!("{code}: not a code aftercare gives (1 to 48 characters)");
        return Ok(ExitCode::FAILURE);
    }
    let Some(mut store) =
        crate::store::open_existing(&config.store.url).context("opening the store")?
    else {
        anyhow::bail!("no store at {}: nothing was given yet", config.store.url);
    };
    let Some((customer, line)) = store.coupon_given(&code).context("reading the timeline")? else {
        println!(
            "{code}: given by no step (no timeline line names it; lines older than store.timeline_retention are gone)"
        );
        return Ok(ExitCode::FAILURE);
    };
    let step = line.step.as_deref().unwrap_or_default();
    let key = format!("{}:{step}", line.journey);
    let prefix = prefix_of(&config, &line.sequence, step);
    let authentic = authentic(&secret, &customer, &key, prefix.as_deref(), &code);
    println!(
        "{code}: given by {}/{step} to customer {customer} at {} (journey {}, {}); {}",
        line.sequence,
        crate::time::rfc3339(line.at),
        line.journey,
        line.action,
        match authentic {
            true => "authentic: derived from that step under this signing key",
            false => "NOT authentic: not derived from that step under this signing key",
        }
    );
    Ok(match authentic {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// The prefix the step's `coupon` has in the sequences folder now, if it has one.
fn prefix_of(config: &crate::config::Config, sequence: &str, step: &str) -> Option<String> {
    let (catalog, _) = crate::sequence::Catalog::load(&config.sequences.dir).ok()?;
    let seq = catalog.get(sequence)?;
    let step = &seq.steps[seq.step_index(step)?];
    let crate::sequence::Coupon::Generate { prefix, .. } = step.coupon.as_ref()?;
    Some(prefix.to_string())
}

/// Whether `code` is the one `customer`'s message with idempotency key `key` derives: with
/// the step's prefix when the folder still has it, else with every prefix that leaves the
/// shortest length a code has (a forged code then passes about once in a billion).
fn authentic(secret: &[u8], customer: &str, key: &str, prefix: Option<&str>, code: &str) -> bool {
    use crate::engine::coupon::{MIN_LENGTH, verify};
    if let Some(p) = prefix {
        return verify(secret, customer, key, p, code);
    }
    (0..=code.len().saturating_sub(MIN_LENGTH).min(16))
        .filter(|&i| code.is_char_boundary(i))
        .any(|i| verify(secret, customer, key, &code[..i], code))
}
