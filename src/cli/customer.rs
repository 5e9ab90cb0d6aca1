//! `aftercare customer ID`: profile, journeys and timeline, from the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::engine::{Action, Decision, JourneyId};
use crate::store::record::{journeys, profile_and_orders};
use crate::time::rfc3339;

#[derive(clap::Args)]
pub struct Args {
    /// The customer id (CloudEvents `subject`).
    id: String,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let mut store = crate::store::open(&config.store.url).context("opening the store")?;
    let Some((stored, timeline)) = store.customer(&args.id)? else {
        eprintln!("no customer `{}` in {}", args.id, config.store.url);
        return Ok(ExitCode::FAILURE);
    };
    let (profile, orders) = profile_and_orders(&stored)
        .map_err(|e| anyhow::anyhow!("stored customer unreadable: {e}"))?;
    println!("customer {}", stored.id);
    // Printed for the operator who asked (this is output, not a log line).
    println!("profile: {}", serde_json::to_string_pretty(&profile)?);
    println!("orders:");
    for o in &orders {
        println!(
            "  {} {:?} total {} {} placed {}",
            o.id,
            o.status,
            o.total,
            o.currency,
            o.placed_at.map(rfc3339).unwrap_or_default()
        );
    }
    println!("journeys in flight:");
    let journeys =
        journeys(&stored).map_err(|e| anyhow::anyhow!("stored customer unreadable: {e}"))?;
    if journeys.is_empty() {
        println!("  (none)");
    }
    for j in &journeys {
        let due = match (j.status.as_str(), j.due) {
            ("due", Some(d)) => format!(" at {}", rfc3339(d)),
            (_, Some(d)) => format!(" until {}", rfc3339(d)),
            (_, None) => String::new(),
        };
        let order = j
            .order_id
            .as_deref()
            .map(|o| format!(" order {o}"))
            .unwrap_or_default();
        println!(
            "  {} {}@{} step {} {}{due}{order}",
            j.id, j.sequence, j.version, j.step_id, j.status
        );
    }
    println!("timeline:");
    for t in &timeline {
        // The same line simulate prints.
        let d = Decision {
            at: t.at,
            customer: stored.id.as_str().into(),
            journey: t.journey.parse().unwrap_or(JourneyId(0)),
            sequence: t.sequence.as_str().into(),
            version: t.version.as_str().into(),
            step: t.step.as_deref().map(Into::into),
            action: Action::ALL
                .into_iter()
                .find(|a| a.as_str() == t.action)
                .unwrap_or(Action::Skip),
            reason: t.reason.clone(),
            subject: t.subject.clone(),
            email: None,
        };
        println!("  {}", d.to_json());
    }
    Ok(ExitCode::SUCCESS)
}
