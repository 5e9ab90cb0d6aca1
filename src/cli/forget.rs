//! `aftercare forget ID`: erases one customer (a privacy request), as a `customer.erased` event
//! would: profile, orders, journeys, timeline, emails and the dead letters that name them, in
//! one transaction; only a keyed hash of the address is kept, so marketing never restarts to
//! it unless the customer subscribes again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::engine::{Engine, Policy};
use crate::mail::token::Signer;
use crate::sequence::Catalog;
use crate::service::apply::Applier;
use crate::template::Templates;

#[derive(clap::Args)]
pub struct Args {
    /// The customer id (CloudEvents `subject`).
    id: String,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    crate::event::check_identifier("the customer id", &args.id)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut store = crate::store::open_small(&config.store.url).context("opening the store")?;
    let known = store.load(&args.id)?.is_some();
    // The journeys' own versions come from the store: the folder is not needed to forget.
    let (catalog, _) =
        Catalog::from_sources(vec![], Templates::from_files("templates", vec![]).0, vec![]);
    let key = crate::service::signing_key(&config)?;
    Applier::new(Engine::new(Arc::new(catalog), Policy::default()))
        .signing(Signer::new(&key))
        .forget(&mut *store, &args.id, "aftercare/cli")?;
    if known {
        println!("customer {} erased", args.id);
    } else {
        println!(
            "no customer {} in the store: nothing of theirs but dead letters naming the id could be removed",
            args.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
