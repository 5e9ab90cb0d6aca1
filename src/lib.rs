//! aftercare: an event-driven post-purchase follow-up engine.
//!
//! Crate map:
//! - [`event`]: CloudEvents in (structured and binary), typed `data` per known type.
//! - [`sequence`]: marketers' YAML → compiled, validated sequences; the catalog of versions.
//! - [`template`]: email templates (MiniJinja), locale fallback, text from HTML.
//! - [`time`]: durations, cron send windows, quiet hours — pure, no clock.
pub mod event;
pub mod sequence;
pub mod template;
pub mod time;
