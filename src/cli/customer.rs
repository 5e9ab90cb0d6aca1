//! `aftercare customer ID`: profile, journeys and timeline, from the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::engine::Order;
use crate::store::record::{journeys, profile_and_orders};
use crate::store::{JourneyRow, TimelineRow};
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
    print_orders(&orders);
    println!("journeys in flight:");
    let journeys =
        journeys(&stored).map_err(|e| anyhow::anyhow!("stored customer unreadable: {e}"))?;
    if journeys.is_empty() {
        println!("  (none)");
    }
    for j in &journeys {
        println!("  {}", journey_line(j));
    }
    println!("timeline:");
    for t in &timeline {
        println!("  {}", serde_json::to_string(&Line::of(&stored.id, t))?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per order: id, status, total and when it was placed.
fn print_orders(orders: &[Order]) {
    println!("orders:");
    for o in orders {
        println!(
            "  {} {:?} total {} {} placed {}",
            o.id,
            o.status,
            o.total,
            o.currency,
            o.placed_at.map(rfc3339).unwrap_or_default()
        );
    }
}

/// A journey in flight: its sequence and step, its state and until when, its order.
fn journey_line(j: &JourneyRow) -> String {
    let due = match (j.status.as_str(), j.due) {
        (_, Some(d)) if !crate::time::fires(d) => " due never".to_string(),
        ("due", Some(d)) => format!(" at {}", rfc3339(d)),
        (_, Some(d)) => format!(" until {}", rfc3339(d)),
        (_, None) => String::new(),
    };
    let order = j
        .order_id
        .as_deref()
        .map(|o| format!(" order {o}"))
        .unwrap_or_default();
    let held = if j.held {
        " (paused by an operator)"
    } else {
        ""
    };
    format!(
        "{} {}@{} step {} {}{held}{due}{order}",
        j.id, j.sequence, j.version, j.step_id, j.status
    )
}

/// A timeline line, in the order of simulate's decision lines.
#[derive(serde::Serialize)]
struct Line<'a> {
    at: String,
    customer: &'a str,
    sequence: &'a str,
    step: Option<&'a str>,
    action: &'a str,
    reason: &'a str,
    subject: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// The same line simulate prints; delivery lines (`sent`, `retry`, ...) and profile lines
    /// (`unsubscribe`) have the same fields with actions of their own.
    fn of(customer: &'a str, t: &'a TimelineRow) -> Line<'a> {
        Line {
            at: crate::time::rfc3339(t.at),
            customer,
            sequence: &t.sequence,
            step: t.step.as_deref(),
            action: &t.action,
            reason: &t.reason,
            subject: t.subject.as_deref(),
        }
    }
}
