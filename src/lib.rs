//! aftercare: an event-driven post-purchase follow-up engine.
//!
//! Crate map:
//! - [`event`]: CloudEvents in (structured and binary), typed `data` per known type.
//! - [`sequence`]: marketers' YAML → compiled, validated sequences; the catalog of versions.
//! - [`template`]: email templates (MiniJinja), locale fallback, text derived from HTML.
//! - [`engine`]: the pure journey state machine: (customer, input, now) → decisions.
//! - [`store`]: where customers, journeys and processed-event keys live, and the timeline
//!   (every decision with its reason) and the outbox (emails queued, sent, failed) beside
//!   them, written in the same transactions.
//! - [`simulate`]: the engine on a virtual clock and the memory store.
//! - [`service`]: `aftercare run`: Kafka in, engine, durable store, scheduler, outbox.
//! - [`mail`]: emails out: message building and transports.
//! - [`webhook`]: webhook posts out: endpoints, Standard Webhooks signatures, outcomes.
//! - [`config`]: defaults → TOML → `AFTERCARE_*` environment, validated.
//! - [`redact`]: outside text (database errors, relay replies) made safe to log.
//! - [`time`]: durations, cron send windows, quiet hours — pure, no clock.
//! - [`stats`]: the statistics of experiments' figures (intervals, p-values).
//! - [`clock`]: the one reader of the system clock; a manual clock for tests.
//! - [`cdnow`]: the CDNOW data set as a deterministic CloudEvents stream.
//! - [`cli`]: the `aftercare` commands.
//! - `fuzzing`: the fuzz targets' bodies, shared with the corpus replay test.
pub mod cdnow;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod event;
pub mod experiments;
#[doc(hidden)]
pub mod fuzzing;
pub mod mail;
pub mod redact;
pub mod sequence;
pub mod service;
pub mod simulate;
pub mod stats;
pub mod store;
pub mod template;
pub mod time;
pub mod webhook;
