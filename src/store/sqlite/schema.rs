//! The SQLite schema: the tables of a new file, and the steps that bring an older file to it.

use rusqlite::{Connection, Transaction, params};

use crate::store::Result;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS processed_events (
    source TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_events_at ON processed_events (at);
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, next_due INTEGER, updated_at INTEGER NOT NULL,
    rev INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS customers_due ON customers (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS journey_rows (
    customer TEXT NOT NULL, n INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (customer, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS order_rows (
    customer TEXT NOT NULL, n INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (customer, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timeline (
    seq INTEGER PRIMARY KEY, customer TEXT NOT NULL, at INTEGER NOT NULL, journey TEXT NOT NULL,
    sequence TEXT NOT NULL, version TEXT NOT NULL, step TEXT, action TEXT NOT NULL,
    reason TEXT NOT NULL, subject TEXT, recorded_at INTEGER);
CREATE INDEX IF NOT EXISTS timeline_customer ON timeline (customer, seq);
CREATE INDEX IF NOT EXISTS timeline_recorded ON timeline (recorded_at);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, customer TEXT NOT NULL, journey TEXT NOT NULL, sequence TEXT NOT NULL,
    version TEXT NOT NULL, step TEXT NOT NULL, order_id TEXT, template TEXT NOT NULL,
    category TEXT NOT NULL, transactional INTEGER NOT NULL, status TEXT NOT NULL,
    created_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER, message_id TEXT, last_error TEXT, claimed_until INTEGER,
    claim INTEGER NOT NULL DEFAULT 0, trace TEXT, endpoint TEXT);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_customer ON outbox (customer);
CREATE TABLE IF NOT EXISTS sequence_versions (
    name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
    first_seen INTEGER NOT NULL, templates TEXT NOT NULL DEFAULT '', PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS erased (
    address TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL, source_offset INTEGER NOT NULL, digest TEXT NOT NULL,
    key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL, reason TEXT NOT NULL, class TEXT NOT NULL,
    published_at INTEGER, truncated INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, claimed_until INTEGER, replayed_at INTEGER,
    UNIQUE (source_topic, source_partition, source_offset, digest));
CREATE INDEX IF NOT EXISTS dead_letters_pending ON dead_letters (id)
    WHERE published_at IS NULL AND refused = 0;
";

/// The database's clock in microseconds since the epoch, for the columns that say when a row
/// was written (the service's own time comes from its [`crate::clock::Clock`]).
pub(super) const NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";

/// Bumped when `SCHEMA` changes in a way `CREATE ... IF NOT EXISTS` cannot express; each
/// version's step from the one before is in `MIGRATIONS`.
pub(super) const SCHEMA_VERSION: i64 = 9;

/// (version reached, statements): run in order from the database's version, each step in a
/// transaction of its own.
pub(super) const MIGRATIONS: [(i64, &str); 8] = [
    (2, "ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;"),
    // Customers (a state document of a kilobyte or more) and emails become rowid tables: a
    // WITHOUT ROWID b-tree keeps whole rows in its pages, a few per page, so nearly every
    // insert split a page and the engine's store writes took 1.9 times as long (the ingest
    // bench's store floor: 31,322 against 59,709 events/s).
    (
        3,
        "CREATE TABLE customers_v3 (
             id TEXT PRIMARY KEY, state TEXT NOT NULL, next_due INTEGER, updated_at INTEGER NOT NULL);
         INSERT INTO customers_v3 (id, state, next_due, updated_at)
             SELECT id, state, next_due, updated_at FROM customers;
         DROP TABLE customers;
         ALTER TABLE customers_v3 RENAME TO customers;
         CREATE INDEX customers_due ON customers (next_due) WHERE next_due IS NOT NULL;
         CREATE TABLE outbox_v3 (
             key TEXT PRIMARY KEY, customer TEXT NOT NULL, journey TEXT NOT NULL, sequence TEXT NOT NULL,
             version TEXT NOT NULL, step TEXT NOT NULL, order_id TEXT, template TEXT NOT NULL,
             category TEXT NOT NULL, transactional INTEGER NOT NULL, status TEXT NOT NULL,
             created_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
             sent_at INTEGER, message_id TEXT, last_error TEXT, claimed_until INTEGER);
         INSERT INTO outbox_v3 SELECT key, customer, journey, sequence, version, step, order_id,
             template, category, transactional, status, created_at, next_attempt_at, attempts,
             sent_at, message_id, last_error, claimed_until FROM outbox;
         DROP TABLE outbox;
         ALTER TABLE outbox_v3 RENAME TO outbox;
         CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';",
    ),
    // Dead letters are kept in the store, written with the progress past them (SPEC §7).
    (
        4,
        "CREATE TABLE IF NOT EXISTS dead_letters (
             id INTEGER PRIMARY KEY, at INTEGER NOT NULL, source_topic TEXT NOT NULL,
             source_partition INTEGER NOT NULL, source_offset INTEGER NOT NULL, digest TEXT NOT NULL,
             key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL, reason TEXT NOT NULL, class TEXT NOT NULL,
             published_at INTEGER, truncated INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
             attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, claimed_until INTEGER, replayed_at INTEGER,
             UNIQUE (source_topic, source_partition, source_offset, digest));
         CREATE INDEX IF NOT EXISTS dead_letters_pending ON dead_letters (id)
             WHERE published_at IS NULL AND refused = 0;",
    ),
    // Each claim of an email carries a fencing token: an outcome is recorded only by the
    // claim that is still current.
    (
        5,
        "ALTER TABLE outbox ADD COLUMN claim INTEGER NOT NULL DEFAULT 0;",
    ),
    // A version keeps the templates it renders; timeline lines say when they were written
    // (retention counts from then: a replay of 1997 is not old news); erased customers leave
    // a keyed hash of their address.
    (
        6,
        "ALTER TABLE sequence_versions ADD COLUMN templates TEXT NOT NULL DEFAULT '';
         ALTER TABLE timeline ADD COLUMN recorded_at INTEGER;
         UPDATE timeline SET recorded_at = MIN(at, CAST(strftime('%s', 'now') AS INTEGER) * 1000000);
         CREATE INDEX IF NOT EXISTS timeline_recorded ON timeline (recorded_at);
         CREATE INDEX IF NOT EXISTS outbox_customer ON outbox (customer);
         CREATE TABLE IF NOT EXISTS erased (
             address TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;",
    ),
    // A customer with many journeys or orders keeps them as rows of their own, and every
    // write gives the customer row a new revision (see `record`). The `journeys` table of
    // stores made before journeys moved into the customer's document (schema 1) was never
    // dropped: stale copies nothing reads, and an erasure would not reach them.
    (
        7,
        "DROP TABLE IF EXISTS journeys;
         ALTER TABLE customers ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE IF NOT EXISTS journey_rows (
             customer TEXT NOT NULL, n INTEGER NOT NULL, data TEXT NOT NULL,
             PRIMARY KEY (customer, n)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS order_rows (
             customer TEXT NOT NULL, n INTEGER NOT NULL, data TEXT NOT NULL,
             PRIMARY KEY (customer, n)) WITHOUT ROWID;",
    ),
    // An email keeps the W3C trace context of the event that queued it, so its send span
    // continues that event's trace.
    (8, "ALTER TABLE outbox ADD COLUMN trace TEXT;"),
    // Webhook posts go through the outbox as emails do, to their endpoint (SPEC §9).
    (9, "ALTER TABLE outbox ADD COLUMN endpoint TEXT;"),
];

/// The version whose migration also rewrites amounts stored as JSON numbers (floats) as
/// decimal strings.
pub(super) const AMOUNTS_VERSION: i64 = 4;

/// Every customer document whose amounts are still floats, rewritten with decimal strings.
pub(super) fn rewrite_amounts(tx: &Transaction<'_>) -> Result<()> {
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT rowid, state FROM customers WHERE state <> ''")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE customers SET state = ?2 WHERE rowid = ?1")?;
    for (rowid, state) in rows {
        if let Some(state) = crate::store::record::amounts_as_decimals(&state) {
            update.execute(params![rowid, state])?;
        }
    }
    Ok(())
}

/// Brings the file to [`SCHEMA_VERSION`] (a new file straight to it, an older one step by
/// step); refuses a file a newer build migrated.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    // A current schema is only read: opening a store beside a running engine (the outbox
    // worker's, a command's) must not queue for the write lock.
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(crate::store::StoreError::Config(
            crate::store::newer_schema(version, SCHEMA_VERSION),
        ));
    }
    if version == 0 {
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    } else {
        for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
            // Another process may be opening the same file: the step runs once, whole.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if now < *to {
                tx.execute_batch(sql)?;
                if *to == AMOUNTS_VERSION {
                    rewrite_amounts(&tx)?;
                }
                tx.pragma_update(None, "user_version", to)?;
            }
            tx.commit()?;
        }
    }
    Ok(())
}
