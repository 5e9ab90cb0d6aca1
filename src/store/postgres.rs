//! PostgreSQL: the store for several instances.
//!
//! Every batch operation is one statement over arrays (`UNNEST`), so a batch of events costs a
//! handful of round trips whatever its size. Customers are locked (`FOR UPDATE`) for the
//! transaction that changes them; due customers are claimed with `FOR UPDATE SKIP LOCKED`, so
//! instances never wake the same customer twice and a claim lasts only as long as its
//! transaction — never across an SMTP call.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, NoTls, Transaction};

use super::{
    DeadLetter, DeadLetterQuery, Delivery, JourneyCount, Note, OutboxRow, Published, Result, Store,
    StoreFigures, StoredCustomer, StoredDeadLetter, TimelineRow, Tx, VersionRecord, from_micros,
    micros,
};
use crate::engine::Decision;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS aftercare_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS processed_events (
    source TEXT NOT NULL, id TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (source, id));
CREATE INDEX IF NOT EXISTS processed_events_at ON processed_events (at);
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, next_due BIGINT, updated_at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS customers_due ON customers (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS timeline (
    seq BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, at BIGINT NOT NULL, journey TEXT NOT NULL,
    sequence TEXT NOT NULL, version TEXT NOT NULL, step TEXT, action TEXT NOT NULL,
    reason TEXT NOT NULL, subject TEXT);
CREATE INDEX IF NOT EXISTS timeline_customer ON timeline (customer, seq);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, customer TEXT NOT NULL, journey TEXT NOT NULL, sequence TEXT NOT NULL,
    version TEXT NOT NULL, step TEXT NOT NULL, order_id TEXT, template TEXT NOT NULL,
    category TEXT NOT NULL, transactional BOOLEAN NOT NULL, status TEXT NOT NULL,
    created_at BIGINT NOT NULL, next_attempt_at BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    sent_at BIGINT, message_id TEXT, last_error TEXT);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS sequence_versions (
    name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
    first_seen BIGINT NOT NULL, PRIMARY KEY (name, version));
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_until BIGINT;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claim BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL, source_offset BIGINT NOT NULL, digest TEXT NOT NULL,
    key BYTEA, value BYTEA NOT NULL, headers TEXT NOT NULL, reason TEXT NOT NULL, class TEXT NOT NULL,
    published_at BIGINT, truncated BOOLEAN NOT NULL DEFAULT FALSE, refused BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, claimed_until BIGINT, replayed_at BIGINT,
    UNIQUE (source_topic, source_partition, source_offset, digest));
CREATE INDEX IF NOT EXISTS dead_letters_pending ON dead_letters (id)
    WHERE published_at IS NULL AND NOT refused;
ALTER TABLE sequence_versions ADD COLUMN IF NOT EXISTS templates TEXT NOT NULL DEFAULT '';
ALTER TABLE timeline ADD COLUMN IF NOT EXISTS recorded_at BIGINT;
ALTER TABLE timeline ALTER COLUMN recorded_at SET DEFAULT (extract(epoch from now()) * 1000000)::bigint;
CREATE INDEX IF NOT EXISTS timeline_recorded ON timeline (recorded_at);
CREATE INDEX IF NOT EXISTS outbox_customer ON outbox (customer);
CREATE TABLE IF NOT EXISTS erased (address TEXT PRIMARY KEY, at BIGINT NOT NULL);
ALTER TABLE customers ADD COLUMN IF NOT EXISTS rev BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS journey_rows (
    customer TEXT NOT NULL, n BIGINT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (customer, n));
CREATE TABLE IF NOT EXISTS order_rows (
    customer TEXT NOT NULL, n BIGINT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (customer, n));
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace TEXT;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS endpoint TEXT;
";

/// The version [`SCHEMA`] brings a database to; raise it with every change to `SCHEMA`.
/// Version 2: dead letters, and amounts stored as decimal strings. Version 3: each claim of
/// an email carries a fencing token (`outbox.claim`). Version 4: versions keep their
/// templates, timeline lines their time of writing (`recorded_at`, for retention), and erased
/// customers a keyed hash of their address (`erased`). Version 5: a customer with many
/// journeys or orders keeps them as rows (`journeys`, `orders`), and customer rows carry a
/// revision (`rev`). Version 6: an email keeps the trace context of the event that queued it
/// (`outbox.trace`). Version 7: webhook posts go through the outbox (`outbox.endpoint`).
const SCHEMA_VERSION: i32 = 7;

/// The database's clock in microseconds since the epoch, for the columns that say when a row
/// was written (the service's own time comes from its [`crate::clock::Clock`]).
const NOW_US: &str = "(extract(epoch from now()) * 1000000)::bigint";

/// The statements that record how sends ended ([`Store::finish_emails`]).
struct Finish {
    update: postgres::Statement,
    timeline: postgres::Statement,
}

impl Finish {
    fn prepare(tx: &mut postgres::Transaction<'_>) -> Result<Finish> {
        Ok(Finish {
            update: tx.prepare(
                "UPDATE outbox SET status = $2, sent_at = $3, message_id = COALESCE($4, message_id),
                     last_error = $5, attempts = attempts + 1, claimed_until = NULL,
                     next_attempt_at = COALESCE($6, next_attempt_at)
                 WHERE key = $1 AND claim = $7",
            )?,
            timeline: tx.prepare(&format!(
                "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, {NOW_US})"
            ))?,
        })
    }

    /// Records one outcome with its timeline line, and the bounce it may be; false if the
    /// row's claim is no longer the one given (nothing is written then).
    fn one(
        &self,
        tx: &mut postgres::Transaction<'_>,
        now: DateTime<Utc>,
        row: &OutboxRow,
        d: &Delivery,
    ) -> Result<bool> {
        let retry_at = d.retry_at().map(micros);
        let sent_at = d.went_out().then(|| micros(now));
        let error = d.error().map(text);
        let updated = tx.execute(
            &self.update,
            &[
                &row.key,
                &d.status(),
                &sent_at,
                &d.message_id(),
                &error,
                &retry_at,
                &row.claim,
            ],
        )?;
        if updated == 0 {
            return Ok(false);
        }
        if let Some((action, reason)) = d.timeline() {
            tx.execute(
                &self.timeline,
                &[
                    &row.customer,
                    &micros(now),
                    &row.journey,
                    &row.sequence,
                    &row.version,
                    &row.step,
                    &action,
                    &text(&reason),
                ],
            )?;
        }
        if let Delivery::Bounced { address, .. } = d
            && let Some(c) = load(tx, &[row.customer.as_str()], "FOR UPDATE")?
                .pop()
                .flatten()
            && let Some(state) = super::record::mark_bounced(&c, address)?
        {
            tx.execute(
                "UPDATE customers SET state = $2, updated_at = $3, rev = 0 WHERE id = $1",
                &[&row.customer, &state, &micros(now)],
            )?;
        }
        Ok(true)
    }
}

/// Serialises concurrent migrations of several instances starting at once.
const MIGRATION_LOCK: i64 = 0x6166_7465_7263_6172; // "aftercar"

pub struct PgStore {
    client: Client,
    /// To connect again when the connection was lost (a server restart, a network reset):
    /// the work that met it failed with a transient error and is retried on a new one.
    url: String,
}

impl PgStore {
    /// Connects, migrating the schema first if it is older than this build's. A current schema
    /// is left alone: `CREATE INDEX` and `ALTER TABLE` lock their tables even when there is
    /// nothing to do, and an instance (or a CLI command) starting next to running ones must not
    /// stall or deadlock their writes.
    pub fn connect(url: &str) -> Result<PgStore> {
        let mut client = Client::connect(url, NoTls)?;
        let found = schema_version(&mut client)?;
        if found > SCHEMA_VERSION {
            return Err(super::StoreError::Config(super::newer_schema(
                found.into(),
                SCHEMA_VERSION.into(),
            )));
        }
        if found < SCHEMA_VERSION {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            // Another instance may have migrated while this one waited for the lock.
            let from = schema_version(&mut tx)?;
            if from < SCHEMA_VERSION {
                if from < 5 {
                    drop_first_journeys(&mut tx)?;
                }
                tx.batch_execute(SCHEMA)?;
                if from < 2 {
                    rewrite_amounts(&mut tx)?;
                }
                if from < 4 {
                    tx.execute(
                        &format!("UPDATE timeline SET recorded_at = LEAST(at, {NOW_US}) WHERE recorded_at IS NULL"),
                        &[],
                    )?;
                }
                tx.execute("DELETE FROM aftercare_schema", &[])?;
                tx.execute(
                    "INSERT INTO aftercare_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )?;
            }
            tx.commit()?;
        }
        Ok(PgStore {
            client,
            url: url.to_string(),
        })
    }

    /// The connection, made again first if the last one was lost.
    fn c(&mut self) -> Result<&mut Client> {
        if self.client.is_closed() {
            tracing::info!("the PostgreSQL connection was lost; connecting again");
            self.client = Client::connect(&self.url, NoTls)?;
        }
        Ok(&mut self.client)
    }
}

/// The `journeys` table of stores made before journeys moved into the customer's document
/// (schema 1) was never dropped: stale copies nothing reads, and an erasure would not reach
/// them. Dropped only if it is that table (its `pos` and `step_id` columns): a table of that
/// name in a shared database may be someone else's.
fn drop_first_journeys(tx: &mut Transaction<'_>) -> Result<()> {
    tx.batch_execute(
        "DO $$ BEGIN
            IF (SELECT COUNT(*) FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'journeys'
                  AND column_name IN ('pos', 'step_id', 'cause', 'backfill')) = 4 THEN
                DROP TABLE journeys;
            END IF;
         END $$;",
    )?;
    Ok(())
}

/// Every customer document whose amounts are still floats, rewritten with decimal strings.
fn rewrite_amounts(tx: &mut Transaction<'_>) -> Result<()> {
    let rows = tx.query("SELECT id, state FROM customers WHERE state <> ''", &[])?;
    let update = tx.prepare("UPDATE customers SET state = $2 WHERE id = $1")?;
    for r in rows {
        let (id, state): (String, String) = (r.get(0), r.get(1));
        if let Some(state) = super::record::amounts_as_decimals(&state) {
            tx.execute(&update, &[&id, &state])?;
        }
    }
    Ok(())
}

/// The schema version recorded in the database; 0 for none (or one from before versions).
fn schema_version(client: &mut impl GenericClient) -> Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass('aftercare_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client.query_one(
        "SELECT COALESCE(MAX(version), 0) FROM aftercare_schema",
        &[],
    )?;
    Ok(row.get(0))
}

struct PgTx<'c> {
    tx: Transaction<'c>,
}

impl Store for PgStore {
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        Ok(Box::new(PgTx {
            tx: self.c()?.transaction()?,
        }))
    }

    fn save_versions(&mut self, versions: &[VersionRecord]) -> Result<()> {
        let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
        let vers: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
        let paths: Vec<&str> = versions.iter().map(|v| v.path.as_str()).collect();
        let sources: Vec<&str> = versions.iter().map(|v| v.source.as_str()).collect();
        let templates: Vec<String> = versions
            .iter()
            .map(|v| super::record::templates_text(&v.templates))
            .collect();
        self.c()?.execute(
            &format!("INSERT INTO sequence_versions (name, version, path, source, first_seen, templates)
             SELECT n, v, p, s, {NOW_US}, t FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(n, v, p, s, t)
             ON CONFLICT DO NOTHING"),
            &[&names, &vers, &paths, &sources, &templates],
        )?;
        Ok(())
    }

    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>> {
        version_row(self.c()?, name, version)
    }

    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>> {
        let row = self.c()?.query_one(
            "SELECT MIN(next_due) FROM customers WHERE next_due IS NOT NULL",
            &[],
        )?;
        Ok(row.get::<_, Option<i64>>(0).map(from_micros))
    }

    fn load(&mut self, id: &str) -> Result<Option<StoredCustomer>> {
        load_whole(self.c()?, id, false)
    }

    fn coupon_given(&mut self, code: &str) -> Result<Option<(String, TimelineRow)>> {
        let pattern = super::coupon_pattern(code);
        let row = self.c()?.query_opt(
            "SELECT customer, at, journey, sequence, version, step, action, reason, subject FROM timeline
             WHERE action IN ('email', 'webhook') AND (reason LIKE $1 ESCAPE '\\' OR reason LIKE $1 || ';%' ESCAPE '\\')
             ORDER BY seq LIMIT 1",
            &[&pattern],
        )?;
        Ok(row.map(|r| (r.get(0), timeline_row(&r, 1))))
    }

    fn customers_after(&mut self, after: &str, limit: usize) -> Result<Vec<StoredCustomer>> {
        let client = self.c()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let ids: Vec<String> = tx
            .query(
                "SELECT id FROM customers WHERE id > $1 AND state <> '' ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut page: Vec<StoredCustomer> =
            load(&mut tx, &ids, "")?.into_iter().flatten().collect();
        let mut with_rows: Vec<StoredCustomer> = Vec::new();
        for c in page
            .iter_mut()
            .filter(|c| super::record::has_rows(&c.state))
        {
            with_rows.push(std::mem::take(c));
        }
        read_rows(&mut tx, &mut with_rows, false)?;
        tx.commit()?;
        page.retain(|c| !c.id.is_empty());
        page.extend(with_rows);
        page.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(page)
    }

    fn customer(&mut self, id: &str) -> Result<Option<(StoredCustomer, Vec<TimelineRow>)>> {
        let Some(c) = load_whole(self.c()?, id, true)? else {
            return Ok(None);
        };
        let rows = self.c()?.query(
            "SELECT at, journey, sequence, version, step, action, reason, subject FROM timeline WHERE customer = $1 ORDER BY seq",
            &[&id],
        )?;
        let timeline = rows.iter().map(|r| timeline_row(r, 0)).collect();
        Ok(Some((c, timeline)))
    }

    fn journey_counts(&mut self) -> Result<Vec<JourneyCount>> {
        let rows = self.c()?.query(
            "SELECT j ->> 'sequence', j ->> 'version', j ->> 'step_id', j ->> 'status', COUNT(*)
             FROM (SELECT j FROM customers, jsonb_array_elements(CASE WHEN state = '' THEN '[]'::jsonb ELSE state::jsonb -> 'journeys' END) AS j
                   UNION ALL SELECT data::jsonb FROM journey_rows) AS t(j)
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| JourneyCount {
                sequence: r.get(0),
                version: r.get(1),
                step: r.get(2),
                status: r.get(3),
                count: r.get::<_, i64>(4) as u64,
            })
            .collect())
    }

    fn claim_emails(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxRow>> {
        // SKIP LOCKED: instances claiming at once take different rows; the claim itself is
        // the lease column, so no lock is held while the email is being sent.
        let rows = self.c()?.query(
            "UPDATE outbox SET claimed_until = $3, claim = claim + 1 WHERE key IN (
                 SELECT key FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1
                     AND (claimed_until IS NULL OR claimed_until <= $1)
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING key, customer, journey, sequence, version, step, order_id, template, category,
                 transactional, created_at, attempts, next_attempt_at, claim, claimed_until, trace, endpoint",
            &[&micros(now), &(limit as i64), &micros(now + lease)],
        )?;
        let mut rows: Vec<(i64, OutboxRow)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(12),
                    OutboxRow {
                        key: r.get(0),
                        customer: r.get(1),
                        journey: r.get(2),
                        sequence: r.get(3),
                        version: r.get(4),
                        step: r.get(5),
                        order_id: r.get(6),
                        template: r.get(7),
                        category: r.get(8),
                        transactional: r.get(9),
                        created_at: from_micros(r.get(10)),
                        attempts: r.get::<_, i32>(11) as u32,
                        claim: r.get(13),
                        claimed_until: from_micros(r.get(14)),
                        trace: r.get(15),
                        endpoint: r.get(16),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|(due, _)| *due);
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    fn finish_emails(
        &mut self,
        now: DateTime<Utc>,
        done: &[(OutboxRow, Delivery)],
    ) -> Result<Vec<usize>> {
        let mut tx = self.c()?.transaction()?;
        let finish = Finish::prepare(&mut tx)?;
        let mut fenced = Vec::new();
        for (i, (row, d)) in done.iter().enumerate() {
            if !finish.one(&mut tx, now, row, d)? {
                // The claim is no longer ours: another took it after it expired.
                fenced.push(i);
            }
        }
        tx.commit()?;
        Ok(fenced)
    }

    fn counts(&mut self) -> Result<Vec<(String, i64)>> {
        super::count_queries(
            "SELECT ((SELECT COALESCE(SUM(jsonb_array_length(state::jsonb -> 'journeys')), 0) FROM customers WHERE state <> '')
                 + (SELECT COUNT(*) FROM journey_rows))::bigint",
        )
        .iter()
            .map(|(name, sql)| Ok((name.to_string(), self.c()?.query_one(*sql, &[])?.get(0))))
            .collect()
    }

    fn figures(&mut self, now: DateTime<Utc>, nps_since: DateTime<Utc>) -> Result<StoreFigures> {
        let journeys = self.journey_counts()?;
        let c = self.c()?;
        let decisions = c
            .query(super::FIGURE_DECISIONS, &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        let emails = c
            .query(super::FIGURE_EMAILS, &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let feedback = c
            .query(
                "SELECT reason, COUNT(*) FROM timeline
                 WHERE journey = '-' AND action = 'feedback' AND at >= $1 GROUP BY 1",
                &[&micros(nps_since)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let row = c.query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE (state::jsonb -> 'profile' ->> 'orders_count')::int >= 2)
             FROM customers WHERE state <> ''",
            &[],
        )?;
        let customers = (row.get(0), row.get(1));
        let entered = c
            .query(
                "SELECT t.sequence, COUNT(*),
                        COUNT(*) FILTER (WHERE (c.state::jsonb -> 'profile' ->> 'orders_count')::int >= 2)
                 FROM (SELECT DISTINCT customer, sequence FROM timeline WHERE action = 'enter') t
                 JOIN customers c ON c.id = t.customer AND c.state <> ''
                 GROUP BY 1",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let outbox_pending = c.query_one(super::FIGURE_PENDING, &[])?.get(0);
        let dead_letters = c
            .query(super::FIGURE_DEAD_LETTERS, &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let due_backlog = c
            .query_one(
                "SELECT COUNT(*) FROM customers WHERE next_due IS NOT NULL AND next_due <= $1",
                &[&micros(now)],
            )?
            .get(0);
        Ok(StoreFigures {
            decisions,
            emails,
            feedback,
            customers,
            entered,
            journeys,
            outbox_pending,
            dead_letters,
            due_backlog,
            experiments: self.experiment_states()?,
        })
    }

    fn experiment_states(&mut self) -> Result<Vec<super::ExperimentState>> {
        Ok(self
            .c()?
            .query(super::FIGURE_EXPERIMENTS_POSTGRES, &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn claim_dead_letters(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> Result<Vec<StoredDeadLetter>> {
        let rows = self.c()?.query(
            &format!(
                "UPDATE dead_letters SET claimed_until = $2 WHERE id IN (
                     SELECT id FROM dead_letters WHERE published_at IS NULL AND NOT refused
                         AND (claimed_until IS NULL OR claimed_until <= $1)
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING {DEAD_LETTER_COLUMNS}"
            ),
            &[&micros(now), &micros(now + lease), &(limit as i64)],
        )?;
        let mut out: Vec<StoredDeadLetter> = rows.iter().map(dead_letter_row).collect();
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    fn finish_dead_letters(&mut self, now: DateTime<Utc>, done: &[(i64, Published)]) -> Result<()> {
        let mut tx = self.c()?.transaction()?;
        let st = tx.prepare(
            "UPDATE dead_letters SET published_at = $2, truncated = $3, refused = $4,
                 last_error = $5, attempts = attempts + 1, claimed_until = NULL WHERE id = $1",
        )?;
        for (id, outcome) in done {
            let (published, truncated, refused, error) = super::dead::outcome_columns(outcome);
            let at = published.then(|| micros(now));
            tx.execute(&st, &[id, &at, &truncated, &refused, &error])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn dead_letters(&mut self, query: &DeadLetterQuery) -> Result<Vec<StoredDeadLetter>> {
        let since = query.since.map_or(i64::MIN, micros);
        let limit = if query.limit == 0 {
            i64::MAX
        } else {
            query.limit as i64
        };
        let rows = self.c()?.query(
            &format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
                 WHERE at >= $1 AND ($2::text IS NULL OR strpos(reason, $2) > 0 OR strpos(class, $2) > 0)
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&since, &query.reason, &limit],
        )?;
        Ok(rows.iter().map(dead_letter_row).collect())
    }

    fn dead_letter(&mut self, id: i64) -> Result<Option<StoredDeadLetter>> {
        let row = self.c()?.query_opt(
            &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1"),
            &[&id],
        )?;
        Ok(row.as_ref().map(dead_letter_row))
    }

    fn mark_replayed(&mut self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        self.c()?.execute(
            "UPDATE dead_letters SET replayed_at = $2 WHERE id = ANY($1)",
            &[&ids, &micros(now)],
        )?;
        Ok(())
    }

    fn prune_processed(&mut self, before: DateTime<Utc>) -> Result<u64> {
        Ok(self.c()?.execute(
            "DELETE FROM processed_events WHERE at < $1",
            &[&micros(before)],
        )?)
    }

    fn is_erased(&mut self, hash: &str) -> Result<bool> {
        let row = self
            .c()?
            .query_opt("SELECT 1 FROM erased WHERE address = $1", &[&hash])?;
        Ok(row.is_some())
    }

    fn prune_timeline(&mut self, before: DateTime<Utc>) -> Result<u64> {
        Ok(self.c()?.execute(
            "DELETE FROM timeline WHERE recorded_at < $1 OR (recorded_at IS NULL AND at < $1)",
            &[&micros(before)],
        )?)
    }
}

/// A stored sequence version, with the templates kept with it.
fn version_row(
    client: &mut impl GenericClient,
    name: &str,
    version: &str,
) -> Result<Option<VersionRecord>> {
    let row = client.query_opt(
        "SELECT path, source, templates FROM sequence_versions WHERE name = $1 AND version = $2",
        &[&name, &version],
    )?;
    row.map(|r| {
        Ok(VersionRecord {
            name: name.to_string(),
            version: version.to_string(),
            path: r.get(0),
            source: r.get(1),
            templates: super::record::templates_of(r.get(2))?,
        })
    })
    .transpose()
}

/// Free text (reasons, subjects, a relay's reply) as PostgreSQL can hold it: its text type
/// refuses NUL, which a template or a relay may put there; written `\u{0}` instead, so the
/// line is kept rather than the transaction refused.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\u{0}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The columns [`dead_letter_row`] reads, in its order.
const DEAD_LETTER_COLUMNS: &str = "id, at, source_topic, source_partition, source_offset, key,
    value, headers, reason, class, published_at, truncated, refused, attempts, last_error,
    replayed_at";

fn dead_letter_row(r: &postgres::Row) -> StoredDeadLetter {
    StoredDeadLetter {
        id: r.get(0),
        at: from_micros(r.get(1)),
        letter: DeadLetter {
            topic: r.get(2),
            partition: r.get(3),
            offset: r.get(4),
            key: r.get(5),
            value: r.get(6),
            headers: DeadLetter::parse_headers(r.get(7)),
            reason: r.get(8),
            class: r.get(9),
        },
        published_at: r.get::<_, Option<i64>>(10).map(from_micros),
        truncated: r.get(11),
        refused: r.get(12),
        attempts: r.get::<_, i32>(13) as u32,
        last_error: r.get(14),
        replayed_at: r.get::<_, Option<i64>>(15).map(from_micros),
    }
}

/// Loads customers by id (in `ids` order), with `lock` appended to the customer query.
fn load<C: postgres::GenericClient>(
    client: &mut C,
    ids: &[&str],
    lock: &str,
) -> Result<Vec<Option<StoredCustomer>>> {
    let rows = client.query(
        &format!("SELECT id, state, next_due, rev FROM customers WHERE id = ANY($1) {lock}"),
        &[&ids],
    )?;
    let mut found: HashMap<String, StoredCustomer> = HashMap::with_capacity(rows.len());
    for r in rows {
        let state: String = r.get(1);
        // An empty state is the placeholder row `Tx::load` inserts: not a customer yet.
        if state.is_empty() {
            continue;
        }
        let id: String = r.get(0);
        found.insert(
            id.clone(),
            StoredCustomer {
                id,
                state,
                next_due: r.get::<_, Option<i64>>(2).map(from_micros),
                rev: r.get(3),
                rows: Default::default(),
            },
        );
    }
    Ok(ids.iter().map(|id| found.remove(*id)).collect())
}

/// A customer's row with its journey and order rows, when its document keeps some: then
/// read again with them in one snapshot, so both are of the same moment.
fn load_whole(
    client: &mut Client,
    id: &str,
    with_journeys: bool,
) -> Result<Option<StoredCustomer>> {
    match load(client, &[id], "")?.pop().flatten() {
        Some(c) if super::record::has_rows(&c.state) => {}
        listed => return Ok(listed),
    }
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let Some(mut c) = load(&mut tx, &[id], "")?.pop().flatten() else {
        return Ok(None);
    };
    if super::record::has_rows(&c.state) {
        read_rows(&mut tx, std::slice::from_mut(&mut c), with_journeys)?;
    }
    tx.commit()?;
    Ok(Some(c))
}

/// A timeline line from the columns at, journey, sequence, version, step, action, reason and
/// subject, starting at column `from`.
fn timeline_row(r: &postgres::Row, from: usize) -> TimelineRow {
    TimelineRow {
        at: from_micros(r.get(from)),
        journey: r.get(from + 1),
        sequence: r.get(from + 2),
        version: r.get(from + 3),
        step: r.get(from + 4),
        action: r.get(from + 5),
        reason: r.get(from + 6),
        subject: r.get(from + 7),
    }
}

/// Reads the customers' order rows, and their journey rows `with_journeys`, into their `rows`.
fn read_rows<C: GenericClient>(
    client: &mut C,
    customers: &mut [StoredCustomer],
    with_journeys: bool,
) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = customers.iter().map(|c| c.id.clone()).collect();
    let at: HashMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    let tables: &[&str] = match with_journeys {
        true => &["journey_rows", "order_rows"],
        false => &["order_rows"],
    };
    for &table in tables {
        let rows = client.query(
            &format!("SELECT customer, n, data FROM {table} WHERE customer = ANY($1) ORDER BY customer, n"),
            &[&ids],
        )?;
        for r in rows {
            let Some(i) = at.get(r.get::<_, &str>(0)) else {
                continue;
            };
            let set = match table {
                "journey_rows" => &mut customers[*i].rows.journeys,
                _ => &mut customers[*i].rows.orders,
            };
            set.put.push((r.get(1), r.get(2)));
        }
    }
    Ok(())
}

/// Writes the changes to the customers' journey or order rows ([`super::RowSet`]): a few
/// statements over arrays for the whole batch.
fn write_rows(
    tx: &mut Transaction<'_>,
    table: &str,
    customers: &[StoredCustomer],
    set: impl Fn(&StoredCustomer) -> &super::RowSet,
) -> Result<()> {
    let cleared: Vec<&str> = customers
        .iter()
        .filter(|c| set(c).clear)
        .map(|c| c.id.as_str())
        .collect();
    if !cleared.is_empty() {
        tx.execute(
            &format!("DELETE FROM {table} WHERE customer = ANY($1)"),
            &[&cleared],
        )?;
    }
    let (mut who, mut ns): (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
    for c in customers {
        for n in &set(c).gone {
            who.push(&c.id);
            ns.push(*n);
        }
    }
    if !who.is_empty() {
        tx.execute(
            &format!(
                "DELETE FROM {table} t USING UNNEST($1::text[], $2::bigint[]) AS g(c, n)
                 WHERE t.customer = g.c AND t.n = g.n"
            ),
            &[&who, &ns],
        )?;
    }
    let (mut who, mut ns, mut data): (Vec<&str>, Vec<i64>, Vec<&str>) =
        (Vec::new(), Vec::new(), Vec::new());
    for c in customers {
        for (n, d) in &set(c).put {
            who.push(&c.id);
            ns.push(*n);
            data.push(d);
        }
    }
    if !who.is_empty() {
        tx.execute(
            &format!(
                "INSERT INTO {table} (customer, n, data)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])
                 ON CONFLICT (customer, n) DO UPDATE SET data = excluded.data"
            ),
            &[&who, &ns, &data],
        )?;
    }
    Ok(())
}

impl Tx for PgTx<'_> {
    fn first_sight(&mut self, keys: &[(&str, &str)], now: DateTime<Utc>) -> Result<Vec<bool>> {
        let sources: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let rows = self.tx.query(
            "INSERT INTO processed_events (source, id, at)
             SELECT s, i, $3 FROM UNNEST($1::text[], $2::text[]) AS t(s, i)
             ON CONFLICT DO NOTHING RETURNING source, id",
            &[&sources, &ids, &micros(now)],
        )?;
        let mut fresh: HashSet<(String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // The first occurrence of a key within the batch is the new one.
        Ok(keys
            .iter()
            .map(|(s, i)| fresh.remove(&(s.to_string(), i.to_string())))
            .collect())
    }

    fn load(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredCustomer>>> {
        // A row to lock even for customers not seen before, so two instances handling the same
        // new customer (events on different partitions) take turns instead of overwriting.
        self.tx.execute(
            "INSERT INTO customers (id, state, next_due, updated_at)
             SELECT id, '', NULL, 0 FROM UNNEST($1::text[]) AS t(id) ON CONFLICT DO NOTHING",
            &[&ids],
        )?;
        load(&mut self.tx, ids, "ORDER BY id FOR UPDATE")
    }

    fn rows(&mut self, customers: &mut [StoredCustomer]) -> Result<()> {
        read_rows(&mut self.tx, customers, true)
    }

    fn park(&mut self, ids: &[&str]) -> Result<()> {
        if !ids.is_empty() {
            self.tx.execute(
                "UPDATE customers SET next_due = NULL, rev = 0 WHERE id = ANY($1)",
                &[&ids],
            )?;
        }
        Ok(())
    }

    fn claim_due(&mut self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StoredCustomer>> {
        let rows = self.tx.query(
            "SELECT id FROM customers WHERE next_due <= $1 ORDER BY next_due LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&micros(now), &(limit as i64)],
        )?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ok(load(&mut self.tx, &ids, "")?
            .into_iter()
            .flatten()
            .collect())
    }

    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>> {
        version_row(&mut self.tx, name, version)
    }

    fn save(&mut self, customers: &[StoredCustomer]) -> Result<()> {
        let ids: Vec<&str> = customers.iter().map(|c| c.id.as_str()).collect();
        let states: Vec<&str> = customers.iter().map(|c| c.state.as_str()).collect();
        let dues: Vec<Option<i64>> = customers.iter().map(|c| c.next_due.map(micros)).collect();
        let revs: Vec<i64> = customers.iter().map(|c| c.rev).collect();
        self.tx.execute(
            &format!("INSERT INTO customers (id, state, next_due, updated_at, rev)
             SELECT i, s, d, {NOW_US}, r FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(i, s, d, r)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, next_due = excluded.next_due,
                 updated_at = excluded.updated_at, rev = excluded.rev"),
            &[&ids, &states, &dues, &revs],
        )?;
        write_rows(&mut self.tx, "journey_rows", customers, |c| {
            &c.rows.journeys
        })?;
        write_rows(&mut self.tx, "order_rows", customers, |c| &c.rows.orders)?;
        Ok(())
    }

    fn record(&mut self, decisions: &[Decision]) -> Result<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        let journeys: Vec<String> = decisions.iter().map(|d| d.journey.to_string()).collect();
        let customer: Vec<&str> = decisions.iter().map(|d| &*d.customer).collect();
        let at: Vec<i64> = decisions.iter().map(|d| micros(d.at)).collect();
        let sequence: Vec<&str> = decisions.iter().map(|d| &*d.sequence).collect();
        let version: Vec<&str> = decisions.iter().map(|d| &*d.version).collect();
        let step: Vec<Option<&str>> = decisions.iter().map(|d| d.step.as_deref()).collect();
        let action: Vec<&str> = decisions.iter().map(|d| d.action.as_str()).collect();
        let reason: Vec<Cow<str>> = decisions.iter().map(|d| text(&d.reason)).collect();
        let subject: Vec<Option<Cow<str>>> = decisions
            .iter()
            .map(|d| d.subject.as_deref().map(text))
            .collect();
        // Rows take their `seq` in array order: the timeline keeps the order of the decisions.
        self.tx.execute(
            "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
             SELECT *, (extract(epoch from now()) * 1000000)::bigint FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::text[], $9::text[])",
            &[&customer, &at, &journeys, &sequence, &version, &step, &action, &reason, &subject],
        )?;
        let emails: Vec<(usize, &crate::engine::EmailIntent, &str)> = decisions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.email.as_ref()?, d.step.as_deref()?)))
            .collect();
        if emails.is_empty() {
            return Ok(());
        }
        let key: Vec<String> = emails
            .iter()
            .map(|(i, _, s)| format!("{}:{s}", journeys[*i]))
            .collect();
        let e_customer: Vec<&str> = emails.iter().map(|(i, _, _)| customer[*i]).collect();
        let e_journey: Vec<&str> = emails
            .iter()
            .map(|(i, _, _)| journeys[*i].as_str())
            .collect();
        let e_sequence: Vec<&str> = emails.iter().map(|(i, _, _)| sequence[*i]).collect();
        let e_version: Vec<&str> = emails.iter().map(|(i, _, _)| version[*i]).collect();
        let e_step: Vec<&str> = emails.iter().map(|(_, _, s)| *s).collect();
        let e_order: Vec<Option<&str>> = emails
            .iter()
            .map(|(_, e, _)| e.order_id.as_deref())
            .collect();
        let e_template: Vec<&str> = emails.iter().map(|(_, e, _)| &*e.template).collect();
        let e_category: Vec<&str> = emails.iter().map(|(_, e, _)| &*e.category).collect();
        let e_tx: Vec<bool> = emails.iter().map(|(_, e, _)| e.transactional).collect();
        let e_at: Vec<i64> = emails.iter().map(|(i, _, _)| at[*i]).collect();
        let e_endpoint: Vec<Option<&str>> = emails
            .iter()
            .map(|(_, e, _)| e.endpoint.as_deref())
            .collect();
        self.tx.execute(
            "INSERT INTO outbox (key, customer, journey, sequence, version, step, order_id, template, category,
                 transactional, status, created_at, next_attempt_at, endpoint)
             SELECT k, c, j, s, v, st, o, t, ca, tr, 'pending', a, a, ep
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::bool[], $11::bigint[], $12::text[]) AS x(k, c, j, s, v, st, o, t, ca, tr, a, ep)
             ON CONFLICT (key) DO NOTHING",
            &[&key, &e_customer, &e_journey, &e_sequence, &e_version, &e_step, &e_order, &e_template, &e_category, &e_tx, &e_at, &e_endpoint],
        )?;
        Ok(())
    }

    fn trace_emails(&mut self, traced: &[(String, String)]) -> Result<()> {
        let (key, trace): (Vec<&str>, Vec<&str>) = traced.iter().map(|(k, t)| (&**k, &**t)).unzip();
        self.tx.execute(
            "UPDATE outbox SET trace = x.t FROM UNNEST($1::text[], $2::text[]) AS x(k, t)
             WHERE outbox.key = x.k AND outbox.trace IS NULL",
            &[&key, &trace],
        )?;
        Ok(())
    }

    fn dead_letter(&mut self, letters: &[DeadLetter], now: DateTime<Utc>) -> Result<()> {
        let st = self.tx.prepare(
            "INSERT INTO dead_letters (at, source_topic, source_partition, source_offset, digest,
                 key, value, headers, reason, class)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (source_topic, source_partition, source_offset, digest) DO NOTHING",
        )?;
        for d in letters {
            self.tx.execute(
                &st,
                &[
                    &micros(now),
                    &d.topic,
                    &d.partition,
                    &d.offset,
                    &d.digest(),
                    &d.key,
                    &d.value,
                    &d.headers_text(),
                    &d.reason,
                    &d.class,
                ],
            )?;
        }
        Ok(())
    }

    fn forget(
        &mut self,
        customer: &str,
        addresses: &[String],
        erased: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut removed = 0;
        for table in super::CUSTOMER_ROWS {
            removed += self
                .tx
                .execute(&format!("DELETE FROM {table} = $1"), &[&customer])?;
        }
        // One letter in memory at a time: the table may hold many large ones.
        use postgres::fallible_iterator::FallibleIterator as _;
        let mut ids: Vec<i64> = Vec::new();
        let mut rows = self.tx.query_raw(
            "SELECT id, key, value, headers FROM dead_letters",
            std::iter::empty::<&str>(),
        )?;
        while let Some(r) = rows.next()? {
            let letter = DeadLetter {
                key: r.get(1),
                value: r.get(2),
                headers: DeadLetter::parse_headers(r.get(3)),
                ..DeadLetter::default()
            };
            if letter.mentions(customer, addresses) {
                ids.push(r.get(0));
            }
        }
        drop(rows);
        removed += self
            .tx
            .execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&ids])?;
        self.tx.execute(
            "INSERT INTO erased (address, at) SELECT a, $2 FROM UNNEST($1::text[]) AS t(a)
             ON CONFLICT DO NOTHING",
            &[&erased, &micros(now)],
        )?;
        Ok(removed)
    }

    fn unerase(&mut self, hashes: &[String]) -> Result<()> {
        self.tx
            .execute("DELETE FROM erased WHERE address = ANY($1)", &[&hashes])?;
        Ok(())
    }

    fn note(&mut self, notes: &[Note]) -> Result<()> {
        for n in notes {
            self.tx.execute(
                "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
                 VALUES ($1, $2, '-', '-', '-', NULL, $3, $4, NULL, (extract(epoch from now()) * 1000000)::bigint)",
                &[&n.customer, &micros(n.at), &n.action, &text(&n.reason)],
            )?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}
