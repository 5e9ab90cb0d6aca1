//! Delivery against a real SMTP server this project did not write: aiosmtpd (PyPI), started
//! by the harness (`tests/smtp/server.py`), with the outbox worker, the composer and the SMTP
//! transport `run` uses, on a real SQLite store. This file is the rig; the tests are grouped
//! by subject: `delivery`, `experiments`, `tls`, `integrity`, `unsubscribe`.

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercare::config::{Config, Tls, Transport};
use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::mail::token::Signer;
use aftercare::service::apply::Applier;
use aftercare::service::outbox::Sender;
use aftercare::store::{Store, record};
use chrono::Utc;
use common::scratch;
use common::smtp::{SmtpServer, free_port};
use common::stores::TestStore;
use serde_json::{Value, json};

mod delivery;
mod experiments;
mod integrity;
mod tls;
mod unsubscribe;
mod webhooks;

const KEY: &str = "test-signing-key-of-at-least-32-bytes";

const REVIEW: &str = "name: review\ncategory: review\njourney: per_order\ntrigger: { event: order.delivered }\nsteps:\n  - id: ask\n    email: { template: review/ask }\n";

const RECEIPT: &str = "name: receipt\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: thanks\n    email: { template: receipt/thanks }\n";

fn templates() -> Vec<(String, String)> {
    vec![
        (
            "review/ask.subject.j2".into(),
            "How is it going, {{ customer.name }}?".into(),
        ),
        (
            "review/ask.html.j2".into(),
            "<p>Hello {{ customer.name }}, tell us about order {{ order.id }}.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>".into(),
        ),
        (
            "receipt/thanks.subject.j2".into(),
            "Thanks for order {{ order.id }}".into(),
        ),
        (
            "receipt/thanks.html.j2".into(),
            "<p>We got it, {{ customer.name }}.</p>".into(),
        ),
        (
            "receipt/thanks.txt.j2".into(),
            "We got it, {{ customer.name }}.".into(),
        ),
    ]
}

/// A store with the test sequences, an applier to feed it, and the config of a sender.
struct Rig {
    store: TestStore,
    applier: Applier,
    config: Config,
}

fn rig(port: u16, tls: Tls, ca: Option<&Path>) -> Rig {
    let dir = common::service::sequences_dir(
        &format!("mail-{port}"),
        &[("review.yaml", REVIEW), ("receipt.yaml", RECEIPT)],
    );
    for (path, text) in templates() {
        let p = dir.join("templates").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let mut config = Config::default();
    config.sequences.dir = dir.clone();
    config.mail.transport = Transport::Smtp;
    config.mail.from = "Shop <shop@example.com>".into();
    config.mail.smtp.host = if ca.is_some() {
        "localhost"
    } else {
        "127.0.0.1"
    }
    .into();
    config.mail.smtp.port = port;
    config.mail.smtp.tls = tls;
    config.mail.smtp.ca_file = ca.map(Path::to_path_buf);
    config.mail.retry.first = "1s".into();
    config.mail.retry.max = "2s".into();
    config.mail.send_timeout = "10s".into();
    config.http.public_url = "https://mail.example.com".into();
    config.secrets.signing_key = Some(KEY.into());
    let catalog = aftercare::service::load_catalog(&dir).unwrap();
    let applier = Applier::new(Engine::new(Arc::new(catalog), Policy::default()))
        .signing(aftercare::mail::token::Signer::new(KEY.as_bytes()));
    Rig {
        store: TestStore::sqlite(),
        applier,
        config,
    }
}

fn event(kind: &str, id: &str, customer: &str, data: Value) -> Arc<Event> {
    let ev = json!({"specversion": "1.0", "id": id, "source": "/shop", "type": kind,
        "time": aftercare::time::rfc3339(Utc::now()), "subject": customer, "data": data});
    Arc::new(Event::from_structured(ev.to_string().as_bytes()).unwrap())
}

fn placed(customer: &str, order: &str, name: &str, email: &str) -> Arc<Event> {
    event(
        "order.placed",
        &format!("p-{order}"),
        customer,
        json!({"order_id": order, "total": "10.00", "currency": "EUR", "items": [],
               "customer": {"email": email, "name": name}}),
    )
}

fn delivered(customer: &str, order: &str) -> Arc<Event> {
    event(
        "order.delivered",
        &format!("d-{order}"),
        customer,
        json!({"order_id": order}),
    )
}

impl Rig {
    fn apply(&mut self, events: &[Arc<Event>]) {
        let mut store = self.store.open();
        self.applier.apply(&mut *store, events, Utc::now()).unwrap();
    }

    /// The outbox worker as `run` builds it, for this rig's config.
    fn sender(&self) -> Sender {
        let delivery = self.config.delivery().unwrap();
        let catalog = aftercare::service::load_catalog(&self.config.sequences.dir).unwrap();
        let engine = Arc::new(Engine::new(Arc::new(catalog), Policy::default()));
        Sender::new(&self.config, delivery, self.store.open(), engine).unwrap()
    }

    /// Runs the outbox worker until `done` holds for the store's counts (or 60 s pass).
    fn send_until(&self, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
        let sender = self.sender();
        let stop = aftercare::service::Shutdown::new();
        let s = stop.clone();
        let worker = std::thread::spawn(move || sender.run(&s));
        let counts = self.wait(what, done);
        stop.trigger();
        worker.join().unwrap();
        counts
    }

    fn wait(&self, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut store = self.store.open();
        loop {
            let c = counts(&mut *store);
            if done(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {c:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn timeline(&self, customer: &str) -> Vec<(String, String)> {
        let (_, t) = self.store.open().customer(customer).unwrap().unwrap();
        t.into_iter().map(|r| (r.action, r.reason)).collect()
    }
}

type Counts = std::collections::HashMap<String, i64>;

fn counts(store: &mut dyn Store) -> Counts {
    store.counts().unwrap().into_iter().collect()
}

/// The header block of a message, unfolded: (name, value) in order.
fn headers(message: &str) -> Vec<(String, String)> {
    let head = message.split("\r\n\r\n").next().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            out.last_mut().unwrap().1.push_str(line);
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.to_string(), v.trim().to_string()));
        }
    }
    out
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A CA, and a certificate for `localhost` signed by it (rustls will not take a self-signed
/// leaf as its own root), in `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}
