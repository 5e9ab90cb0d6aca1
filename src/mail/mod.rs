//! Emails out: composing the message for an outbox row, and the transports.
//!
//! The outbox holds ids only; the email is rendered when it is sent, from the customer and
//! order as they are then, and composed here: multipart/alternative (text, HTML), the
//! aftercare headers, `List-Id`, and for marketing `List-Unsubscribe` with one-click
//! (RFC 8058), DKIM-signed when a key is configured. Every header value goes through lettre's
//! encoder (RFC 2047, folded), and addresses are parsed, so customer data cannot add a header.

pub mod token;
pub mod transport;

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MessageBuilder, MultiPart};
use lettre::{Address, Message};

use crate::store::OutboxRow;
use crate::template::Rendered;
use token::Signer;

/// Why a message could not be composed: the address or a header is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("message: {0}")]
    Message(String),
}

/// A composed email, ready for a transport.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The outbox key (`journey:step`).
    pub key: String,
    pub message_id: String,
    pub envelope: lettre::address::Envelope,
    pub bytes: Vec<u8>,
}

/// The `Message-ID` of an outbox row: the same for every attempt, so a resend after a crash
/// is recognisable as the same email.
pub fn message_id(row: &OutboxRow, domain: &str) -> String {
    format!("<{}.{}@{domain}>", row.journey, word(&row.step))
}

/// Step ids and categories are words, but Message-ID and List-Id must stay valid whatever
/// they hold.
fn word(s: &str) -> String {
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

/// Headers signed by DKIM. lettre's default list leaves out the List-Unsubscribe pair, which
/// RFC 8058 requires to be signed, and the Message-ID.
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Loads the DKIM key: an RSA key in PKCS#1 PEM, or an Ed25519 seed in base64.
pub fn dkim_config(selector: &str, domain: &str, key_text: &str) -> Result<DkimConfig, String> {
    let algorithm = if key_text.contains("BEGIN RSA PRIVATE KEY") {
        DkimSigningAlgorithm::Rsa
    } else if key_text.contains("BEGIN") {
        return Err(
            "not a PKCS#1 RSA key: convert it with `openssl rsa -in key.pem -traditional`".into(),
        );
    } else {
        DkimSigningAlgorithm::Ed25519
    };
    let key = DkimSigningKey::new(key_text.trim(), algorithm).map_err(|e| e.to_string())?;
    Ok(DkimConfig::new(
        selector.to_string(),
        domain.to_string(),
        key,
        SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect(),
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

/// Composes messages: the sender's identity, links and signature.
pub struct Composer {
    pub from: Mailbox,
    /// The base of links (`http.public_url`), without a trailing slash.
    pub public_url: String,
    pub signer: Signer,
    pub unsubscribe_mailto: Option<Address>,
    pub dkim: Option<DkimConfig>,
}

/// The links an email's templates may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub unsubscribe_url: String,
    pub preferences_url: String,
    pub token: String,
}

impl Composer {
    fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Unsubscribe (one click, this email's category) and preferences links for a customer.
    pub fn links(&self, customer: &str, category: &str) -> Links {
        let token = self.signer.sign(customer, category);
        Links {
            unsubscribe_url: format!("{}/u/{token}", self.public_url),
            preferences_url: format!("{}/preferences/{token}", self.public_url),
            token,
        }
    }

    /// The message for `row`, to `to` (the customer's address, and name when known); the
    /// variant of a split step is named in `X-Aftercare-Variant`.
    pub fn compose(
        &self,
        row: &OutboxRow,
        to_name: Option<&str>,
        to_email: &str,
        rendered: &Rendered,
        links: &Links,
        variant: Option<&str>,
    ) -> Result<Outgoing, BuildError> {
        let to = recipient(to_name, to_email)?;
        let message_id = message_id(row, self.domain());
        let mut builder = self.headers(row, to, &rendered.subject, &message_id);
        if let Some(v) = variant {
            builder = builder.raw_header(header("X-Aftercare-Variant", v.to_string()));
        }
        if !row.transactional {
            builder = self.unsubscribe(builder, links);
        }
        let mut message = builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text.clone(),
                rendered.html.clone(),
            ))
            .map_err(|e| BuildError::Message(e.to_string()))?;
        if let Some(dkim) = &self.dkim {
            message.sign(dkim);
        }
        Ok(Outgoing {
            key: row.key.clone(),
            message_id,
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
        })
    }

    /// The sender, recipient, subject and message id, the aftercare headers and `List-Id`.
    fn headers(
        &self,
        row: &OutboxRow,
        to: Mailbox,
        subject: &str,
        message_id: &str,
    ) -> MessageBuilder {
        let category = word(&row.category);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.to_string())
            .message_id(Some(message_id.to_string()))
            .raw_header(header("X-Aftercare-Sequence", row.sequence.clone()))
            .raw_header(header("X-Aftercare-Step", row.step.clone()))
            .raw_header(header("X-Aftercare-Journey", row.journey.clone()))
            .raw_header(header(
                "List-Id",
                format!("{category} <{category}.{}>", self.domain()),
            ))
    }

    /// A marketing email's `List-Unsubscribe` (the link, and the mailto when configured) with
    /// one-click `List-Unsubscribe-Post` (RFC 8058).
    fn unsubscribe(&self, builder: MessageBuilder, links: &Links) -> MessageBuilder {
        let mut value = format!("<{}>", links.unsubscribe_url);
        if let Some(mailto) = &self.unsubscribe_mailto {
            value.push_str(&format!(
                ", <mailto:{mailto}?subject=unsubscribe%20{}>",
                links.token
            ));
        }
        builder
            .raw_header(header("List-Unsubscribe", value))
            .raw_header(header(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".into(),
            ))
    }
}

/// The customer's mailbox. A display name is a phrase: control characters (a CR LF that would
/// start a header) become spaces; lettre encodes the rest.
fn recipient(to_name: Option<&str>, to_email: &str) -> Result<Mailbox, BuildError> {
    let address: Address = to_email
        .parse()
        .map_err(|_| BuildError::Address("the customer's address is not valid".into()))?;
    let to_name = to_name
        .map(|n| {
            n.split(|c: char| c.is_control())
                .flat_map(str::split_whitespace)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|n| !n.is_empty());
    Ok(Mailbox::new(to_name, address))
}

/// A header written as given, through lettre's encoder.
fn header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}
