//! Transports. `file` writes one `.eml` per email (the embedded default and what tests read).

use std::io::Write;
use std::path::PathBuf;

/// A failed send, classified for retries.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// Retrying later may succeed (4xx, connection trouble); otherwise the address bounced.
    pub transient: bool,
}

pub trait Transport: Send {
    /// Sends the formatted message; `name` is its idempotency key.
    fn send(&mut self, name: &str, envelope_to: &str, message: &[u8]) -> Result<(), SendError>;
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
}

impl Transport for FileTransport {
    fn send(&mut self, name: &str, _envelope_to: &str, message: &[u8]) -> Result<(), SendError> {
        let file: String = name
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
            f.write_all(message)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| SendError {
            message: format!("writing {}: {e}", path.display()),
            transient: true,
        })
    }
}
