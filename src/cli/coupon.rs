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
    let mut store = crate::store::open(&config.store.url).context("opening the store")?;
    let Some((customer, line)) = store.coupon_given(&code).context("reading the timeline")? else {
        println!(
            "{code}: given by no step (no timeline line names it; lines older than store.timeline_retention are gone)"
        );
        return Ok(ExitCode::FAILURE);
    };
    let step = line.step.as_deref().unwrap_or_default();
    let key = format!("{}:{step}", line.journey);
    let authentic = authentic(&secret, &key, &code);
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

/// Whether `code` is some prefix and the code the step with idempotency key `key` derives:
/// the prefix is not known apart from the sequence, so every split is tried.
fn authentic(secret: &[u8], key: &str, code: &str) -> bool {
    (0..=code.len().min(16))
        .filter(|&i| code.is_char_boundary(i))
        .any(|i| crate::engine::coupon::verify(secret, key, &code[..i], code))
}
