//! Keeping SQLite's write-ahead log in hand: checkpoints on a thread of their own, the log
//! started over when it outgrows its bound, and the engine letting the other writers of the
//! process take the write lock between its batches.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::BUSY_WAIT;
use crate::store::Result;

/// A checkpoint copies the log's pages into the database file, but the log only starts over
/// when a writer begins while no reader is still using it. Under sustained load that moment
/// never comes — the engine begins its next batch before the background copy is done, and the
/// outbox worker is always reading — so the log grew by every page each batch wrote (400 MB for
/// 100,000 events, without end while the load lasted). So when a commit leaves more than the
/// limit in the log, the engine's next transaction first runs a RESTART checkpoint: it copies
/// what the background checkpointer has not (little, usually), waits at most `RESTART_WAIT`
/// for readers to leave the log (or tries again at the next batch), and the next commit writes
/// from the log's start and cuts the file back to `journal_size_limit`.
pub(super) struct LogBound {
    /// Frames in the log after the last commit, from SQLite's WAL hook.
    pub(super) frames: Arc<AtomicI64>,
    pub(super) limit: i64,
    /// Held by whoever checkpoints in this process: SQLite lets one checkpoint run at a time
    /// and fails a second at once, so the restart waits for the background pass to finish
    /// (which leaves it little to copy) rather than failing on it batch after batch.
    pub(super) checkpointing: Arc<Mutex<()>>,
}

/// How long a restarting checkpoint waits for readers to leave the log before it gives up
/// until the next batch.
pub(super) const RESTART_WAIT: Duration = Duration::from_millis(200);

/// Writers of this process other than the engine that want SQLite's write lock, or hold it.
///
/// Under load the engine's batches follow each other with no gap, and SQLite's lock has no
/// queue: another writer that retries now and then (SQLite's busy handler sleeps up to 100 ms
/// between tries) never gets in, so the outbox worker sent nothing while ingest was saturated.
/// So the other writers announce themselves here and retry every millisecond, and the engine
/// lets them go first, waiting at most `YIELD_AT_MOST` before its next batch.
pub(super) static OTHERS_WRITING: AtomicUsize = AtomicUsize::new(0);
pub(super) const YIELD_AT_MOST: Duration = Duration::from_millis(100);

/// A writer's place in `OTHERS_WRITING`, from before it asks for the lock until its
/// transaction ends.
pub(super) struct Turn;

impl Turn {
    pub(super) fn take() -> Turn {
        OTHERS_WRITING.fetch_add(1, Ordering::SeqCst);
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        OTHERS_WRITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The other writers' busy handler: another try every millisecond, for about `BUSY_WAIT`.
pub(super) fn retry_every_millisecond(attempts: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    i64::from(attempts) < BUSY_WAIT.as_millis() as i64
}

/// How often the WAL is checkpointed.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the WAL in the background until dropped.
pub(super) struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &str, checkpointing: Arc<Mutex<()>>) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Ends when the store drops the sender.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    // PASSIVE: copies what it can without waiting for, or blocking, the writer.
                    let _one = checkpointing.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = checkpoint(&conn, "PASSIVE") {
                        tracing::warn!(error = %e, "sqlite checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|e| {
                crate::store::StoreError::Config(format!("starting the checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Runs a checkpoint in `mode`; whether readers kept it from finishing.
pub(super) fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<bool> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(0).map(|busy| busy != 0)
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
