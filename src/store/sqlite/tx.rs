//! One SQLite transaction of the engine's: customers (their documents and rows), the
//! timeline, the outbox, dead letters and erasures.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::wal::Turn;
use super::{NOW_US, version_row};
use crate::engine::Decision;
use crate::store::{
    DeadLetter, Note, Result, StoredCustomer, Tx, VersionRecord, from_micros, micros,
};

pub(super) struct SqliteTx<'c> {
    pub(super) tx: Transaction<'c>,
    pub(super) _turn: Option<Turn>,
}

/// A customer's row: its document, not its journey and order rows ([`read_rows`]).
pub(super) fn load_one(conn: &Connection, id: &str) -> Result<Option<StoredCustomer>> {
    let row = conn
        .prepare_cached("SELECT state, next_due, rev FROM customers WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(StoredCustomer {
                id: id.to_string(),
                state: r.get(0)?,
                next_due: r.get::<_, Option<i64>>(1)?.map(from_micros),
                rev: r.get(2)?,
                rows: Default::default(),
            })
        })
        .optional()?;
    Ok(row)
}

/// A customer's row with its journey and order rows, when its document keeps some: then
/// read again with them in one transaction, so both are of the same moment.
pub(super) fn load_whole(
    conn: &Connection,
    id: &str,
    with_journeys: bool,
) -> Result<Option<StoredCustomer>> {
    match load_one(conn, id)? {
        Some(c) if crate::store::record::has_rows(&c.state) => {
            let tx = conn.unchecked_transaction()?;
            let mut c = load_one(&tx, id)?;
            if let Some(c) = c.as_mut() {
                read_rows(&tx, c, with_journeys)?;
            }
            tx.commit()?;
            Ok(c)
        }
        listed => Ok(listed),
    }
}

/// Reads a customer's order rows, and its journey rows `with_journeys`, into `c.rows`.
pub(super) fn read_rows(
    conn: &Connection,
    c: &mut StoredCustomer,
    with_journeys: bool,
) -> Result<()> {
    let journeys = with_journeys.then_some(("journey_rows", &mut c.rows.journeys));
    for (table, set) in journeys
        .into_iter()
        .chain([("order_rows", &mut c.rows.orders)])
    {
        set.put = conn
            .prepare_cached(&format!(
                "SELECT n, data FROM {table} WHERE customer = ?1 ORDER BY n"
            ))?
            .query_map([&c.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(())
}

/// Writes the changes to a customer's journey or order rows.
pub(super) fn write_rows(
    tx: &Transaction<'_>,
    table: &str,
    customer: &str,
    set: &crate::store::RowSet,
) -> Result<()> {
    if set.clear {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE customer = ?1"))?
            .execute([customer])?;
    }
    if !set.gone.is_empty() {
        let mut gone = tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE customer = ?1 AND n = ?2"
        ))?;
        for n in &set.gone {
            gone.execute(params![customer, n])?;
        }
    }
    if !set.put.is_empty() {
        let mut put = tx.prepare_cached(&format!(
            "INSERT INTO {table} (customer, n, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (customer, n) DO UPDATE SET data = excluded.data"
        ))?;
        for (n, data) in &set.put {
            put.execute(params![customer, n, data])?;
        }
    }
    Ok(())
}

impl Tx for SqliteTx<'_> {
    fn first_sight(&mut self, keys: &[(&str, &str)], now: DateTime<Utc>) -> Result<Vec<bool>> {
        let mut st = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO processed_events (source, id, at) VALUES (?1, ?2, ?3)",
        )?;
        let now = micros(now);
        keys.iter()
            .map(|(source, id)| Ok(st.execute(params![source, id, now])? == 1))
            .collect()
    }

    fn load(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredCustomer>>> {
        ids.iter().map(|id| load_one(&self.tx, id)).collect()
    }

    fn rows(&mut self, customers: &mut [StoredCustomer]) -> Result<()> {
        customers
            .iter_mut()
            .try_for_each(|c| read_rows(&self.tx, c, true))
    }

    fn park(&mut self, ids: &[&str]) -> Result<()> {
        let mut park = self
            .tx
            .prepare_cached("UPDATE customers SET next_due = NULL, rev = 0 WHERE id = ?1")?;
        for id in ids {
            park.execute([id])?;
        }
        Ok(())
    }

    fn claim_due(&mut self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StoredCustomer>> {
        let ids: Vec<String> = self
            .tx
            .prepare_cached(
                "SELECT id FROM customers WHERE next_due <= ?1 ORDER BY next_due LIMIT ?2",
            )?
            .query_map(params![micros(now), limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = load_one(&self.tx, &id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn version(&mut self, name: &str, version: &str) -> Result<Option<VersionRecord>> {
        version_row(&self.tx, name, version)
    }

    fn save(&mut self, customers: &[StoredCustomer]) -> Result<()> {
        let mut upsert = self.tx.prepare_cached(&format!(
            "INSERT INTO customers (id, state, next_due, updated_at, rev) VALUES (?1, ?2, ?3, {NOW_US}, ?4)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, next_due = excluded.next_due,
                 updated_at = excluded.updated_at, rev = excluded.rev"
        ))?;
        for c in customers {
            upsert.execute(params![c.id, c.state, c.next_due.map(micros), c.rev])?;
            write_rows(&self.tx, "journey_rows", &c.id, &c.rows.journeys)?;
            write_rows(&self.tx, "order_rows", &c.id, &c.rows.orders)?;
        }
        Ok(())
    }

    fn record(&mut self, decisions: &[Decision]) -> Result<()> {
        let mut timeline = self.tx.prepare_cached(&format!(
            "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, {NOW_US})"
        ))?;
        let mut outbox = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO outbox (key, customer, journey, sequence, version, step, order_id, template, category,
                 transactional, status, created_at, next_attempt_at, endpoint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11, ?11, ?12)",
        )?;
        for d in decisions {
            let journey = d.journey.to_string();
            timeline.execute(params![
                &*d.customer,
                micros(d.at),
                journey,
                &*d.sequence,
                &*d.version,
                d.step.as_deref(),
                d.action.as_str(),
                d.reason,
                d.subject
            ])?;
            if let (Some(email), Some(step)) = (&d.email, &d.step) {
                outbox.execute(params![
                    format!("{journey}:{step}"),
                    &*d.customer,
                    journey,
                    &*d.sequence,
                    &*d.version,
                    &**step,
                    email.order_id.as_deref(),
                    &*email.template,
                    &*email.category,
                    email.transactional as i64,
                    micros(d.at),
                    email.endpoint.as_deref()
                ])?;
            }
        }
        Ok(())
    }

    fn trace_emails(&mut self, traced: &[(String, String)]) -> Result<()> {
        let mut st = self
            .tx
            .prepare_cached("UPDATE outbox SET trace = ?2 WHERE key = ?1 AND trace IS NULL")?;
        for (key, trace) in traced {
            st.execute(params![key, trace])?;
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
        for table in crate::store::CUSTOMER_ROWS {
            removed += self
                .tx
                .execute(&format!("DELETE FROM {table} = ?1"), [customer])?;
        }
        // One letter in memory at a time: the table may hold many large ones.
        let mut named = Vec::new();
        {
            let mut st = self
                .tx
                .prepare_cached("SELECT id, key, value, headers FROM dead_letters")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let letter = DeadLetter {
                    key: r.get(1)?,
                    value: r.get(2)?,
                    headers: DeadLetter::parse_headers(&r.get::<_, String>(3)?),
                    ..DeadLetter::default()
                };
                if letter.mentions(customer, addresses) {
                    named.push(r.get::<_, i64>(0)?);
                }
            }
        }
        for id in named {
            removed += self
                .tx
                .execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        }
        let mut st = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO erased (address, at) VALUES (?1, ?2)")?;
        for hash in erased {
            st.execute(params![hash, micros(now)])?;
        }
        Ok(removed as u64)
    }

    fn unerase(&mut self, hashes: &[String]) -> Result<()> {
        let mut st = self
            .tx
            .prepare_cached("DELETE FROM erased WHERE address = ?1")?;
        for hash in hashes {
            st.execute([hash])?;
        }
        Ok(())
    }

    fn dead_letter(&mut self, letters: &[DeadLetter], now: DateTime<Utc>) -> Result<()> {
        let mut st = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO dead_letters (at, source_topic, source_partition, source_offset,
                 digest, key, value, headers, reason, class)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for d in letters {
            st.execute(params![
                micros(now),
                d.topic,
                d.partition,
                d.offset,
                d.digest(),
                d.key,
                d.value,
                d.headers_text(),
                d.reason,
                d.class
            ])?;
        }
        Ok(())
    }

    fn note(&mut self, notes: &[Note]) -> Result<()> {
        let mut timeline = self.tx.prepare_cached(
            "INSERT INTO timeline (customer, at, journey, sequence, version, step, action, reason, subject, recorded_at)
             VALUES (?1, ?2, '-', '-', '-', NULL, ?3, ?4, NULL, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))",
        )?;
        for n in notes {
            timeline.execute(params![n.customer, micros(n.at), n.action, n.reason])?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}
