//! Hot reload: the sequences folder is watched while `run` runs.
//!
//! Every `sequences.watch_interval` the folder's files (sequences and templates) are listed
//! with their sizes and modification times; when that changes, the whole folder is loaded
//! and validated as `aftercare validate` would. A good folder is recorded in the store (so
//! journeys can finish on any version they started on, here or on another instance) and
//! becomes the catalog new journeys start on; journeys in flight stay pinned to their
//! version. A bad one is refused: each problem is logged as `file:line:column: message`,
//! `aftercare_sequence_reloads_total{outcome="refused"}` counts it, and the last good
//! version keeps running. Polling rather than inotify: it sees edits on any filesystem,
//! including a Kubernetes ConfigMap's symlink swap, and costs a directory listing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::Shutdown;
use super::metrics::{Metrics, OutcomeLabels};
use crate::sequence::{Catalog, Limits};
use crate::store::Store;

/// The catalog new journeys start on, replaced by hot reloads.
pub struct Live {
    catalog: RwLock<Arc<Catalog>>,
    generation: AtomicU64,
}

impl Live {
    pub fn new(catalog: Arc<Catalog>) -> Live {
        Live {
            catalog: RwLock::new(catalog),
            generation: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Bumped by every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The catalog, if it changed since `seen` (which is updated).
    pub fn changed(&self, seen: &mut u64) -> Option<Arc<Catalog>> {
        let now = self.generation();
        (now != *seen).then(|| {
            *seen = now;
            self.current()
        })
    }

    fn replace(&self, catalog: Arc<Catalog>) {
        match self.catalog.write() {
            Ok(mut c) => *c = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the folder looks like to [`Catalog::load`]: the path, size and modification time of
/// each `*.yaml`/`*.yml` file in it and of every file under `templates/`, sorted. Anything
/// else in the folder (a README, a mail folder) changes nothing.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), false)];
    // Each directory once: a link to a parent must not loop (it did, forever).
    let mut seen = std::collections::HashSet::new();
    while let Some((d, in_templates)) = stack.pop() {
        if !d.canonicalize().is_ok_and(|real| seen.insert(real)) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            // Follows symlinks: a ConfigMap's files are links to a swapped directory.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let top_templates = !in_templates && path == dir.join("templates");
            if meta.is_dir() {
                if in_templates || top_templates {
                    stack.push((path, true));
                }
            } else if in_templates || path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// The hot reload of a sequences folder: watches `dir` every `every`, replacing `live`'s
/// catalog with each good version.
pub struct Watcher<'a> {
    pub dir: &'a Path,
    pub every: Duration,
    pub limits: &'a Limits,
    /// What the config gives sequences: a folder that needs more is refused.
    pub fit: &'a ConfigFit,
    pub live: &'a Live,
    /// Where each version loaded is recorded.
    pub store: &'a mut dyn Store,
    pub metrics: &'a Metrics,
}

/// What the folder looked like: see [`fingerprint`].
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

impl Watcher<'_> {
    /// Watches until `stop`. Nothing a file holds can end this thread: every limit applies,
    /// and a load that panics anyway is refused like an invalid folder, the last good version
    /// running on.
    pub fn run(mut self, stop: &Shutdown) {
        let mut seen = fingerprint(self.dir);
        // The content of the folder last refused, so a bad file is reported once, not every
        // tick.
        let mut refused: Option<Fingerprint> = None;
        while !stop.wait_timeout(self.every) {
            let now = fingerprint(self.dir);
            if now == seen || refused.as_ref() == Some(&now) {
                continue;
            }
            match self.load() {
                Ok(changed) => {
                    self.applied(&changed);
                    seen = now;
                    refused = None;
                }
                Err(Refused::Invalid(diags)) => {
                    self.refused(&diags);
                    refused = Some(now);
                }
                // The store or the disk, not the files: try again next tick.
                Err(Refused::Unavailable(e)) => {
                    tracing::warn!(error = %e, "sequences not reloaded yet; retrying");
                }
            }
        }
    }

    /// Loads the folder, a panic refused as an invalid folder would be.
    fn load(&mut self) -> Result<Vec<String>, Refused> {
        let (dir, limits, live) = (self.dir, self.limits, self.live);
        let fit = self.fit;
        let store = &mut *self.store;
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reload(dir, limits, fit, live, store)
        }));
        attempt.unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Refused::Invalid(vec![format!(
                "{}: loading the folder failed ({what}); please report this with the files",
                dir.display()
            )]))
        })
    }

    fn applied(&self, changed: &[String]) {
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome: "applied" })
            .inc();
        self.metrics
            .sequences_loaded
            .set(self.live.current().sequences().len() as i64);
        tracing::info!(
            dir = %self.dir.display(),
            changed = changed.join(", "),
            "sequences reloaded: new journeys start on these versions; journeys in flight keep theirs"
        );
    }

    fn refused(&self, diags: &[String]) {
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome: "refused" })
            .inc();
        for d in diags {
            tracing::error!("{d}");
        }
        tracing::error!(
            dir = %self.dir.display(),
            errors = diags.len(),
            "sequences not reloaded: the last good version keeps running; fix the files (see `aftercare validate`)"
        );
    }
}

/// What the config gives the sequences, which `run` checks a folder against at start and on
/// every reload: its webhook endpoints, and whether coupon codes can be derived.
#[derive(Debug, Clone, Default)]
pub struct ConfigFit {
    pub endpoints: Arc<crate::webhook::Endpoints>,
    /// `AFTERCARE_SIGNING_KEY` is set: generated coupon codes have their key.
    pub coupon_keyed: bool,
}

impl ConfigFit {
    /// Every step the config cannot serve, where it is: an endpoint it lacks, or a coupon
    /// code without the key to derive it.
    pub fn refusals(&self, catalog: &Catalog) -> Vec<crate::sequence::Diagnostic> {
        let mut out = crate::webhook::unknown_endpoints(catalog, &self.endpoints);
        if !self.coupon_keyed
            && let Some((seq, step)) = crate::engine::coupon::first_generator(catalog)
        {
            out.push(
                crate::sequence::Diagnostic::new(
                    &seq.path,
                    crate::sequence::Pos::START,
                    format!(
                        "{}/{} generates coupon codes, which are derived from AFTERCARE_SIGNING_KEY, and it is not set",
                        seq.name, step.id
                    ),
                )
                .hint("set AFTERCARE_SIGNING_KEY, or remove the step's `coupon`"),
            );
        }
        out
    }
}

enum Refused {
    Invalid(Vec<String>),
    Unavailable(String),
}

/// Loads and checks the folder; records and installs it if good. Returns the sequences whose
/// version changed.
fn reload(
    dir: &Path,
    limits: &Limits,
    fit: &ConfigFit,
    live: &Live,
    store: &mut dyn Store,
) -> Result<Vec<String>, Refused> {
    let (catalog, mut diags) =
        Catalog::load_with(dir, limits).map_err(|e| Refused::Unavailable(e.to_string()))?;
    diags.extend(fit.refusals(&catalog));
    if !diags.is_empty() {
        return Err(Refused::Invalid(
            diags.iter().map(|d| d.to_string()).collect(),
        ));
    }
    store
        .save_versions(&super::versions_of(&catalog))
        .map_err(|e| Refused::Unavailable(e.to_string()))?;
    let old = live.current();
    let changed = catalog
        .sequences()
        .iter()
        .filter(|s| old.version(&s.name, &s.version).is_none())
        .map(|s| format!("{}@{}", s.name, s.version))
        .collect();
    live.replace(Arc::new(catalog));
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder that generates coupon codes is refused, at start and on reload, while the
    /// signing key they derive from is unset.
    #[test]
    fn a_coupon_step_needs_the_signing_key() {
        let dir = std::env::temp_dir().join(format!("aftercare-fit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates/t")).unwrap();
        std::fs::write(
            dir.join("s.yaml"),
            "name: s\ntrigger: { event: order.placed }\nsteps:\n  - id: a\n    email: { template: t/a }\n    coupon: { generate: { prefix: TRI- } }\n",
        )
        .unwrap();
        std::fs::write(dir.join("templates/t/a.subject.j2"), "{{ coupon.code }}").unwrap();
        std::fs::write(dir.join("templates/t/a.html.j2"), "<p>a</p>").unwrap();
        let (catalog, diags) = Catalog::load(&dir).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let refused: Vec<String> = ConfigFit::default()
            .refusals(&catalog)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            refused,
            [format!(
                "{}:1:1: s/a generates coupon codes, which are derived from AFTERCARE_SIGNING_KEY, and it is not set\n  hint: set AFTERCARE_SIGNING_KEY, or remove the step's `coupon`",
                dir.join("s.yaml").display()
            )]
        );
        let keyed = ConfigFit {
            coupon_keyed: true,
            ..ConfigFit::default()
        };
        assert!(keyed.refusals(&catalog).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
