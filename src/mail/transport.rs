//! Transports: pooled async SMTP (lettre, rustls), and `file` (one `.eml` per email, the
//! embedded default and what tests read).
//!
//! lettre's timeouts cover connecting and each reply, not a whole send, so every send runs
//! under a deadline of its own; one that expires is *ambiguous*: the server may have accepted
//! the message before the answer was lost.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::Outgoing;
use crate::config::{Smtp, Tls as TlsMode};

/// How a send went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 4xx, or the connection failed before the message was handed over: retry later.
    Transient,
    /// 5xx: the address (or the message) is refused for good.
    Permanent,
    /// The deadline expired mid-send: it may or may not have been accepted.
    Ambiguous,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub failure: Failure,
    /// The SMTP reply code, when the server gave one.
    pub code: Option<u16>,
    pub message: String,
}

pub enum Transport {
    File(FileTransport),
    Smtp(Box<AsyncSmtpTransport<Tokio1Executor>>),
}

/// A transport checked and ready to open. The SMTP pool lives on a Tokio runtime, so it is
/// opened (and must be dropped) inside the runtime that sends.
pub enum Plan {
    File(FileTransport),
    Smtp(Box<AsyncSmtpTransportBuilder>),
}

impl Plan {
    /// Opens the transport; call it inside a Tokio runtime.
    pub fn open(self) -> Transport {
        match self {
            Plan::File(f) => Transport::File(f),
            Plan::Smtp(b) => Transport::Smtp(Box::new(b.build())),
        }
    }
}

impl Transport {
    /// Sends one message within `deadline`.
    pub async fn send(&self, mail: &Outgoing, deadline: Duration) -> Result<(), SendError> {
        match self {
            Transport::File(f) => f.send(mail),
            Transport::Smtp(t) => {
                match tokio::time::timeout(deadline, t.send_raw(&mail.envelope, &mail.bytes)).await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(classify(&e)),
                    Err(_) => Err(SendError {
                        failure: Failure::Ambiguous,
                        code: None,
                        message: format!(
                            "no answer within {}s: the server may have accepted it",
                            deadline.as_secs()
                        ),
                    }),
                }
            }
        }
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(u16::from);
    // A reply that timed out (lettre's per-command timeout) is retried like a 4xx: if it came
    // after DATA the message may have been accepted, and the retry carries the same
    // Message-ID; never losing the email comes first.
    let failure = if e.is_permanent() {
        Failure::Permanent
    } else {
        Failure::Transient
    };
    SendError {
        failure,
        code,
        message: e.to_string(),
    }
}

/// The pooled SMTP transport for `mail.smtp`, checked (certificates read, credentials
/// complete) but not opened.
pub fn smtp(
    cfg: &Smtp,
    password: Option<&str>,
    timeout: Duration,
) -> Result<AsyncSmtpTransportBuilder, String> {
    let tls = || -> Result<TlsParameters, String> {
        let mut params = TlsParameters::builder(cfg.host.clone());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?;
            params = params.add_root_certificate(cert);
        }
        params.build_rustls().map_err(|e| format!("mail.smtp: {e}"))
    };
    let tls = match cfg.tls {
        TlsMode::None => Tls::None,
        TlsMode::Starttls => Tls::Required(tls()?),
        TlsMode::Tls => Tls::Wrapper(tls()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(timeout))
        .pool_config(PoolConfig::new().max_size(cfg.pool_size.max(1)));
    match (&cfg.username, password) {
        (Some(user), Some(pass)) => {
            builder = builder.credentials(Credentials::new(user.clone(), pass.to_string()));
        }
        (Some(_), None) => {
            return Err("mail.smtp.username is set but AFTERCARE_SMTP_PASSWORD is not".to_string());
        }
        _ => {}
    }
    Ok(builder)
}

/// One `.eml` file per email in a directory. Named by the outbox key, so a resend after a
/// crash replaces the file instead of adding a second email.
pub struct FileTransport {
    dir: PathBuf,
}

impl FileTransport {
    pub fn new(dir: PathBuf) -> std::io::Result<FileTransport> {
        std::fs::create_dir_all(&dir)?;
        Ok(FileTransport { dir })
    }

    fn send(&self, mail: &Outgoing) -> Result<(), SendError> {
        let file: String = mail
            .key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let path = self.dir.join(format!("{file}.eml"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&mail.bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| SendError {
            failure: Failure::Transient,
            code: None,
            message: format!("writing {}: {e}", path.display()),
        })
    }
}
