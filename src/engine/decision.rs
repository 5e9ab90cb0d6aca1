//! Decisions: what the engine decided, for whom, when and why.
//!
//! `simulate` prints them, `run` stores them (the timeline) and turns `email` decisions into
//! outbox rows, `aftercare customer` explains them. One type, so all three agree.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::journey::JourneyId;
use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Enter,
    Email,
    Skip,
    Suppress,
    Defer,
    Pause,
    Resume,
    Start,
    Goal,
    Exit,
    Complete,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::Enter,
        Action::Email,
        Action::Skip,
        Action::Suppress,
        Action::Defer,
        Action::Pause,
        Action::Resume,
        Action::Start,
        Action::Goal,
        Action::Exit,
        Action::Complete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enter => "enter",
            Action::Email => "email",
            Action::Skip => "skip",
            Action::Suppress => "suppress",
            Action::Defer => "defer",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Start => "start",
            Action::Goal => "goal",
            Action::Exit => "exit",
            Action::Complete => "complete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An email to send: ids only, rendered when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailIntent {
    pub template: Arc<str>,
    pub category: Arc<str>,
    pub transactional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub customer: Arc<str>,
    pub journey: JourneyId,
    pub sequence: Arc<str>,
    pub version: Arc<str>,
    /// `None` on `complete` lines.
    pub step: Option<Arc<str>>,
    pub action: Action,
    pub reason: String,
    /// The rendered subject, on `email` lines.
    pub subject: Option<String>,
    /// Set on `email` decisions: what the outbox sends.
    pub email: Option<EmailIntent>,
}

/// One output line of `simulate`, as SPEC §5 defines it.
#[derive(Serialize)]
pub struct Line<'a> {
    pub at: &'a str,
    pub customer: &'a str,
    pub sequence: &'a str,
    pub step: Option<&'a str>,
    pub action: Action,
    pub reason: Option<&'a str>,
    pub subject: Option<&'a str>,
}

impl Decision {
    /// The line, with `at` taken from `at_text` (the caller formats it, often once for many).
    pub fn line(&self) -> Line<'_> {
        Line {
            at: "",
            customer: &self.customer,
            sequence: &self.sequence,
            step: self.step.as_deref(),
            action: self.action,
            reason: Some(&self.reason),
            subject: self.subject.as_deref(),
        }
    }

    /// The JSON line `simulate` prints.
    pub fn to_json(&self) -> String {
        let at = rfc3339(self.at);
        serde_json::to_string(&Line { at: &at, ..self.line() }).unwrap_or_default()
    }
}
