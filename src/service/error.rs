//! Why the service, or one of its workers, could not start.

use rdkafka::error::KafkaError;

use crate::sequence::LoadError;
use crate::store::StoreError;

/// A start that failed, with what it was doing. Each kind is printed as one line; none wraps
/// another as its `source`, so a caller printing the chain prints it once.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot work, with its key (`config error: mail.dkim.key_file …`).
    #[error("config error: {0}")]
    Config(String),
    /// The sequences folder has errors (each logged with its position).
    #[error("{dir} has {count} error(s); run `aftercare validate`")]
    Sequences { dir: String, count: usize },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{what}: {error}")]
    Store {
        what: &'static str,
        error: StoreError,
    },
    #[error("{what}: {error}")]
    Kafka {
        what: &'static str,
        error: KafkaError,
    },
    /// A thread, runtime or socket the operating system refused.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// The log subscriber or the trace exporter.
    #[error("logs and traces: {0}")]
    Telemetry(String),
}

impl StartError {
    /// Every problem of a config's second stage, with its key.
    pub(crate) fn settings(problems: &crate::config::Problems) -> StartError {
        let lines: Vec<String> = problems.iter().map(|(k, m)| format!("{k}: {m}")).collect();
        StartError::Config(lines.join("; "))
    }

    pub(crate) fn store(what: &'static str) -> impl FnOnce(StoreError) -> StartError {
        move |error| StartError::Store { what, error }
    }

    pub(crate) fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> StartError {
        move |error| StartError::Kafka { what, error }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        move |error| StartError::Io {
            what: what.into(),
            error,
        }
    }
}

/// The store opened without a context names what failed: a store error as a start error.
impl From<StoreError> for StartError {
    fn from(error: StoreError) -> StartError {
        StartError::Store {
            what: "store",
            error,
        }
    }
}

pub type StartResult<T> = std::result::Result<T, StartError>;
