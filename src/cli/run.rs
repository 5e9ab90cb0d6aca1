//! `aftercare run [-c FILE] [--dry-run]`: the service, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::service::{self, Options, Shutdown};

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Decide everything, send nothing: each email is recorded as it would have been sent.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    // Flushes buffered spans when `run` returns.
    let _trace = service::trace::init(&config.log, &config.trace)?;
    let stop = Shutdown::new();
    // Set when the service returns on its own (a failed start, a failed sync).
    let ended = Shutdown::new();
    let service = {
        let (stop, ended) = (stop.clone(), ended.clone());
        let options = Options {
            dry_run: args.dry_run,
        };
        std::thread::Builder::new()
            .name("service".into())
            .spawn(move || {
                let result = service::run(config, options, stop, Arc::default());
                ended.trigger();
                result
            })?
    };
    until_signal(&ended)?;
    stop.trigger();
    match service.join() {
        Ok(Ok(_)) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("the service thread panicked"),
    }
}

/// Waits for SIGTERM, SIGINT or the service's own end. Signals are the one async thing here:
/// a small runtime waits for them.
fn until_signal(ended: &Shutdown) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = ended.triggered() => {}
        }
        Ok::<(), std::io::Error>(())
    })
}
