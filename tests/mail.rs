//! Delivery against a real SMTP server this project did not write: aiosmtpd (PyPI), started
//! by the harness (`tests/smtp/server.py`), with the outbox worker, the composer and the SMTP
//! transport `run` uses, on a real SQLite store.

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

#[test]
fn marketing_and_transactional_emails_arrive_with_the_exact_headers_and_parts() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("exact"), &[]);
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann Lee", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    rig.send_until("two emails sent", |c| c["emails sent"] == 2);
    let messages = server.messages();
    assert_eq!(messages.len(), 2);
    let receipt = messages
        .iter()
        .find(|m| m.contains("X-Aftercare-Sequence: receipt"))
        .unwrap();
    let review = messages
        .iter()
        .find(|m| m.contains("X-Aftercare-Sequence: review"))
        .unwrap();

    // The journey id is in the Message-ID: read it from the header that carries it alone.
    let h = headers(review);
    let journey = header(&h, "X-Aftercare-Journey").unwrap().to_string();
    let token = Signer::new(KEY.as_bytes()).sign("c1", "review");
    let expected = [
        ("From", "Shop <shop@example.com>".to_string()),
        ("To", "\"Ann Lee\" <ann@example.com>".to_string()),
        ("Subject", "How is it going, Ann Lee?".to_string()),
        ("Message-ID", format!("<{journey}.ask@example.com>")),
        ("X-Aftercare-Sequence", "review".to_string()),
        ("X-Aftercare-Step", "ask".to_string()),
        ("List-Id", "review <review.example.com>".to_string()),
        (
            "List-Unsubscribe",
            format!("<https://mail.example.com/u/{token}>"),
        ),
        (
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click".to_string(),
        ),
    ];
    for (name, value) in &expected {
        assert_eq!(
            header(&h, name),
            Some(value.as_str()),
            "{name} in\n{review}"
        );
    }
    assert!(
        header(&h, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative;")
    );
    // Both parts, the text one derived from the HTML, and the link signed for this customer.
    assert!(review.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(review.contains("Content-Type: text/html; charset=utf-8"));
    assert!(review.contains("Hello Ann Lee, tell us about order o1."));
    assert!(review.contains(&format!("https://mail.example.com/u/{token}")));

    // Transactional: the aftercare headers and List-Id, but no unsubscribe headers.
    let h = headers(receipt);
    assert_eq!(header(&h, "Subject"), Some("Thanks for order o1"));
    assert_eq!(header(&h, "X-Aftercare-Step"), Some("thanks"));
    assert_eq!(
        header(&h, "List-Id"),
        Some("transactional <transactional.example.com>")
    );
    assert_eq!(header(&h, "List-Unsubscribe"), None);
    assert_eq!(header(&h, "List-Unsubscribe-Post"), None);
    assert!(receipt.contains("We got it, Ann Lee."));

    // The envelope: from the From address, to the customer only.
    for entry in server.log() {
        assert_eq!(entry["mail_from"], "shop@example.com");
        assert_eq!(entry["rcpt_tos"], json!(["ann@example.com"]));
    }
    let actions: Vec<String> = rig.timeline("c1").into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions.iter().filter(|a| *a == "sent").count(), 2);
}

#[test]
fn temporary_failures_are_retried_and_the_email_is_delivered_exactly_once() {
    let port = free_port();
    // 421 for the first three attempts, then the server recovers.
    let server = SmtpServer::start(
        port,
        &scratch("retry"),
        &["--fail-first", "3", "--fail-code", "421"],
    );
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    let c = rig.send_until("the email sent", |c| c["emails sent"] == 1);
    assert_eq!((c["emails pending"], c["emails failed"]), (0, 0));
    let log = server.log();
    let replies: Vec<i64> = log.iter().map(|e| e["reply"].as_i64().unwrap()).collect();
    assert_eq!(replies, [421, 421, 421, 250]);
    // Every attempt carried the same Message-ID.
    let ids: std::collections::HashSet<&str> = log
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(server.messages().len(), 1);
    let t = rig.timeline("c1");
    let retries: Vec<&(String, String)> = t.iter().filter(|(a, _)| a == "retry").collect();
    assert_eq!(retries.len(), 3);
    assert!(retries[0].1.contains("421"), "{:?}", retries[0]);
    assert_eq!(t.last().unwrap().0, "sent");
}

#[test]
fn a_permanent_failure_marks_the_address_bounced_and_later_marketing_is_suppressed() {
    let port = free_port();
    let server = SmtpServer::start(
        port,
        &scratch("bounce"),
        &["--reject-domain", "gone.example.com"],
    );
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann", "ann@gone.example.com")]);
    rig.send_until("the bounce", |c| c["emails bounced"] == 1);
    let (stored, _) = rig.store.open().customer("c1").unwrap().unwrap();
    assert!(record::profile_and_orders(&stored).unwrap().0.bounced);
    assert_eq!(
        rig.timeline("c1").last().unwrap(),
        &(
            "bounce".to_string(),
            // The reply quoted the address: it is kept as its hash prefix, as in the logs.
            format!(
                "permanent error (550): 5.1.1 <{}>: no such user",
                aftercare::redact::address_hash("ann@gone.example.com")
            )
        )
    );
    // The next marketing email is suppressed by the engine and never queued.
    rig.apply(&[delivered("c1", "o1")]);
    let t = rig.timeline("c1");
    assert!(
        t.contains(&("suppress".to_string(), "address bounced".to_string())),
        "{t:?}"
    );
    assert_eq!(server.messages().len(), 0);
    let c = counts(&mut *rig.store.open());
    assert_eq!(c["emails pending"], 0);
}

#[test]
fn emails_queued_while_the_server_is_down_are_delivered_once_it_is_back() {
    let port = free_port();
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    let out = scratch("down");
    // Down: the worker retries with backoff; the server starts after two refused attempts.
    let sender = rig.sender();
    let stop = aftercare::service::Shutdown::new();
    let s = stop.clone();
    let worker = std::thread::spawn(move || sender.run(&s));
    rig.wait("two refused attempts", |_| {
        rig.timeline("c1")
            .iter()
            .filter(|(a, _)| a == "retry")
            .count()
            >= 2
    });
    // AFTERCARE_TEST_OUTAGE_SECS=60 stretches the outage to a minute (the case); CI
    // keeps it to the two refused attempts.
    if let Some(secs) = std::env::var("AFTERCARE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_secs(secs));
    }
    let server = SmtpServer::start(port, &out, &[]);
    rig.wait("the email sent", |c| c["emails sent"] == 1);
    stop.trigger();
    worker.join().unwrap();
    assert_eq!(server.messages().len(), 1);
    assert!(
        rig.timeline("c1")
            .iter()
            .any(|(a, r)| a == "retry" && r.contains("Connection refused")),
        "{:?}",
        rig.timeline("c1")
    );
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

fn over_tls(name: &str, mode: Tls, extra: &[&str]) {
    let dir = scratch(name);
    let (ca, cert, key) = certificates(&dir);
    let port = free_port();
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = SmtpServer::start(port, &dir.join("out"), &args);
    let mut rig = rig(port, mode, Some(&ca));
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.send_until("the email sent", |c| c["emails sent"] == 1);
    let log = server.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["tls"], true);
    assert_eq!(log[0]["reply"], 250);
}

#[test]
fn starttls_is_negotiated_with_the_relay_certificate() {
    over_tls("starttls", Tls::Starttls, &[]);
}

#[test]
fn implicit_tls_is_spoken_from_the_first_byte() {
    over_tls("implicit-tls", Tls::Tls, &["--implicit-tls"]);
}

#[test]
fn customer_data_cannot_inject_headers_or_recipients() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("inject"), &[]);
    let mut rig = rig(port, Tls::None, None);
    // A name carrying a header, and an address carrying one: the first is encoded, the second
    // refused (recorded as failed, never sent).
    rig.apply(&[
        placed(
            "c1",
            "o1",
            "Eve\r\nBcc: victim@example.com",
            "eve@example.com",
        ),
        placed(
            "c2",
            "o2",
            "Mallory",
            "mallory@example.com\r\nBcc: victim@example.com",
        ),
    ]);
    let c = rig.send_until("both handled", |c| {
        c["emails sent"] + c["emails failed"] == 2
    });
    assert_eq!((c["emails sent"], c["emails failed"]), (1, 1));
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let h = headers(&messages[0]);
    assert_eq!(header(&h, "Bcc"), None, "{}", messages[0]);
    // In the body the text is only text; the header block has no line of its own for it.
    let head = messages[0].split("\r\n\r\n").next().unwrap();
    assert!(
        !head.lines().any(|l| l.starts_with("Bcc")),
        "a Bcc header got through:\n{head}"
    );
    // The name is one encoded word (RFC 2047) of "Eve Bcc: victim@example.com".
    assert_eq!(
        header(&h, "To"),
        Some("=?utf-8?b?RXZlIEJjYzogdmljdGltQGV4YW1wbGUuY29t?= <eve@example.com>")
    );
    for entry in server.log() {
        assert_eq!(entry["rcpt_tos"], json!(["eve@example.com"]));
    }
    assert_eq!(
        rig.timeline("c2").last().unwrap(),
        &(
            "failed".to_string(),
            "invalid address: the customer's address is not valid".to_string()
        )
    );
}

/// One form request on a fresh connection: (status, body).
fn http(port: u16, method: &str, path: &str, form: &str) -> (u16, String) {
    common::http::request(
        ([127, 0, 0, 1], port).into(),
        method,
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
}

fn unsubscribed(rig: &Rig, customer: &str) -> Vec<String> {
    let (stored, _) = rig.store.open().customer(customer).unwrap().unwrap();
    let (profile, _) = record::profile_and_orders(&stored).unwrap();
    profile.unsubscribed.iter().map(|c| c.to_string()).collect()
}

#[test]
fn one_click_unsubscribe_and_preferences_change_the_store_and_stop_pending_sends() {
    use aftercare::service::http::{Web, serve};
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("unsub"), &[]);
    let mut rig = rig(port, Tls::None, None);
    // The receipt and the review request are queued, not sent yet.
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    let catalog = aftercare::service::load_catalog(&rig.config.sequences.dir).unwrap();
    let web = Arc::new(Web {
        signer: Signer::new(KEY.as_bytes()),
        categories: aftercare::service::marketing_categories(&catalog),
        apply: std::sync::Mutex::new((
            rig.store.open(),
            Applier::new(Engine::new(Arc::new(catalog), Policy::default())),
        )),
        ops: Default::default(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let web_port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let site = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, web, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });

    let token = Signer::new(KEY.as_bytes()).sign("c1", "review");
    let (status, body) = http(web_port, "GET", &format!("/u/{token}"), "");
    assert_eq!(status, 200);
    assert!(body.contains("Stop sending you “review” emails?"), "{body}");
    assert!(body.contains(&format!("<form method=\"post\" action=\"/u/{token}\">")));

    // Forged (another key) and altered tokens: 400, the same words, nothing changed.
    let forged = Signer::new(b"guess").sign("c1", "review");
    let mut altered = token.clone();
    altered.pop();
    altered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [forged.as_str(), altered.as_str(), "x.y"] {
        for method in ["GET", "POST"] {
            let (status, body) = http(web_port, method, &format!("/u/{bad}"), "");
            assert_eq!(status, 400, "{method} {bad}");
            assert!(body.contains("This link is not valid."), "{body}");
            assert!(!body.contains("c1") && !body.contains("review"), "{body}");
        }
    }
    assert!(unsubscribed(&rig, "c1").is_empty());

    // The RFC 8058 one-click POST: committed when it answers, and idempotent.
    for _ in 0..2 {
        let (status, body) = http(
            web_port,
            "POST",
            &format!("/u/{token}"),
            "List-Unsubscribe=One-Click",
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("You will get no more “review” emails."));
        assert_eq!(unsubscribed(&rig, "c1"), ["review"]);
    }
    let t = rig.timeline("c1");
    assert_eq!(
        t.iter()
            .filter(|(a, _)| a == "unsubscribe")
            .collect::<Vec<_>>(),
        [&(
            "unsubscribe".to_string(),
            "review (from aftercare/http)".to_string()
        ); 2]
    );

    // The pending review request is not sent; the transactional receipt is.
    let c = rig.send_until("both handled", |c| {
        c["emails sent"] + c["emails suppressed when sending"] == 2
    });
    assert_eq!(
        (c["emails sent"], c["emails suppressed when sending"]),
        (1, 1)
    );
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("X-Aftercare-Sequence: receipt"));
    assert!(rig.timeline("c1").contains(&(
        "suppress".to_string(),
        "unsubscribed from review".to_string()
    )));

    // Preferences: the page shows review unticked; ticking it subscribes again.
    let (status, body) = http(web_port, "GET", &format!("/preferences/{token}"), "");
    assert_eq!(status, 200);
    assert!(
        body.contains("<input type=\"checkbox\" name=\"c_review\"> review"),
        "{body}"
    );
    let (status, _) = http(
        web_port,
        "POST",
        &format!("/preferences/{token}"),
        "c_review=on",
    );
    assert_eq!(status, 200);
    assert!(unsubscribed(&rig, "c1").is_empty());
    let (_, body) = http(web_port, "GET", &format!("/preferences/{token}"), "");
    assert!(body.contains("<input type=\"checkbox\" name=\"c_review\" checked> review"));
    // Unticking everything unsubscribes from every marketing category.
    let (status, _) = http(web_port, "POST", &format!("/preferences/{token}"), "");
    assert_eq!(status, 200);
    assert_eq!(unsubscribed(&rig, "c1"), ["review"]);
    assert_eq!(
        http(web_port, "GET", "/healthz", ""),
        (200, "ok\n".to_string())
    );

    let _ = stop.send(());
    site.join().unwrap();
}

#[test]
fn dkim_signatures_verify_and_cover_the_unsubscribe_headers() {
    let dir = scratch("dkim");
    let key = dir.join("dkim.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    };
    run(&["genrsa", "-traditional", "-out", "dkim.pem", "2048"]);
    let der = run(&["rsa", "-in", "dkim.pem", "-pubout", "-outform", "der"]);
    use base64::Engine as _;
    let public = dir.join("public.b64");
    std::fs::write(
        &public,
        base64::engine::general_purpose::STANDARD.encode(der),
    )
    .unwrap();

    let port = free_port();
    let server = SmtpServer::start(port, &dir.join("out"), &[]);
    let mut rig = rig(port, Tls::None, None);
    rig.config.mail.dkim = Some(aftercare::config::Dkim {
        selector: "s1".into(),
        domain: None,
        key_file: key,
    });
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    rig.send_until("two emails sent", |c| c["emails sent"] == 2);
    let messages = server.messages();
    let review = messages
        .iter()
        .find(|m| m.contains("X-Aftercare-Sequence: review"))
        .unwrap();
    let h = headers(review);
    let signature = header(&h, "DKIM-Signature")
        .unwrap()
        .replace([' ', '\t'], "");
    assert!(signature.contains("c=relaxed/relaxed"), "{signature}");
    assert!(signature.contains("d=example.com") && signature.contains("s=s1"));
    let signed: Vec<String> = signature
        .split(';')
        .find_map(|t| t.strip_prefix("h="))
        .unwrap()
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect();
    for name in [
        "from",
        "subject",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(
            signed.iter().any(|s| s == name),
            "{name} not signed: {signed:?}"
        );
    }
    // An independent verifier (dkimpy) accepts every message as received.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/dkim_verify.py");
    for (i, m) in messages.iter().enumerate() {
        let file = dir.join(format!("m{i}.eml"));
        std::fs::write(&file, m).unwrap();
        let out = Command::new("python3")
            .arg(&script)
            .arg(&file)
            .arg(&public)
            .output()
            .expect("python3 with dkimpy (pip install dkimpy)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "pass",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An erased customer's address gets no marketing again, under any id, until a customer with
/// it subscribes again; transactional email (a new order's receipt) still goes.
#[test]
fn marketing_never_restarts_to_an_erased_address_until_it_subscribes_again() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("erased"), &[]);
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    rig.send_until("receipt and review sent", |c| c["emails sent"] == 2);
    let mut store = rig.store.open();
    rig.applier.forget(&mut *store, "c1", "test").unwrap();
    assert_eq!(counts(&mut *store)["emails sent"], 0);

    rig.apply(&[placed("c2", "o2", "Ann", "ANN@example.com")]);
    rig.apply(&[delivered("c2", "o2")]);
    let c = rig.send_until("the receipt sent, the review suppressed", |c| {
        c["emails sent"] + c["emails suppressed when sending"] == 2
    });
    assert_eq!(
        (c["emails sent"], c["emails suppressed when sending"]),
        (1, 1)
    );
    let t = rig.timeline("c2");
    assert!(
        t.iter().any(|(_, reason)| reason
            == "address erased: marketing resumes only when the customer subscribes again"),
        "{t:?}"
    );

    rig.apply(&[event(
        "customer.subscribed",
        "s-c2",
        "c2",
        json!({"categories": ["review"]}),
    )]);
    rig.apply(&[placed("c2", "o3", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c2", "o3")]);
    rig.send_until("the second order's receipt and review sent", |c| {
        c["emails sent"] == 3
    });
    let subjects: Vec<String> = server
        .messages()
        .iter()
        .filter_map(|m| {
            m.lines()
                .find(|l| l.starts_with("Subject: "))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(subjects.len(), 5, "{subjects:?}");
}

#[test]
fn a_template_error_at_send_time_is_recorded_and_the_worker_carries_on() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("tplerr"), &[]);
    let mut rig = rig(port, Tls::None, None);
    // The review body becomes MJML that does not parse: it fails when rendered, not before.
    let broken = rig
        .config
        .sequences
        .dir
        .join("templates/review/ask.html.j2");
    std::fs::remove_file(&broken).unwrap();
    std::fs::write(
        broken.with_file_name("ask.mjml.j2"),
        "<mjml><mj-body><mj-text>{{ customer.name }}",
    )
    .unwrap();
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    let c = rig.send_until("both handled", |c| {
        c["emails sent"] + c["emails failed"] == 2
    });
    assert_eq!((c["emails sent"], c["emails failed"]), (1, 1));
    assert_eq!(server.messages().len(), 1);
    let t = rig.timeline("c1");
    let (_, reason) = t.iter().find(|(a, _)| a == "failed").unwrap();
    assert!(
        reason.starts_with("template error: ")
            && reason.contains("templates/review/ask.mjml.j2: MJML: "),
        "{reason}"
    );
}

#[test]
fn the_relay_login_is_given_and_a_refused_one_is_retried_never_a_bounce() {
    let dir = scratch("auth");
    let (ca, cert, key) = certificates(&dir);
    let port = free_port();
    let server = SmtpServer::start(
        port,
        &dir.join("out"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--auth",
            "aftercare:s3cret",
        ],
    );
    let mut rig = rig(port, Tls::Starttls, Some(&ca));
    rig.config.mail.smtp.username = Some("aftercare".into());
    rig.config.secrets.smtp_password = Some("wrong".into());
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    // A 535 is about aftercare's login, not the customer's address.
    rig.send_until("a refused login", |_| {
        rig.timeline("c1").iter().any(|(a, _)| a == "retry")
    });
    let t = rig.timeline("c1");
    let (_, reason) = t.iter().find(|(a, _)| a == "retry").unwrap();
    assert!(reason.contains("535"), "{reason}");
    let c = counts(&mut *rig.store.open());
    assert_eq!((c["emails bounced"], c["emails sent"]), (0, 0));
    let (stored, _) = rig.store.open().customer("c1").unwrap().unwrap();
    assert!(!record::profile_and_orders(&stored).unwrap().0.bounced);

    rig.config.secrets.smtp_password = Some("s3cret".into());
    rig.send_until("the email sent", |c| c["emails sent"] == 1);
    let log = server.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0]["tls"].clone(), log[0]["reply"].clone()),
        (json!(true), json!(250))
    );
}

#[test]
fn a_message_refused_after_data_fails_that_email_without_bouncing_the_address() {
    let port = free_port();
    // 554 to the message itself (content or policy), not to the recipient.
    let server = SmtpServer::start(
        port,
        &scratch("refused"),
        &["--fail-first", "1", "--fail-code", "554"],
    );
    let mut rig = rig(port, Tls::None, None);
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    let c = rig.send_until("the refusal", |c| c["emails failed"] == 1);
    assert_eq!((c["emails bounced"], c["emails sent"]), (0, 0));
    let (stored, _) = rig.store.open().customer("c1").unwrap().unwrap();
    assert!(!record::profile_and_orders(&stored).unwrap().0.bounced);
    let t = rig.timeline("c1");
    let (_, reason) = t.iter().find(|(a, _)| a == "failed").unwrap();
    assert!(
        reason.starts_with("refused: ") && reason.contains("554"),
        "{reason}"
    );
    assert_eq!(server.messages().len(), 0);
}

#[test]
fn real_mail_needs_a_signing_key_and_a_username_needs_its_password() {
    let mut config = Config::default();
    config.mail.transport = Transport::Smtp;
    let delivery = config.delivery().unwrap();
    let e = aftercare::service::composer(&config, &delivery)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "config error: AFTERCARE_SIGNING_KEY must be set to send real mail: it signs the unsubscribe links"
    );
    // Set but empty or short: refused too, whatever the transport.
    for (key, transport) in [
        ("", Transport::Smtp),
        ("x".repeat(31).as_str(), Transport::Smtp),
        ("short", Transport::File),
    ] {
        let mut config = config.clone();
        config.mail.transport = transport;
        config.secrets.signing_key = Some(key.into());
        let e = aftercare::service::composer(&config, &delivery)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!(
                "config error: AFTERCARE_SIGNING_KEY is {} bytes; it must be at least 32 (a shorter \
                 key can be guessed, and with it any unsubscribe link forged): make one with \
                 `openssl rand -base64 32`",
                key.len()
            )
        );
    }
    config.secrets.signing_key = Some("y".repeat(32));
    assert!(aftercare::service::composer(&config, &delivery).is_ok());
    config.secrets.signing_key = None;
    config.mail.smtp.username = Some("aftercare".into());
    let e = aftercare::service::transport(&config, &delivery)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "config error: mail.smtp.username is set but AFTERCARE_SMTP_PASSWORD is not"
    );
}

/// Pacing slower than a claim's lease, more concurrency than pace, a slow relay: the old
/// worker claimed `concurrency` emails at once and paced them out one by one, so the last
/// started after their lease had run out and were claimed and sent again. Each email is
/// accepted once — on SQLite with one worker, and on PostgreSQL with two.
#[test]
fn paced_sends_to_a_slow_relay_go_out_once_on_one_and_on_two_instances() {
    for (store, instances, orders) in [(TestStore::sqlite(), 1, 45), (TestStore::postgres(), 2, 45)]
    {
        let port = free_port();
        let server = SmtpServer::start(port, &scratch("paced"), &["--delay", "2"]);
        let mut rig = rig(port, Tls::None, None);
        rig.store = store;
        rig.config.mail.concurrency = 40;
        rig.config.mail.rate_limit = 1.0;
        rig.config.mail.send_timeout = "3s".into();
        let events: Vec<_> = (0..orders)
            .map(|i| {
                placed(
                    &format!("c{i}"),
                    &format!("o{i}"),
                    "Ann",
                    &format!("c{i}@example.com"),
                )
            })
            .collect();
        rig.apply(&events);
        let stop = aftercare::service::Shutdown::new();
        let workers: Vec<_> = (0..instances)
            .map(|_| {
                let sender = rig.sender();
                let s = stop.clone();
                std::thread::spawn(move || sender.run(&s))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut store = rig.store.open();
        while counts(&mut *store)["emails sent"] < orders {
            assert!(Instant::now() < deadline, "{:?}", counts(&mut *store));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.trigger();
        for w in workers {
            w.join().unwrap();
        }
        let mut accepted: std::collections::HashMap<String, usize> = Default::default();
        for entry in server.log().iter().filter(|e| e["reply"] == 250) {
            *accepted
                .entry(entry["message_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let twice = accepted.values().filter(|&&n| n > 1).count();
        println!(
            "{} with {instances} worker(s): {orders} emails, {} accepted, {twice} twice",
            &rig.store.url[..6],
            accepted.values().sum::<usize>()
        );
        assert_eq!(
            (accepted.len(), twice),
            (orders as usize, 0),
            "{}",
            rig.store.url
        );
        let sent_lines = rig
            .store
            .open()
            .counts()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "emails sent")
            .map(|(_, c)| c);
        assert_eq!(sent_lines, Some(orders));
    }
}
