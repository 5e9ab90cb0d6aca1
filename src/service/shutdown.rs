//! One signal to stop, that every worker waits on instead of polling a flag.
//!
//! The shape of mini-redis's `shutdown.rs`, for threads as well as tasks: whoever holds a
//! [`Shutdown`] can [`Shutdown::trigger`] it; a worker between two pieces of work waits for
//! its next one *or* the signal ([`Shutdown::wait_timeout`] on a thread,
//! [`Shutdown::triggered`] in async code), so stopping takes effect at once rather than at the
//! next poll. `run` stops in stages (the poll thread first, then the engine, the outbox, the
//! rest), each stage a signal of its own; [`Worker`] is a thread with the signal that says it
//! has finished, so the stages are joined against a deadline without polling either.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{StartError, StartResult};

/// A signal that is set once and stays set. Clones share it.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    set: Mutex<bool>,
    changed: Condvar,
    notify: tokio::sync::Notify,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Sets the signal and wakes everyone waiting on it.
    pub fn trigger(&self) {
        *self.lock() = true;
        self.0.changed.notify_all();
        self.0.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        *self.lock()
    }

    /// Waits up to `d` for the signal; whether it is set.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut set = self.lock();
        while !*set {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            set = match self.0.changed.wait_timeout(set, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *set
    }

    /// Waits for the signal.
    pub fn wait(&self) {
        let mut set = self.lock();
        while !*set {
            set = match self.0.changed.wait(set) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// Resolves once the signal is set (for async code: the HTTP server, the outbox's waits).
    pub async fn triggered(&self) {
        loop {
            // Registered before the check, so a trigger in between is not missed.
            let notified = self.0.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// The flag, even if a thread panicked holding the lock (it only guards a bool).
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.0.set.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker thread, with the signal it sets when it ends (however it ends).
pub struct Worker {
    name: &'static str,
    handle: std::thread::JoinHandle<()>,
    finished: Shutdown,
}

impl Worker {
    /// Starts `f` on a thread called `name`.
    pub fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> StartResult<Worker> {
        Worker::spawn_with(std::thread::Builder::new().name(name.into()), name, f)
    }

    /// As [`Worker::spawn`], on a thread built by `builder` (a larger stack, say).
    pub fn spawn_with(
        builder: std::thread::Builder,
        name: &'static str,
        f: impl FnOnce() + Send + 'static,
    ) -> StartResult<Worker> {
        let finished = Shutdown::new();
        let done = Finished(finished.clone());
        let handle = builder
            .spawn(move || {
                let _done = done;
                f();
            })
            .map_err(StartError::io(format!("starting the {name} thread")))?;
        Ok(Worker {
            name,
            handle,
            finished,
        })
    }

    /// Waits for the thread until `deadline`; whether it ended (and was joined).
    pub fn join_until(self, deadline: Instant) -> bool {
        if !self
            .finished
            .wait_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            return false;
        }
        let _ = self.handle.join();
        true
    }

    /// As [`Worker::join_until`], saying so in the log when it did not end in time.
    pub fn stop_by(self, deadline: Instant) {
        let name = self.name;
        if !self.join_until(deadline) {
            tracing::warn!(thread = name, "did not stop within the grace period");
        }
    }
}

/// Sets the worker's signal when its thread ends, panicking or not.
struct Finished(Shutdown);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Shutdown, Worker};

    #[test]
    fn a_trigger_wakes_a_waiting_thread_and_a_task_at_once() {
        let stop = Shutdown::new();
        assert!(!stop.wait_timeout(Duration::from_millis(1)));
        let waiting = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait_timeout(Duration::from_secs(600)))
        };
        let task = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(600), stop.triggered())
                        .await
                        .is_ok()
                })
            })
        };
        stop.trigger();
        assert!(waiting.join().unwrap());
        assert!(task.join().unwrap());
        // Set once, set for good.
        assert!(stop.is_triggered());
        stop.wait();
    }

    #[test]
    fn a_worker_is_joined_when_it_ends_even_by_panicking() {
        let release = Shutdown::new();
        let worker = {
            let release = release.clone();
            Worker::spawn("test-worker", move || release.wait()).unwrap()
        };
        assert!(!worker.finished.wait_timeout(Duration::from_millis(1)));
        release.trigger();
        assert!(worker.join_until(Instant::now() + Duration::from_secs(600)));
        let panicking = Worker::spawn("test-panic", || panic!("on purpose")).unwrap();
        assert!(panicking.join_until(Instant::now() + Duration::from_secs(600)));
    }
}
