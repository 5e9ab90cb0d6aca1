//! Decisions: what the engine decided, for whom, when and why.
//!
//! `simulate` prints them, `run` stores them (the timeline) and turns `email` decisions into
//! outbox rows, `aftercare customer` explains them. One type, so all three agree.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use std::io::Write;

use serde::Serialize;

use super::journey::JourneyId;
use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Enter,
    Email,
    /// A marketing email not sent: the customer is in the sequence's holdout group.
    Holdout,
    Skip,
    Suppress,
    Defer,
    Pause,
    Resume,
    Start,
    Goal,
    Exit,
    Complete,
    /// A `branch` step chose where the journey goes.
    Branch,
    /// A webhook post queued (SPEC §9): SMS, chat, a CRM task.
    Webhook,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::Enter,
        Action::Email,
        Action::Holdout,
        Action::Skip,
        Action::Suppress,
        Action::Defer,
        Action::Pause,
        Action::Resume,
        Action::Start,
        Action::Goal,
        Action::Exit,
        Action::Complete,
        Action::Branch,
        Action::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enter => "enter",
            Action::Email => "email",
            Action::Holdout => "holdout",
            Action::Skip => "skip",
            Action::Suppress => "suppress",
            Action::Defer => "defer",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Start => "start",
            Action::Goal => "goal",
            Action::Exit => "exit",
            Action::Complete => "complete",
            Action::Branch => "branch",
            Action::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step reaches its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    /// A post to a webhook endpoint: no email address is needed, and a bounced one stops
    /// nothing.
    Webhook,
}

/// An email (or a webhook post) to send: ids only, rendered when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailIntent {
    /// The email's template; a webhook's body.
    pub template: Arc<str>,
    /// A webhook's endpoint (`[webhooks.NAME]`); `None` for an email.
    pub endpoint: Option<Arc<str>>,
    pub category: Arc<str>,
    pub transactional: bool,
    /// The journey's order (per_order journeys): the `order` the template will see.
    pub order_id: Option<Arc<str>>,
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

impl Decision {
    /// Writes the SPEC §5 line (no newline): `{"at", "customer", "sequence", "step", "action",
    /// "reason", "subject"}`. `at` comes pre-formatted: consecutive lines mostly share it.
    pub fn write_json(&self, at: &str, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(b"{\"at\":")?;
        json_str(w, at)?;
        w.write_all(b",\"customer\":")?;
        json_str(w, &self.customer)?;
        w.write_all(b",\"sequence\":")?;
        json_str(w, &self.sequence)?;
        w.write_all(b",\"step\":")?;
        json_opt(w, self.step.as_deref())?;
        w.write_all(b",\"action\":\"")?;
        w.write_all(self.action.as_str().as_bytes())?;
        w.write_all(b"\",\"reason\":")?;
        json_str(w, &self.reason)?;
        w.write_all(b",\"subject\":")?;
        json_opt(w, self.subject.as_deref())?;
        w.write_all(b"}")
    }

    /// The JSON line `simulate` prints.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_json(&rfc3339(self.at), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn json_opt(w: &mut impl Write, s: Option<&str>) -> std::io::Result<()> {
    match s {
        Some(s) => json_str(w, s),
        None => w.write_all(b"null"),
    }
}

/// A JSON string; most of ours need no escaping, which is checked before calling serde_json.
fn json_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_all(b"\"")?;
        w.write_all(s.as_bytes())?;
        return w.write_all(b"\"");
    }
    serde_json::to_writer(w, s).map_err(std::io::Error::other)
}
