//! Emails out: building the message from an outbox row, and the transports.
//!
//! The outbox holds ids only; the email is rendered here, when it is sent, from the customer
//! and order as they are then.

pub mod transport;

use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use crate::store::OutboxRow;
use crate::template::Rendered;

/// Why a message could not be built: the address or a header is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("message: {0}")]
    Message(String),
}

/// The `Message-ID` of an outbox row: the same for every attempt, so a resend after a crash
/// is recognisable as the same email.
pub fn message_id(row: &OutboxRow, domain: &str) -> String {
    format!("<{}.{}@{domain}>", row.journey, hex_safe(&row.step))
}

/// Step ids are words, but a Message-ID must stay a valid addr-spec whatever they hold.
fn hex_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The domain of the From address, for Message-IDs.
pub fn domain_of(from: &Mailbox) -> String {
    from.email.domain().to_string()
}

/// Builds the MIME message: multipart/alternative with text and HTML, and the aftercare headers.
pub fn build(
    row: &OutboxRow,
    from: &Mailbox,
    to: &str,
    rendered: &Rendered,
) -> Result<Message, BuildError> {
    let to: Mailbox = to
        .parse()
        .map_err(|_| BuildError::Address("the customer's address".into()))?;
    let header = |name: &'static str, value: &str| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
    };
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(rendered.subject.clone())
        .message_id(Some(message_id(row, &domain_of(from))))
        .raw_header(header("X-Aftercare-Sequence", &row.sequence))
        .raw_header(header("X-Aftercare-Step", &row.step))
        .raw_header(header("X-Aftercare-Journey", &row.journey))
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|e| BuildError::Message(e.to_string()))
}
