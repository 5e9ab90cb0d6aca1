//! Real stores for tests: a SQLite file in a temp dir, and a PostgreSQL schema of its own on
//! the server named by `AFTERCARE_TEST_PG` (default: the local server CI starts).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aftercare::store::{self, Store};

pub fn pg_base() -> String {
    std::env::var("AFTERCARE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store that cleans up after itself; `url` opens more handles on the same data.
pub struct TestStore {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Schema(String),
}

impl TestStore {
    pub fn sqlite() -> TestStore {
        let dir = std::env::temp_dir().join(unique("aftercare-store"));
        std::fs::create_dir_all(&dir).unwrap();
        TestStore {
            url: format!("sqlite://{}", dir.join("aftercare.db").display()),
            cleanup: Cleanup::File(dir),
        }
    }

    /// A fresh schema on the test server; fails the test if the server is not there (CI starts it).
    pub fn postgres() -> TestStore {
        let schema = unique("aftercare_t");
        let mut client = postgres::Client::connect(&pg_base(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for this test: {e}", pg_base()));
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        let sep = if pg_base().contains('?') { '&' } else { '?' };
        TestStore {
            url: format!("{}{sep}options=-csearch_path%3D{schema}", pg_base()),
            cleanup: Cleanup::Schema(schema),
        }
    }

    pub fn open(&self) -> Box<dyn Store> {
        store::open(&self.url).unwrap()
    }

    /// A single number from SQL, e.g. `SELECT COUNT(*) FROM timeline`, on either database.
    /// One text value (SQLite only): for fingerprints of whole tables.
    pub fn text(&self, sql: &str) -> String {
        let path = self.url.trim_start_matches("sqlite://");
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
            .unwrap()
            .unwrap_or_default()
    }

    pub fn count(&self, sql: &str) -> i64 {
        match &self.cleanup {
            Cleanup::File(_) => {
                let path = self.url.trim_start_matches("sqlite://");
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(5))
                    .unwrap();
                conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
            }
            Cleanup::Schema(_) => {
                let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
                c.query_one(sql, &[])
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0)
            }
        }
    }

    /// Every row of every table, as text (blobs read as UTF-8 where they are), that contains
    /// one of `needles` (case-insensitive), as `table: | cell | cell |` (so `| id |` matches
    /// a whole cell).
    pub fn rows_containing(&self, needles: &[&str]) -> Vec<String> {
        let mut rows: Vec<(String, String)> = Vec::new();
        match &self.cleanup {
            Cleanup::File(_) => {
                let path = self.url.trim_start_matches("sqlite://");
                let conn = rusqlite::Connection::open(path).unwrap();
                let tables: Vec<String> = conn
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for t in tables {
                    let mut st = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
                    let n = st.column_count();
                    let mut q = st.query([]).unwrap();
                    while let Some(r) = q.next().unwrap() {
                        let cells: Vec<String> = (0..n)
                            .map(|i| match r.get_ref(i).unwrap() {
                                rusqlite::types::ValueRef::Null => "NULL".into(),
                                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                                rusqlite::types::ValueRef::Text(b)
                                | rusqlite::types::ValueRef::Blob(b) => {
                                    String::from_utf8_lossy(b).into_owned()
                                }
                            })
                            .collect();
                        rows.push((t.clone(), format!("| {} |", cells.join(" | "))));
                    }
                }
            }
            Cleanup::Schema(_) => {
                let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
                let tables: Vec<String> = c
                    .query(
                        "SELECT table_name::text FROM information_schema.tables
                         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for t in tables {
                    let columns: Vec<String> = c
                        .query(
                            "SELECT CASE WHEN data_type = 'bytea' THEN 'encode(' || quote_ident(column_name) || ', ''escape'')'
                                    ELSE quote_ident(column_name) || '::text' END
                             FROM information_schema.columns
                             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                            &[&t],
                        )
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let sql = format!(
                        "SELECT concat_ws(' | ', {}) FROM \"{t}\"",
                        columns.join(", ")
                    );
                    for r in c.query(&sql, &[]).unwrap() {
                        rows.push((t.clone(), format!("| {} |", r.get::<_, String>(0))));
                    }
                }
            }
        }
        rows.into_iter()
            .filter(|(_, row)| {
                let row = row.to_lowercase();
                needles.iter().any(|n| row.contains(&n.to_lowercase()))
            })
            .map(|(t, row)| format!("{t}: {row}"))
            .collect()
    }

    pub fn both() -> Vec<TestStore> {
        vec![TestStore::sqlite(), TestStore::postgres()]
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Schema(schema) => {
                if let Ok(mut c) = postgres::Client::connect(&pg_base(), postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
                }
            }
        }
    }
}
