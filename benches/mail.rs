//! Delivery throughput against its floor, and render time per email.
//!
//! `cargo bench --bench mail` measures, in one run, against the same local SMTP sink (aiosmtpd
//! with `--discard`, from `tests/smtp/server.py`):
//! - floor: the SMTP transport alone (lettre's client on TCP_NODELAY connections) sending one
//!   pre-rendered message N times, with the outbox worker's concurrency; and for reference
//!   lettre's stock pool, whose connections keep Nagle's algorithm on;
//! - outbox: the worker `run` uses, from N queued emails in a SQLite store (claim, load the
//!   customer, render the starter set's MJML confirmation, compose, send, record) to the last
//!   one recorded as sent;
//! - render: subject, MJML body and text of that email, per email.
//!
//! Medians of RUNS (default 3); MAIL_EMAILS sets N (default 5,000).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercare::config::{Config, Tls, Transport};
use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::service::apply::Applier;
use aftercare::service::outbox::Sender;
use lettre::AsyncTransport;
use minijinja::context;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Sink {
    child: Child,
}

impl Sink {
    fn start(port: u16) -> Sink {
        let out = std::env::temp_dir().join(format!("aftercare-mail-bench-{}", std::process::id()));
        let mut child = Command::new("python3")
            .arg(root().join("tests/smtp/server.py"))
            .args(["--port", &port.to_string(), "--discard", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("ready {port}"));
        Sink { child }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16, dir: &Path) -> Config {
    let mut c = Config::default();
    c.sequences.dir = root().join("sequences");
    c.store.url = format!("sqlite://{}", dir.join("aftercare.db").display());
    c.mail.transport = Transport::Smtp;
    c.mail.smtp.host = "127.0.0.1".into();
    c.mail.smtp.port = port;
    c.mail.smtp.tls = Tls::None;
    c.secrets.signing_key = Some("bench-signing-key-of-at-least-32-bytes".into());
    c
}

fn placed(i: usize) -> Arc<Event> {
    let e = serde_json::json!({"specversion": "1.0", "id": format!("b{i}"), "source": "/bench", "type": "order.placed",
        "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": format!("c{i}"),
        "data": {"order_id": format!("o{i}"), "total": "59.00", "currency": "EUR",
                 "items": [{"sku": "cd-1", "name": "Blue Train", "category": "jazz", "quantity": 1, "unit_price": "59.00"}],
                 "customer": {"email": format!("c{i}@example.com"), "name": format!("Customer {i}")}}});
    Arc::new(Event::from_structured(e.to_string().as_bytes()).unwrap())
}

/// N confirmation emails queued in a fresh store.
fn queue(cfg: &Config, n: usize) {
    let catalog = aftercare::service::load_catalog(&cfg.sequences.dir).unwrap();
    let mut a = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut store = aftercare::store::open(&cfg.store.url).unwrap();
    let events: Vec<Arc<Event>> = (0..n).map(placed).collect();
    for chunk in events.chunks(2000) {
        a.apply(&mut *store, chunk, chrono::Utc::now()).unwrap();
    }
}

fn sent(cfg: &Config) -> i64 {
    let mut store = aftercare::store::open(&cfg.store.url).unwrap();
    store
        .counts()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "emails sent")
        .map_or(0, |(_, v)| v)
}

/// The outbox worker from `n` queued emails to the last recorded as sent; emails/s.
fn outbox(port: u16, n: usize, run: usize) -> f64 {
    let dir =
        std::env::temp_dir().join(format!("aftercare-mail-bench-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(port, &dir);
    queue(&cfg, n);
    let delivery = cfg.delivery().unwrap();
    let catalog = aftercare::service::load_catalog(&cfg.sequences.dir).unwrap();
    let engine = Arc::new(Engine::new(Arc::new(catalog), Policy::default()));
    let store = aftercare::store::open(&cfg.store.url).unwrap();
    let sender = Sender::new(&cfg, delivery, store, engine).unwrap();
    let stop = aftercare::service::Shutdown::new();
    let s = stop.clone();
    let started = Instant::now();
    let worker = std::thread::spawn(move || sender.run(&s));
    while sent(&cfg) < n as i64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.trigger();
    worker.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// The confirmation email as the worker composes it, rendered once.
fn prerendered(cfg: &Config) -> aftercare::mail::Outgoing {
    let catalog = aftercare::service::load_catalog(&cfg.sequences.dir).unwrap();
    let rendered = catalog
        .templates
        .render("fulfilment/confirmation", None, &sample())
        .unwrap();
    let composer = aftercare::service::composer(cfg, &cfg.delivery().unwrap()).unwrap();
    let row = aftercare::store::OutboxRow {
        key: "j1:confirmation".into(),
        customer: "c1".into(),
        journey: "j1".into(),
        sequence: "fulfilment".into(),
        version: "v".into(),
        step: "confirmation".into(),
        order_id: Some("o1".into()),
        template: "fulfilment/confirmation".into(),
        endpoint: None,
        category: "transactional".into(),
        transactional: true,
        created_at: chrono::Utc::now(),
        attempts: 0,
        claim: 1,
        claimed_until: chrono::Utc::now(),
        trace: None,
    };
    let links = composer.links("c1", "transactional");
    composer
        .compose(
            &row,
            Some("Customer 1"),
            "c1@example.com",
            &rendered,
            &links,
            None,
        )
        .unwrap()
}

/// The floor: one pre-rendered message sent `n` times through the SMTP transport alone
/// (connections with TCP_NODELAY, lettre's client), `concurrency` at once; emails/s.
fn floor(cfg: &Config, mail: &aftercare::mail::Outgoing, n: usize, concurrency: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _inside = rt.enter();
    let delivery = cfg.delivery().unwrap();
    let t = Arc::new(
        aftercare::service::transport(cfg, &delivery)
            .unwrap()
            .open(),
    );
    let mail = Arc::new(mail.clone());
    rt.block_on(async {
        let started = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (t, mail) = (t.clone(), mail.clone());
            tasks.push(tokio::spawn(async move {
                t.send(&mail, Duration::from_secs(60)).await.unwrap();
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
}

/// For reference: lettre's own pooled transport, which leaves Nagle's algorithm on.
fn lettre_pool(
    port: u16,
    mail: &aftercare::mail::Outgoing,
    n: usize,
    concurrency: usize,
    pool: u32,
) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Arc::new(
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(pool))
                .build(),
        );
        let (envelope, bytes) = (mail.envelope.clone(), Arc::new(mail.bytes.clone()));
        let started = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (t, envelope, bytes) = (t.clone(), envelope.clone(), bytes.clone());
            tasks.push(tokio::spawn(async move {
                t.send_raw(&envelope, &bytes).await.unwrap();
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
}

fn sample() -> minijinja::Value {
    context! {
        customer => context! { id => "c1", name => "Customer 1", email => "c1@example.com" },
        order => context! { id => "o1", total => 59.0, currency => "EUR",
            items => vec![context! { sku => "cd-1", name => "Blue Train", quantity => 1, unit_price => 59.0 }] },
        journey => context! { id => "j1", sequence => "fulfilment", step => "confirmation" },
        unsubscribe_url => "https://mail.example.com/u/t",
        preferences_url => "https://mail.example.com/preferences/t",
    }
}

/// Render time of the confirmation email (subject, MJML body, text), µs per email.
fn render_us(cfg: &Config, n: usize) -> f64 {
    let catalog = aftercare::service::load_catalog(&cfg.sequences.dir).unwrap();
    let ctx = sample();
    let started = Instant::now();
    for _ in 0..n {
        let r = catalog
            .templates
            .render("fulfilment/confirmation", None, &ctx)
            .unwrap();
        std::hint::black_box(r);
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("MAIL_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _sink = Sink::start(port);
    let cfg = config(port, &PathBuf::from("/tmp"));
    let (concurrency, pool) = (cfg.mail.concurrency, cfg.mail.smtp.pool_size);
    println!(
        "{n} emails to aiosmtpd (discarding), concurrency {concurrency}, pool {pool}; medians of {runs} runs"
    );
    let mail = prerendered(&cfg);
    println!("one email: {} bytes", mail.bytes.len());
    let floors: Vec<f64> = (0..runs)
        .map(|_| floor(&cfg, &mail, n, concurrency))
        .collect();
    let stock = lettre_pool(port, &mail, n.min(1_000), concurrency, pool);
    let outboxes: Vec<f64> = (0..runs).map(|r| outbox(port, n, r)).collect();
    let renders: Vec<f64> = (0..runs).map(|_| render_us(&cfg, 2_000)).collect();
    let (f, o, r) = (median(floors), median(outboxes), median(renders));
    println!("floor, the SMTP transport sending one pre-rendered message: {f:>8.0} emails/s");
    println!("  (lettre's stock pool, Nagle on: {stock:.0} emails/s)");
    println!(
        "outbox worker (claim, render MJML, compose, send, record): {o:>8.0} emails/s = {:.0}% of the floor",
        100.0 * o / f
    );
    println!("render, subject + MJML body + text:             {r:>8.0} µs per email");
}
