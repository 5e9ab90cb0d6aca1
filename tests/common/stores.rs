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
