//! SQLite: the embedded store. One file, WAL mode, full durability, one writing instance.
//!
//! `synchronous=FULL` makes every commit reach the disk before it returns, so an offset stored
//! after a commit never points past an event whose effects could still be lost in a crash. The
//! engine's handle instead leaves the sync to `run` ([`Store::defer_sync`]), which syncs the
//! log on a thread of its own before it stores the offsets.
//!
//! Split by responsibility: this module opens the file and answers the store's queries;
//! `schema` holds the tables and their migrations, `wal` keeps the write-ahead log in
//! hand, `tx` is the engine's transaction.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    DeadLetter, DeadLetterQuery, Delivery, JourneyCount, OutboxRow, Published, Result, Store,
    StoreFigures, StoredCustomer, StoredDeadLetter, TimelineRow, Tx, VersionRecord, from_micros,
    micros,
};

mod schema;
mod tx;
mod wal;

use self::schema::*;
use self::tx::*;
use self::wal::*;

/// A stored sequence version, with the templates kept with it.
fn version_row(conn: &Connection, name: &str, version: &str) -> Result<Option<VersionRecord>> {
    let row = conn
        .prepare_cached(
            "SELECT path, source, templates FROM sequence_versions WHERE name = ?1 AND version = ?2",
        )?
        .query_row([name, version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))
        })
        .optional()?;
    row.map(|(path, source, templates)| {
        Ok(VersionRecord {
            name: name.to_string(),
            version: version.to_string(),
            path,
            source,
            templates: super::record::templates_of(&templates)?,
        })
    })
    .transpose()
}

/// Page cache of the engine's connection, which reads and writes every customer.
pub const CACHE_KIB: i64 = 16 * 1024;

/// Page cache of the other connections (outbox, HTTP, commands): they touch a few rows each.
pub const SMALL_CACHE_KIB: i64 = 2 * 1024;

/// How large the write-ahead log may grow before the engine makes it start over. 16 MiB made
/// every batch restart it and cost ingest a seventh (37.7k against 43.9k events/s in the bench).
pub const WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

pub struct SqliteStore {
    conn: Connection,
    _checkpointer: Option<Checkpointer>,
    /// Keeps the write-ahead log bounded (the engine's store only).
    bound: Option<LogBound>,
}

/// The engine's lock wait: another writer (the outbox worker) holds SQLite's lock briefly.
const BUSY_WAIT: Duration = Duration::from_secs(5);

impl SqliteStore {
    /// Opens (creating) the database file and migrates it, with the engine's page cache.
    pub fn open(path: &str) -> Result<SqliteStore> {
        SqliteStore::open_with_cache(path, CACHE_KIB)
    }

    /// As [`SqliteStore::open`], with a page cache of `cache_kib` KiB. Only a store with the
    /// engine's cache checkpoints: the small ones live beside one that does.
    pub fn open_with_cache(path: &str, cache_kib: i64) -> Result<SqliteStore> {
        SqliteStore::open_with(path, cache_kib, WAL_LIMIT_BYTES)
    }

    /// As [`SqliteStore::open_with_cache`], with the write-ahead log kept near `wal_limit`
    /// bytes (tests use a small bound to see it hold).
    pub fn open_with(path: &str, cache_kib: i64, wal_limit: i64) -> Result<SqliteStore> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // When the log starts over, the first commit cuts the file back to this size.
        conn.pragma_update(None, "journal_size_limit", wal_limit)?;
        // Hot customers and index pages stay in memory (a batch touches thousands of pages);
        // the cache is bounded, so memory does not grow with the number of customers.
        conn.pragma_update(None, "cache_size", -cache_kib)?;
        // The engine's temporary tables are small and hot; the other connections run the
        // scans (figures, `status`, `plan`), whose sorts over the whole timeline must spill to
        // disk rather than grow the process by the size of the store.
        let temp_store = if cache_kib < CACHE_KIB {
            "FILE"
        } else {
            "MEMORY"
        };
        conn.pragma_update(None, "temp_store", temp_store)?;
        schema::migrate(&mut conn)?;
        // Checkpoints (copying the WAL back into the database file) run on a thread of their
        // own instead of inside whichever commit crosses the threshold: a quarter of a batch's
        // time otherwise.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        if cache_kib < CACHE_KIB {
            conn.busy_handler(Some(retry_every_millisecond))?;
            return Ok(SqliteStore {
                conn,
                _checkpointer: None,
                bound: None,
            });
        }
        let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let frames = Arc::new(AtomicI64::new(0));
        let seen = frames.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                seen.store(pages.into(), Ordering::Relaxed);
                Ok(())
            },
        ))?;
        let checkpointing = Arc::new(Mutex::new(()));
        Ok(SqliteStore {
            conn,
            _checkpointer: Some(Checkpointer::start(path, checkpointing.clone())?),
            bound: Some(LogBound {
                frames,
                // A frame is a page and its 24-byte header.
                limit: wal_limit / (page + 24),
                checkpointing,
            }),
        })
    }

    /// A write transaction. IMMEDIATE: the write lock is taken now, not at the first write, so
    /// a busy database is waited for here rather than failing halfway through. The engine
    /// first lets other writers of this process go (see `OTHERS_WRITING`); they hold a `Turn`.
    fn write(&mut self) -> Result<(Transaction<'_>, Option<Turn>)> {
        let turn = if self.bound.is_some() {
            let deadline = std::time::Instant::now() + YIELD_AT_MOST;
            while OTHERS_WRITING.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        } else {
            Some(Turn::take())
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok((tx, turn))
    }

    /// Starts the log over if the last commit left it past its limit (see [`LogBound`]).
    fn bound_log(&self) -> Result<()> {
        let Some(bound) = &self.bound else {
            return Ok(());
        };
        if bound.frames.load(Ordering::Relaxed) < bound.limit {
            return Ok(());
        }
        let _one = bound
            .checkpointing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.conn.busy_timeout(RESTART_WAIT)?;
        let outcome = checkpoint(&self.conn, "RESTART");
        self.conn.busy_timeout(BUSY_WAIT)?;
        // Busy (a reader stayed longer than the wait) is no error: the next batch tries again.
        outcome.map(|_busy| ()).map_err(Into::into)
    }
}

impl Store for SqliteStore {
    /// Commits stop syncing (`synchronous=NORMAL`: in WAL mode a commit is then written, not
    /// synced); the syncer syncs the write-ahead log, where every commit not yet checkpointed
    /// is (a checkpoint syncs the log before copying it and the database after).
    fn defer_sync(&mut self) -> Result<Option<super::Syncer>> {
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let wal = std::path::PathBuf::from(format!("{path}-wal"));
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Some(Box::new(move || match std::fs::File::open(&wal) {
            Ok(log) => log.sync_data(),
            // No log: the last connection closed it, checkpointed and synced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })))
    }

    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        self.bound_log()?;
        let (tx, turn) = self.write()?;
        Ok(Box::new(SqliteTx { tx, _turn: turn }))
    }

    fn save_versions(&mut self, versions: &[VersionRecord]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                &format!("INSERT OR IGNORE INTO sequence_versions (name, version, path, source, first_seen, templates)
                 VALUES (?1, ?2, ?3, ?4, {NOW_US}, ?5)"),
            )?;
            for v in versions {
                let templates = super::record::templates_text(&v.templates);
                st.execute(params![v.name, v.version, v.path, v.source, templates])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>> {
        version_row(&self.conn, name, version)
    }

    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>> {
        let due: Option<i64> = self.conn.query_row(
            "SELECT MIN(next_due) FROM customers WHERE next_due IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(due.map(from_micros))
    }

    fn load(&mut self, id: &str) -> Result<Option<StoredCustomer>> {
        load_whole(&self.conn, id, false)
    }

    fn coupon_given(&mut self, code: &str) -> Result<Option<(String, TimelineRow)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT customer, at, journey, sequence, version, step, action, reason, subject FROM timeline
             WHERE action IN ('email', 'webhook') AND (reason LIKE ?1 ESCAPE '\\' OR reason LIKE ?1 || ';%' ESCAPE '\\')
             ORDER BY seq LIMIT 1",
        )?;
        let row = st
            .query_row([super::coupon_pattern(code)], |r| {
                Ok((r.get(0)?, timeline_row(r, 1)?))
            })
            .optional()?;
        Ok(row)
    }

    fn customers_after(&mut self, after: &str, limit: usize) -> Result<Vec<StoredCustomer>> {
        let ids = {
            let mut st = self.conn.prepare_cached(
                "SELECT id FROM customers WHERE id > ?1 AND state <> '' ORDER BY id LIMIT ?2",
            )?;
            st.query_map(params![after, limit as i64], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(load_whole(&self.conn, &id, false)?);
        }
        Ok(out)
    }

    fn customer(&mut self, id: &str) -> Result<Option<(StoredCustomer, Vec<TimelineRow>)>> {
        let Some(c) = load_whole(&self.conn, id, true)? else {
            return Ok(None);
        };
        let mut st = self.conn.prepare_cached(
            "SELECT at, journey, sequence, version, step, action, reason, subject FROM timeline WHERE customer = ?1 ORDER BY seq",
        )?;
        let rows = st
            .query_map([id], |r| timeline_row(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some((c, rows)))
    }

    fn journey_counts(&mut self) -> Result<Vec<JourneyCount>> {
        let mut st = self.conn.prepare_cached(
            "SELECT j ->> 'sequence', j ->> 'version', j ->> 'step_id', j ->> 'status', COUNT(*)
             FROM (SELECT j.value AS j FROM customers, json_each(customers.state, '$.journeys') AS j
                   UNION ALL SELECT data FROM journey_rows)
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(JourneyCount {
                    sequence: r.get(0)?,
                    version: r.get(1)?,
                    step: r.get(2)?,
                    status: r.get(3)?,
                    count: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn claim_emails(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxRow>> {
        let (tx, _turn) = self.write()?;
        let rows = {
            let mut st = tx.prepare_cached(
                "UPDATE outbox SET claimed_until = ?3, claim = claim + 1 WHERE key IN (
                     SELECT key FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1
                         AND (claimed_until IS NULL OR claimed_until <= ?1)
                     ORDER BY next_attempt_at LIMIT ?2)
                 RETURNING key, customer, journey, sequence, version, step, order_id, template, category,
                     transactional, created_at, attempts, next_attempt_at, claim, claimed_until, trace, endpoint",
            )?;
            let mut rows = st
                .query_map(
                    params![micros(now), limit as i64, micros(now + lease)],
                    |r| {
                        Ok((
                            r.get::<_, i64>(12)?,
                            OutboxRow {
                                key: r.get(0)?,
                                customer: r.get(1)?,
                                journey: r.get(2)?,
                                sequence: r.get(3)?,
                                version: r.get(4)?,
                                step: r.get(5)?,
                                order_id: r.get(6)?,
                                template: r.get(7)?,
                                category: r.get(8)?,
                                transactional: r.get::<_, i64>(9)? != 0,
                                created_at: from_micros(r.get(10)?),
                                attempts: r.get::<_, i64>(11)? as u32,
                                claim: r.get(13)?,
                                claimed_until: from_micros(r.get(14)?),
                                trace: r.get(15)?,
                                endpoint: r.get(16)?,
                            },
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.sort_by_key(|(due, _)| *due);
            rows.into_iter().map(|(_, r)| r).collect()
        };
        tx.commit()?;
        Ok(rows)
    }

    /// One instance per SQLite file: a claim left by a crash was this instance's, and is
    /// taken back at once instead of waiting for its lease to expire.
    fn release_stale_claims(&mut self) -> Result<u64> {
        let n = self.conn.execute(
            "UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
            [],
        )?;
        Ok(n as u64)
    }

    fn finish_emails(
        &mut self,
        now: DateTime<Utc>,
        done: &[(OutboxRow, Delivery)],
    ) -> Result<Vec<usize>> {
        let (tx, _turn) = self.write()?;
        let mut fenced = Vec::new();
        for (i, (row, d)) in done.iter().enumerate() {
            if !finish_one(&tx, now, row, d)? {
                // The claim is no longer ours: another took it after it expired.
                fenced.push(i);
            }
        }
        tx.commit()?;
        Ok(fenced)
    }

    fn counts(&mut self) -> Result<Vec<(String, i64)>> {
        super::count_queries(
            "SELECT (SELECT COUNT(*) FROM customers, json_each(customers.state, '$.journeys'))
                 + (SELECT COUNT(*) FROM journey_rows)",
        )
        .iter()
        .map(|(name, sql)| {
            Ok((
                name.to_string(),
                self.conn.query_row(sql, [], |r| r.get(0))?,
            ))
        })
        .collect()
    }

    fn figures(&mut self, now: DateTime<Utc>, nps_since: DateTime<Utc>) -> Result<StoreFigures> {
        let journeys = self.journey_counts()?;
        let c = &self.conn;
        Ok(StoreFigures {
            decisions: all(c, super::FIGURE_DECISIONS, [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?,
            emails: all(c, super::FIGURE_EMAILS, [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?,
            feedback: all(
                c,
                "SELECT reason, COUNT(*) FROM timeline
                 WHERE journey = '-' AND action = 'feedback' AND at >= ?1 GROUP BY 1",
                [micros(nps_since)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
            customers: c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(json_extract(state, '$.profile.orders_count') >= 2), 0)
                 FROM customers WHERE state <> ''",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
            entered: all(
                c,
                "SELECT t.sequence, COUNT(*),
                        COALESCE(SUM(json_extract(c.state, '$.profile.orders_count') >= 2), 0)
                 FROM (SELECT DISTINCT customer, sequence FROM timeline WHERE action = 'enter') t
                 JOIN customers c ON c.id = t.customer AND c.state <> ''
                 GROUP BY 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?,
            journeys,
            outbox_pending: c.query_row(super::FIGURE_PENDING, [], |r| r.get(0))?,
            dead_letters: all(c, super::FIGURE_DEAD_LETTERS, [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?,
            due_backlog: c.query_row(
                "SELECT COUNT(*) FROM customers WHERE next_due IS NOT NULL AND next_due <= ?1",
                [micros(now)],
                |r| r.get(0),
            )?,
            experiments: self.experiment_states()?,
        })
    }

    fn experiment_states(&mut self) -> Result<Vec<super::ExperimentState>> {
        all(&self.conn, super::FIGURE_EXPERIMENTS_SQLITE, [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    fn claim_dead_letters(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<StoredDeadLetter>> {
        let (tx, _turn) = self.write()?;
        let mut rows = {
            let mut st = tx.prepare_cached(&format!(
                "UPDATE dead_letters SET claimed_until = ?2 WHERE id IN (
                     SELECT id FROM dead_letters WHERE published_at IS NULL AND refused = 0
                         AND (claimed_until IS NULL OR claimed_until <= ?1) ORDER BY id LIMIT ?3)
                 RETURNING {DEAD_LETTER_COLUMNS}"
            ))?;
            st.query_map(
                params![micros(now), micros(now + lease), limit as i64],
                dead_letter_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        rows.sort_by_key(|d| d.id);
        Ok(rows)
    }

    fn finish_dead_letters(&mut self, now: DateTime<Utc>, done: &[(i64, Published)]) -> Result<()> {
        let (tx, _turn) = self.write()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE dead_letters SET published_at = ?2, truncated = ?3, refused = ?4,
                     last_error = ?5, attempts = attempts + 1, claimed_until = NULL WHERE id = ?1",
            )?;
            for (id, outcome) in done {
                let (published, truncated, refused, error) = super::dead::outcome_columns(outcome);
                st.execute(params![
                    id,
                    published.then(|| micros(now)),
                    truncated,
                    refused,
                    error
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn dead_letters(&mut self, query: &DeadLetterQuery) -> Result<Vec<StoredDeadLetter>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
             WHERE at >= ?1 AND (?2 IS NULL OR instr(reason, ?2) > 0 OR instr(class, ?2) > 0)
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let since = query.since.map_or(i64::MIN, micros);
        let limit = if query.limit == 0 {
            -1
        } else {
            query.limit as i64
        };
        let rows = st
            .query_map(params![since, query.reason, limit], dead_letter_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn dead_letter(&mut self, id: i64) -> Result<Option<StoredDeadLetter>> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?1"
            ))?
            .query_row([id], dead_letter_row)
            .optional()?;
        Ok(row)
    }

    fn mark_replayed(&mut self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        let (tx, _turn) = self.write()?;
        {
            let mut st =
                tx.prepare_cached("UPDATE dead_letters SET replayed_at = ?2 WHERE id = ?1")?;
            for id in ids {
                st.execute(params![id, micros(now)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn prune_processed(&mut self, before: DateTime<Utc>) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM processed_events WHERE at < ?1",
            [micros(before)],
        )?;
        Ok(n as u64)
    }

    fn is_erased(&mut self, hash: &str) -> Result<bool> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM erased WHERE address = ?1")?
            .exists([hash])?;
        Ok(found)
    }

    fn prune_timeline(&mut self, before: DateTime<Utc>) -> Result<u64> {
        let (tx, _turn) = self.write()?;
        let n = tx.execute(
            "DELETE FROM timeline WHERE recorded_at < ?1 OR (recorded_at IS NULL AND at < ?1)",
            [micros(before)],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }
}

/// The columns [`dead_letter_row`] reads, in its order.
const DEAD_LETTER_COLUMNS: &str = "id, at, source_topic, source_partition, source_offset, key,
    value, headers, reason, class, published_at, truncated, refused, attempts, last_error,
    replayed_at";

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDeadLetter> {
    Ok(StoredDeadLetter {
        id: r.get(0)?,
        at: from_micros(r.get(1)?),
        letter: DeadLetter {
            topic: r.get(2)?,
            partition: r.get(3)?,
            offset: r.get(4)?,
            key: r.get(5)?,
            value: r.get(6)?,
            headers: DeadLetter::parse_headers(&r.get::<_, String>(7)?),
            reason: r.get(8)?,
            class: r.get(9)?,
        },
        published_at: r.get::<_, Option<i64>>(10)?.map(from_micros),
        truncated: r.get::<_, i64>(11)? != 0,
        refused: r.get::<_, i64>(12)? != 0,
        attempts: r.get::<_, i64>(13)? as u32,
        last_error: r.get(14)?,
        replayed_at: r.get::<_, Option<i64>>(15)?.map(from_micros),
    })
}

/// Every row `sql` returns with `params`, each as `f` reads it.
fn all<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    Ok(c.prepare_cached(sql)?
        .query_map(params, f)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Records one outcome with its timeline line, and the bounce it may be; false if the row's
/// claim is no longer the one given (nothing is written then).
fn finish_one(
    tx: &rusqlite::Transaction<'_>,
    now: DateTime<Utc>,
    row: &OutboxRow,
    d: &Delivery,
) -> Result<bool> {
    let retry_at = d.retry_at().map(micros);
    let sent_at = d.went_out().then(|| micros(now));
    let updated = tx
        .prepare_cached(
            "UPDATE outbox SET status = ?2, sent_at = ?3, message_id = COALESCE(?4, message_id),
                 last_error = ?5, attempts = attempts + 1, claimed_until = NULL,
                 next_attempt_at = COALESCE(?6, next_attempt_at)
             WHERE key = ?1 AND claim = ?7",
        )?
        .execute(params![
            row.key,
            d.status(),
            sent_at,
            d.message_id(),
            d.error(),
            retry_at,
            row.claim
        ])?;
    if updated == 0 {
        return Ok(false);
    }
    if let Some((action, reason)) = d.timeline() {
        tx.prepare_cached(&format!(
            "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, {NOW_US})"
        ))?
        .execute(params![
            row.customer,
            micros(now),
            row.journey,
            row.sequence,
            row.version,
            row.step,
            action,
            reason
        ])?;
    }
    if let Delivery::Bounced { address, .. } = d
        && let Some(c) = load_one(tx, &row.customer)?
        && let Some(state) = super::record::mark_bounced(&c, address)?
    {
        tx.prepare_cached(
            "UPDATE customers SET state = ?2, updated_at = ?3, rev = 0 WHERE id = ?1",
        )?
        .execute(params![row.customer, state, micros(now)])?;
    }
    Ok(true)
}

/// The one-writer lock of a SQLite file: an exclusive `flock` on `PATH.lock` beside it, held
/// by `aftercare run` for as long as it runs, the file holding its PID. One instance per file
/// is what lets a starting instance take back the claims of a crashed one at once
/// ([`Store::release_stale_claims`]); a second `run` would otherwise take back claims the first
/// is still sending, and send them again. Read-only commands take no lock. The lock goes with
/// the process, whatever ends it (the kernel drops it), so a crash never leaves it behind.
pub struct WriterLock {
    _file: std::fs::File,
}

impl WriterLock {
    pub fn take(path: &str) -> Result<WriterLock> {
        use std::io::{Read, Seek, Write};
        // The file's real name: a symlink or another spelling of the path takes the same lock.
        let path = std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.to_string());
        let path = path.as_str();
        let lock_path = format!("{path}.lock");
        let failed = |what: &str, e: std::io::Error| {
            super::StoreError::Config(format!("{what} the writer lock {lock_path}: {e}"))
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| failed("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "a process that has not written its PID yet".to_string(),
                };
                return Err(super::StoreError::Config(format!(
                    "{path} is in use by another `aftercare run` ({holder}, holding {lock_path}): \
                     one instance per SQLite file; for several instances use PostgreSQL"
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed("taking", e)),
        }
        file.set_len(0).map_err(|e| failed("writing", e))?;
        file.rewind().map_err(|e| failed("writing", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| failed("writing", e))?;
        Ok(WriterLock { _file: file })
    }
}

/// A timeline line from the columns at, journey, sequence, version, step, action, reason and
/// subject, starting at column `from`.
fn timeline_row(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<TimelineRow> {
    Ok(TimelineRow {
        at: from_micros(r.get(from)?),
        journey: r.get(from + 1)?,
        sequence: r.get(from + 2)?,
        version: r.get(from + 3)?,
        step: r.get(from + 4)?,
        action: r.get(from + 5)?,
        reason: r.get(from + 6)?,
        subject: r.get(from + 7)?,
    })
}
