//! Transports: async SMTP with reused connections (lettre's client, rustls), and `file` (one `.eml` per email, the
//! embedded default and what tests read).
//!
//! lettre's timeouts cover connecting and each reply, not a whole send, so every send runs
//! under a deadline of its own; one that expires is *ambiguous*: the server may have accepted
//! the message before the answer was lost.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};

use super::Outgoing;
use crate::config::{Smtp, Tls as TlsMode};

/// How a send went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 4xx, a connection error, or a refusal that is not about the recipient (authentication,
    /// the sender, TLS): retry later.
    Transient,
    /// 5xx to the recipient (RCPT): the address is refused for good.
    Permanent,
    /// 5xx to the message itself (after DATA: content or policy): this email is refused, the
    /// address is not at fault.
    Refused,
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
    Smtp(SmtpPool),
}

/// A transport checked and ready to open. SMTP connections live on a Tokio runtime, so they
/// are opened inside the runtime that sends.
pub enum Plan {
    File(FileTransport),
    Smtp(SmtpPool),
}

impl Plan {
    /// Opens the transport; call it inside a Tokio runtime.
    pub fn open(self) -> Transport {
        match self {
            Plan::File(f) => Transport::File(f),
            Plan::Smtp(p) => Transport::Smtp(p),
        }
    }
}

impl Transport {
    /// Sends one message within `deadline`.
    pub async fn send(&self, mail: &Outgoing, deadline: Duration) -> Result<(), SendError> {
        match self {
            Transport::File(f) => f.send(mail),
            Transport::Smtp(pool) => match tokio::time::timeout(deadline, pool.send(mail)).await {
                Ok(result) => result,
                Err(_) => Err(SendError {
                    failure: Failure::Ambiguous,
                    code: None,
                    message: format!(
                        "no answer within {}s: the server may have accepted it",
                        deadline.as_secs()
                    ),
                }),
            },
        }
    }
}

/// A failure that is not about the recipient, whatever its code: retried.
fn not_recipient(e: &lettre::transport::smtp::Error) -> SendError {
    SendError {
        failure: Failure::Transient,
        ..classify(e)
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(u16::from);
    // A reply that timed out (the per-command timeout) is retried like a 4xx: if it came
    // after DATA the message may have been accepted, and the retry carries the same
    // Message-ID; never losing the email comes first.
    let failure = if e.is_permanent() {
        Failure::Permanent
    } else {
        Failure::Transient
    };
    // A relay's reply may quote the address (Postfix: `<carol@example.org>: Recipient address
    // rejected`); it is logged and kept on the timeline, so it never holds it in clear.
    SendError {
        failure,
        code,
        message: crate::redact::text(&e.to_string()),
    }
}

/// Connections to one relay, reused between emails.
///
/// lettre's own pool cannot set `TCP_NODELAY`, and lettre writes a message's body and its
/// closing `.` separately: with Nagle's algorithm on, the `.` waits for the relay's delayed
/// ACK, about 40 ms per email on Linux (25 emails/s per connection). Here each connection is a
/// socket opened with `TCP_NODELAY` and handed to lettre's SMTP client.
pub struct SmtpPool {
    host: String,
    port: u16,
    tls: Option<(TlsMode, TlsParameters)>,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    max_idle: usize,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, std::time::Instant)>>,
}

/// An idle connection older than this is checked with NOOP before it is used again.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

impl SmtpPool {
    /// One transaction, a stage at a time, so a 5xx is blamed on what it answered: the
    /// recipient (RCPT: the address bounced), the message (DATA: refused), or neither (MAIL,
    /// which is about the sender: the relay's or aftercare's configuration, retried).
    async fn send(&self, mail: &Outgoing) -> Result<(), SendError> {
        let mut conn = self.checkout().await?;
        let result = transaction(&mut conn, mail).await;
        match &result {
            Ok(()) => self.checkin(conn),
            // After a refusal the connection may be mid-transaction: not reused.
            Err(_) => conn.abort().await,
        }
        result
    }

    async fn checkout(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some((mut conn, since)) = idle else {
                return self.connect().await;
            };
            if since.elapsed() < CHECK_IDLE_AFTER || conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push((conn, std::time::Instant::now()));
        }
    }

    /// A connection, greeted, encrypted and authenticated. Nothing that fails here is about a
    /// recipient, so even a 5xx (a refused login) is retried, never a bounce.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut conn = match &self.tls {
            // Implicit TLS goes through lettre's own connect (no TCP_NODELAY there).
            Some((TlsMode::Tls, params)) => AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                Some(params.clone()),
                None,
            )
            .await
            .map_err(|e| not_recipient(&e))?,
            _ => self.greeted().await?,
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| not_recipient(&e))?;
        }
        Ok(conn)
    }

    /// A connection over plain TCP, greeted, and upgraded with STARTTLS when configured.
    async fn greeted(&self) -> Result<AsyncSmtpConnection, SendError> {
        let tcp = self.tcp().await?;
        let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
            .await
            .map_err(|e| classify(&e))?;
        if let Some((TlsMode::Starttls, params)) = &self.tls {
            conn.starttls(params.clone(), &self.hello)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(conn)
    }

    /// A TCP connection to the server, within the timeout, with TCP_NODELAY.
    async fn tcp(&self) -> Result<tokio::net::TcpStream, SendError> {
        let refused = |message: String| SendError {
            failure: Failure::Transient,
            code: None,
            message,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            refused(format!(
                "connecting to {}:{}: timed out",
                self.host, self.port
            ))
        })?
        .map_err(|e| refused(format!("connecting to {}:{}: {e}", self.host, self.port)))?;
        tcp.set_nodelay(true)
            .map_err(|e| refused(format!("TCP_NODELAY: {e}")))?;
        Ok(tcp)
    }
}

async fn transaction(conn: &mut AsyncSmtpConnection, mail: &Outgoing) -> Result<(), SendError> {
    let mut options = Vec::new();
    if !mail.bytes.is_ascii() {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(mail.envelope.from().cloned(), options))
        .await
        .map_err(|e| not_recipient(&e))?;
    for to in mail.envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new()))
            .await
            .map_err(|e| classify(&e))?;
    }
    let refused = |e: lettre::transport::smtp::Error| {
        let mut err = classify(&e);
        if err.failure == Failure::Permanent {
            err.failure = Failure::Refused;
        }
        err
    };
    conn.command(Data).await.map_err(refused)?;
    conn.message(&mail.bytes).await.map_err(refused)?;
    Ok(())
}

/// The SMTP transport for `mail.smtp`, checked (certificates read, credentials complete) but
/// not connected.
pub fn smtp(cfg: &Smtp, password: Option<&str>, timeout: Duration) -> Result<SmtpPool, String> {
    let tls = match cfg.tls {
        TlsMode::None => None,
        mode => Some((mode, tls_params(cfg)?)),
    };
    let credentials = match (&cfg.username, password) {
        (Some(user), Some(pass)) => Some(Credentials::new(user.clone(), pass.to_string())),
        (Some(_), None) => {
            return Err("mail.smtp.username is set but AFTERCARE_SMTP_PASSWORD is not".into());
        }
        _ => None,
    };
    Ok(SmtpPool {
        host: cfg.host.clone(),
        port: cfg.port,
        tls,
        credentials,
        timeout,
        hello: ClientId::default(),
        max_idle: cfg.pool_size.max(1) as usize,
        idle: std::sync::Mutex::new(Vec::new()),
    })
}

/// TLS for `mail.smtp.host`, trusting `mail.smtp.ca_file` too when given.
fn tls_params(cfg: &Smtp) -> Result<TlsParameters, String> {
    let mut params = TlsParameters::builder(cfg.host.clone());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?;
        params = params.add_root_certificate(cert);
    }
    params.build_rustls().map_err(|e| format!("mail.smtp: {e}"))
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
