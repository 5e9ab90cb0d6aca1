//! Where state lives.
//!
//! - [`memory`]: in-process, for `simulate` and tests;
//! - [`sqlite`]: the embedded default, one file, one instance;
//! - [`postgres`]: several instances sharing the work.
//!
//! The durable stores implement [`Store`]: one transaction at a time through [`Tx`], whose
//! operations take whole batches so PostgreSQL can do each in one round trip. The state change
//! for a batch of events (or of wake-ups), its timeline and its outbox rows are written in one
//! transaction; offsets are stored only after it commits.

pub mod dead;
pub mod memory;
pub mod postgres;
pub mod record;
pub mod sqlite;

use chrono::{DateTime, Utc};

pub use dead::{DeadLetter, DeadLetterQuery, Published, StoredDeadLetter};
pub use record::{JourneyRow, RowSet, Rows, StoredCustomer};

use crate::engine::Decision;

/// A store error, with what it means for the work that met it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {}", sqlite_text(.0))]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", postgres_text(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("stored state of customer {customer} is unreadable: {reason}")]
    Corrupt { customer: String, reason: String },
    /// A stored row other than a customer's that cannot be read back.
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Config(String),
}

/// What to do about an error: the policy every caller applies the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database, not the data: busy, restarted, unreachable, out of space, or anything not
    /// known to be caused by the data. Retried with backoff, and shown by `/readyz` meanwhile.
    Transient,
    /// Caused by what was written: a value the database refuses (a NUL in text, a number out
    /// of range, a value too large), a constraint. Retrying cannot help; the work is split until
    /// the offending input is found, which is then dead-lettered.
    Permanent,
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        let permanent = match self {
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::TooBig
                        | rusqlite::ErrorCode::ConstraintViolation
                        | rusqlite::ErrorCode::TypeMismatch
                )
            ),
            // SQLSTATE classes 22 (data exception), 23 (integrity constraint) and 54 (program
            // limit exceeded, e.g. an index row too large); connection (08), rollback (40),
            // resources (53), operator (57) and the rest are the database's.
            StoreError::Postgres(e) => e
                .as_db_error()
                .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23" | "54")),
            StoreError::Corrupt { .. } | StoreError::Unreadable(_) => true,
            StoreError::Config(_) => false,
        };
        if permanent {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        }
    }

    /// Worth retrying the same work.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// A PostgreSQL error as an operator can act on it: the SQLSTATE and the server's message
/// (`22021 invalid byte sequence for encoding "UTF8": 0x00`), or what broke the connection.
/// The server's detail is left out: it quotes the row's values. Addresses are hidden.
fn postgres_text(e: &::postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    crate::redact::text(&text)
}

/// A SQLite error with its message and extended result code (`database or disk is full (code
/// 13)`).
fn sqlite_text(e: &rusqlite::Error) -> String {
    let text = match e {
        rusqlite::Error::SqliteFailure(f, message) => {
            let m = message
                .as_deref()
                .unwrap_or_else(|| rusqlite::ffi::code_to_str(f.extended_code));
            format!("{m} (code {})", f.extended_code)
        }
        other => other.to_string(),
    };
    crate::redact::text(&text)
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A sequence file version, kept so journeys can finish on the version they started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    pub path: String,
    pub source: String,
    /// The template files its emails render, (file under `templates/`, text), by file name.
    /// Empty for a version stored before templates were kept: it renders with the current
    /// folder's.
    pub templates: Vec<(String, String)>,
}

/// An email (or a webhook post) waiting to be sent: ids only; it is rendered when sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// `journey:step`: the idempotency key, and the base of the Message-ID.
    pub key: String,
    pub customer: String,
    pub journey: String,
    pub sequence: String,
    pub version: String,
    pub step: String,
    pub order_id: Option<String>,
    /// The email's template; a webhook's body.
    pub template: String,
    /// A webhook's endpoint (`[webhooks.NAME]`): the row is posted there, not emailed.
    pub endpoint: Option<String>,
    pub category: String,
    pub transactional: bool,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    /// The fencing token of this claim: raised by every claim of the row, so an outcome is
    /// recorded only by the claim that is still current ([`Store::finish_emails`]).
    pub claim: i64,
    /// When this claim's lease ends: no send may start that could outlast it.
    pub claimed_until: DateTime<Utc>,
    /// The W3C `traceparent` of the event span that queued it, when traces are exported: the
    /// send span continues that trace.
    pub trace: Option<String>,
}

/// One line of a customer's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRow {
    pub at: DateTime<Utc>,
    pub journey: String,
    pub sequence: String,
    pub version: String,
    pub step: Option<String>,
    pub action: String,
    pub reason: String,
    pub subject: Option<String>,
}

/// A timeline line about the customer as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub customer: String,
    pub at: DateTime<Utc>,
    pub action: String,
    pub reason: String,
}

/// In-flight journeys on one sequence version and step (for `aftercare plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyCount {
    pub sequence: String,
    pub version: String,
    pub step: String,
    pub status: String,
    pub count: u64,
}

/// What the retention figures are computed from, counted by the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFigures {
    /// Journey lines of the timeline: (sequence, step or "", action, reason for `suppress`,
    /// `skip` and `exit` lines else "", count).
    pub decisions: Vec<(String, String, String, String, i64)>,
    /// Outbox rows: (sequence, step, status, count).
    pub emails: Vec<(String, String, String, i64)>,
    /// Feedback lines in the NPS window: (reason as written, e.g. `nps 9`, count).
    pub feedback: Vec<(String, i64)>,
    /// Customers known, and of them those with two or more orders.
    pub customers: (i64, i64),
    /// Per sequence: customers who entered it, and of them those with two or more orders.
    pub entered: Vec<(String, i64, i64)>,
    pub journeys: Vec<JourneyCount>,
    pub outbox_pending: i64,
    /// Dead letters: (reason class, state: `pending`, `published`, `truncated`, `refused`,
    /// count).
    pub dead_letters: Vec<(String, String, i64)>,
    /// Customers due at or before `now`.
    pub due_backlog: i64,
    /// Customers with experiment assignments or a relationship: (id, the state's
    /// `experiments`, its `profile.relationship`), as JSON text.
    pub experiments: Vec<ExperimentState>,
}

/// A customer's parts of the state the experiments' figures count.
pub type ExperimentState = (String, Option<String>, Option<String>);

/// The customers the experiments' figures count, with those parts of their state.
pub const FIGURE_EXPERIMENTS_SQLITE: &str = "SELECT id, json_extract(state, '$.experiments'),
    json_extract(state, '$.profile.relationship') FROM customers
    WHERE state LIKE '%\"experiments\"%' OR state LIKE '%\"relationship\"%'";
pub const FIGURE_EXPERIMENTS_POSTGRES: &str = "SELECT id, (state::jsonb -> 'experiments')::text,
    (state::jsonb -> 'profile' -> 'relationship')::text FROM customers
    WHERE state LIKE '%\"experiments\"%' OR state LIKE '%\"relationship\"%'";

/// The figure queries both databases share (`?1`/`$1` bound to the window's start or `now`).
pub const FIGURE_DECISIONS: &str = "SELECT sequence, COALESCE(step, ''), action,
    CASE WHEN action IN ('suppress', 'skip', 'exit') THEN reason ELSE '' END, COUNT(*)
    FROM timeline WHERE journey <> '-' GROUP BY 1, 2, 3, 4";
pub const FIGURE_EMAILS: &str =
    "SELECT sequence, step, status, COUNT(*) FROM outbox GROUP BY 1, 2, 3";
pub const FIGURE_PENDING: &str = "SELECT COUNT(*) FROM outbox WHERE status = 'pending'";
pub const FIGURE_DEAD_LETTERS: &str = "SELECT class,
    CASE WHEN refused THEN 'refused' WHEN published_at IS NULL THEN 'pending'
         WHEN truncated THEN 'truncated' ELSE 'published' END, COUNT(*)
    FROM dead_letters GROUP BY 1, 2";

/// How an attempt to send an email ended, for [`Store::finish_emails`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the transport.
    Sent { message_id: String },
    /// Not sent (dry run): recorded as it would have been sent.
    DryRun { message_id: String },
    /// Not sent this time (4xx, connection trouble, an ambiguous deadline): tried again at `at`.
    Retry { error: String, at: DateTime<Utc> },
    /// Given up, or impossible to send (a template error, no address).
    Failed { error: String },
    /// Refused for good (5xx): `address` is marked bounced.
    Bounced { error: String, address: String },
    /// Not sent: a sending rule now applies that did not when it was queued (an
    /// unsubscribe or a bounce since).
    Suppressed { reason: String },
}

impl Delivery {
    /// When a retried email is tried next.
    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Delivery::Retry { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// Whether the email went out (or, in a dry run, would have).
    pub fn went_out(&self) -> bool {
        matches!(self, Delivery::Sent { .. } | Delivery::DryRun { .. })
    }

    /// The outbox status it leaves the row in.
    pub fn status(&self) -> &'static str {
        match self {
            Delivery::Sent { .. } => "sent",
            Delivery::DryRun { .. } => "dry-run",
            Delivery::Retry { .. } => "pending",
            Delivery::Failed { .. } => "failed",
            Delivery::Bounced { .. } => "bounced",
            Delivery::Suppressed { .. } => "suppressed",
        }
    }

    pub fn message_id(&self) -> Option<&str> {
        match self {
            Delivery::Sent { message_id } | Delivery::DryRun { message_id } => Some(message_id),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Delivery::Retry { error, .. }
            | Delivery::Failed { error }
            | Delivery::Bounced { error, .. } => Some(error),
            Delivery::Suppressed { reason } => Some(reason),
            _ => None,
        }
    }

    /// The timeline line it adds: (action, reason). A dry run adds none: the `email`
    /// decision already says it all.
    pub fn timeline(&self) -> Option<(&'static str, String)> {
        match self {
            Delivery::Sent { message_id } => Some(("sent", format!("accepted as {message_id}"))),
            Delivery::DryRun { .. } => None,
            Delivery::Retry { error, at } => Some((
                "retry",
                format!("{error}; next attempt at {}", crate::time::rfc3339(*at)),
            )),
            Delivery::Failed { error } => Some(("failed", error.clone())),
            Delivery::Bounced { error, .. } => Some(("bounce", error.clone())),
            Delivery::Suppressed { reason } => Some(("suppress", reason.clone())),
        }
    }
}

/// A durable store.
pub trait Store: Send {
    /// Starts a transaction. Only one is open at a time per store handle.
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>>;

    /// Records sequence versions not yet known.
    fn save_versions(&mut self, versions: &[VersionRecord]) -> Result<()>;

    /// A stored sequence version, without locking.
    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>>;

    /// Whether `hash` ([`crate::mail::token::Signer::address_hash`]) is the address of an
    /// erased customer who has not subscribed again.
    fn is_erased(&mut self, hash: &str) -> Result<bool>;

    /// Deletes timeline lines written before `before` (`store.timeline_retention`); returns
    /// how many.
    fn prune_timeline(&mut self, before: DateTime<Utc>) -> Result<u64>;

    /// The earliest due time of any customer, to know how long the scheduler may sleep.
    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>>;

    /// A customer's stored state with its order rows, without locking: what sending an email
    /// needs (profile and orders). Journey rows are left unread: [`Store::customer`] has them.
    fn load(&mut self, id: &str) -> Result<Option<StoredCustomer>>;

    /// A customer's stored state (with all its rows) and timeline (oldest first).
    fn customer(&mut self, id: &str) -> Result<Option<(StoredCustomer, Vec<TimelineRow>)>>;

    /// Up to `limit` customers with ids after `after`, in id order, with their order rows
    /// (not their journey rows): a page of a scan of every customer, for the daily reorder
    /// intervals.
    fn customers_after(&mut self, after: &str, limit: usize) -> Result<Vec<StoredCustomer>>;

    /// The timeline line of the email or webhook that gave coupon `code`, with its customer
    /// (`aftercare coupon verify`; a scan of the timeline).
    fn coupon_given(&mut self, code: &str) -> Result<Option<(String, TimelineRow)>>;

    /// In-flight journeys grouped by sequence, version, step and status.
    fn journey_counts(&mut self) -> Result<Vec<JourneyCount>>;

    /// Claims up to `limit` emails due to be sent (pending, attempt time reached, not claimed
    /// by anyone else), oldest first, for `lease`: until then no instance claims them again.
    /// A claim that is never finished (a crash) expires, and the email is sent again.
    fn claim_emails(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxRow>>;

    /// Called once by the outbox worker as it starts: claims that can only be left over from
    /// a crash of this instance are released (SQLite, one instance per file); with several
    /// instances (PostgreSQL) nothing is released and claims expire with their lease.
    fn release_stale_claims(&mut self) -> Result<u64> {
        Ok(0)
    }

    /// Records how attempts ended, in one transaction: the outbox rows, their timeline lines,
    /// and bounced addresses on the customers' profiles. An outcome whose claim is no longer
    /// the row's current one (its lease ran out and another claim followed) is not recorded:
    /// their positions in `done` are returned.
    fn finish_emails(
        &mut self,
        now: DateTime<Utc>,
        done: &[(OutboxRow, Delivery)],
    ) -> Result<Vec<usize>>;

    /// Named totals for `aftercare status`: events, customers, journeys, emails by status,
    /// decisions by action.
    fn counts(&mut self) -> Result<Vec<(String, i64)>>;

    /// What the retention figures, journey gauges and backlogs are computed from; feedback
    /// since `nps_since`, due customers up to `now`. Scans the timeline: call it every few
    /// seconds at most.
    fn figures(&mut self, now: DateTime<Utc>, nps_since: DateTime<Utc>) -> Result<StoreFigures>;

    /// The customers the experiments' figures count (also part of [`Store::figures`]).
    fn experiment_states(&mut self) -> Result<Vec<ExperimentState>>;

    /// Forgets processed-event keys older than `before` (the dedupe window).
    fn prune_processed(&mut self, before: DateTime<Utc>) -> Result<u64>;

    /// Claims up to `limit` dead letters not yet published (nor refused for good), oldest
    /// first, for `lease`: no other instance publishes them meanwhile.
    fn claim_dead_letters(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<StoredDeadLetter>>;

    /// Records how publishing claimed dead letters ended, releasing their claims.
    fn finish_dead_letters(&mut self, now: DateTime<Utc>, done: &[(i64, Published)]) -> Result<()>;

    /// Dead letters matching `query`, newest first.
    fn dead_letters(&mut self, query: &DeadLetterQuery) -> Result<Vec<StoredDeadLetter>>;

    fn dead_letter(&mut self, id: i64) -> Result<Option<StoredDeadLetter>>;

    /// Notes that these dead letters were sent back to their topics.
    fn mark_replayed(&mut self, ids: &[i64], now: DateTime<Utc>) -> Result<()>;

    /// Makes syncing to disk the caller's job: from now on this handle's commits return once
    /// written, and the returned function makes everything committed so far durable. `run`
    /// calls it on a thread of its own before it stores offsets, so the engine's next batch
    /// runs while the disk syncs. `None`: commits are durable as they return (PostgreSQL).
    fn defer_sync(&mut self) -> Result<Option<Syncer>> {
        Ok(None)
    }
}

/// Makes what was committed durable (see [`Store::defer_sync`]).
pub type Syncer = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// One transaction. Dropping it without `commit` rolls back.
pub trait Tx {
    /// Records the event keys as processed; for each, whether it was new.
    fn first_sight(&mut self, keys: &[(&str, &str)], now: DateTime<Utc>) -> Result<Vec<bool>>;

    /// Loads these customers (locking them on PostgreSQL until commit): their documents, not
    /// their journey and order rows ([`Tx::rows`]).
    fn load(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredCustomer>>>;

    /// Reads the journey and order rows of customers loaded in this transaction, into their
    /// `rows` (each table's rows, by number).
    fn rows(&mut self, customers: &mut [StoredCustomer]) -> Result<()>;

    /// Suspends these customers' wake-ups (their states cannot be read), leaving the rest of
    /// their rows as stored.
    fn park(&mut self, ids: &[&str]) -> Result<()>;

    /// Claims up to `limit` customers due at or before `now`, skipping any another instance
    /// holds, and loads them.
    fn claim_due(&mut self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StoredCustomer>>;

    /// A stored sequence version.
    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>>;

    /// Writes customers back: state, next due time and revision, and the changes to their
    /// journey and order rows ([`RowSet`]).
    fn save(&mut self, customers: &[StoredCustomer]) -> Result<()>;

    /// Appends decisions to the timeline and queues their emails (once per journey and step).
    fn record(&mut self, decisions: &[Decision]) -> Result<()>;
    /// Keeps with emails just recorded the trace context of what queued them: (outbox key,
    /// W3C `traceparent`). An email already traced keeps its first.
    fn trace_emails(&mut self, traced: &[(String, String)]) -> Result<()>;

    /// Records messages that could not be applied (see [`dead`]); a message already
    /// recorded (same position, same bytes) is not recorded twice.
    fn dead_letter(&mut self, letters: &[DeadLetter], now: DateTime<Utc>) -> Result<()>;

    /// Removes every row about `customer`: its state (profile, orders, journeys), timeline,
    /// emails (queued or sent) and the dead letters that name it or one of `addresses`
    /// ([`DeadLetter::mentions`]); and records `erased` (keyed hashes of its addresses) so
    /// marketing never restarts to them unless the customer subscribes again. Returns the
    /// rows removed.
    fn forget(
        &mut self,
        customer: &str,
        addresses: &[String],
        erased: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// Forgets that these addresses were erased: their customer subscribed again.
    fn unerase(&mut self, hashes: &[String]) -> Result<()>;

    /// Appends lines about a customer rather than a journey (an unsubscribe, say); their
    /// journey, sequence and version are `-`.
    fn note(&mut self, notes: &[Note]) -> Result<()>;

    fn commit(self: Box<Self>) -> Result<()>;
}

/// Refusing a store a newer build migrated: this build would read its state without what the
/// newer one added (journeys kept as rows, say) and write it back the poorer.
fn newer_schema(found: i64, known: i64) -> String {
    format!(
        "the store's schema is version {found}, written by a newer aftercare; this build knows \
         versions up to {known}: run the newer build (or restore a backup from before it)"
    )
}

/// Where a customer's own rows are, as `table WHERE column` naming the customer: what an
/// erasure deletes besides the dead letters that mention them.
pub const CUSTOMER_ROWS: [&str; 5] = [
    "customers WHERE id",
    "journey_rows WHERE customer",
    "order_rows WHERE customer",
    "timeline WHERE customer",
    "outbox WHERE customer",
];

/// Opens the store named by `store.url` and runs its migrations.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(sqlite::SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PgStore::connect(url)?));
    }
    Err(StoreError::Config(format!(
        "store.url `{url}`: use sqlite://PATH or postgres://..."
    )))
}

/// The lock `run` holds on its store: for SQLite, the file's one-writer lock
/// ([`sqlite::WriterLock`]); PostgreSQL serves many instances and needs none.
pub fn lock_writer(url: &str) -> Result<Option<sqlite::WriterLock>> {
    match url.strip_prefix("sqlite://") {
        Some(path) if path != ":memory:" => sqlite::WriterLock::take(path).map(Some),
        _ => Ok(None),
    }
}

/// As [`open`], for a connection that touches a few rows at a time (the outbox worker, the
/// HTTP pages, the commands): SQLite gives it a small page cache, so memory stays flat however
/// many customers the store holds.
pub fn open_small(url: &str) -> Result<Box<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(sqlite::SqliteStore::open_with_cache(
            path,
            sqlite::SMALL_CACHE_KIB,
        )?));
    }
    open(url)
}

/// As [`open_small`], but `None` for a SQLite file that does not exist yet: for commands that
/// only read (`validate`), which must not leave an empty store behind.
pub fn open_existing(url: &str) -> Result<Option<Box<dyn Store>>> {
    match url.strip_prefix("sqlite://") {
        Some(path) if path == ":memory:" || !std::path::Path::new(path).exists() => Ok(None),
        Some(_) => open_small(url).map(Some),
        // A check run where the database is out of reach (a pull request's CI) fails in
        // seconds rather than waiting on the network.
        None if !url.contains("connect_timeout") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            open_small(&format!("{url}{sep}connect_timeout=5")).map(Some)
        }
        None => open_small(url).map(Some),
    }
}

/// Timestamps are stored as microseconds since the epoch in both databases: one column type,
/// exact, and comparable in SQL.
/// The LIKE pattern of the timeline reasons that give `code` (`…; coupon CODE`), its
/// wildcards escaped with `\`.
pub fn coupon_pattern(code: &str) -> String {
    let escaped: String = code
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("%; coupon {escaped}")
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// The queries behind [`Store::counts`]; `journeys` counts the journeys in the state
/// documents, which each database does with its own JSON functions.
pub fn count_queries(journeys: &'static str) -> [(&'static str, &'static str); 10] {
    [
        ("events processed", "SELECT COUNT(*) FROM processed_events"),
        (
            "customers",
            "SELECT COUNT(*) FROM customers WHERE state <> ''",
        ),
        ("journeys in flight", journeys),
        (
            "emails pending",
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'",
        ),
        (
            "emails sent",
            "SELECT COUNT(*) FROM outbox WHERE status = 'sent'",
        ),
        (
            "emails recorded by a dry run",
            "SELECT COUNT(*) FROM outbox WHERE status = 'dry-run'",
        ),
        (
            "emails failed",
            "SELECT COUNT(*) FROM outbox WHERE status = 'failed'",
        ),
        (
            "emails bounced",
            "SELECT COUNT(*) FROM outbox WHERE status = 'bounced'",
        ),
        (
            "emails suppressed when sending",
            "SELECT COUNT(*) FROM outbox WHERE status = 'suppressed'",
        ),
        ("decisions", "SELECT COUNT(*) FROM timeline"),
    ]
}
