//! The soak: the release binary at a steady rate for minutes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::common::service::wait_until;
use crate::common::tansu::Tansu;
use crate::harness::*;

/// The soak (issue 6, item 7): `aftercare run` (release binary, SQLite, SMTP to aiosmtpd)
/// fed `rate` new orders per second for `secs` seconds, each with an immediate confirmation
/// email. Every 10 s: RSS and lag (events published minus processed). At the end: the p99 of
/// event-to-SMTP hand-off (publish time to the relay's acceptance) for those emails.
pub(crate) fn soak(kafka: &Tansu, secs: u64, rate: u64) {
    let brokers = kafka.brokers.as_str();
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("aftercare-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut smtp = Command::new("python3")
        .arg(root().join("tests/smtp/server.py"))
        .args(["--port", &port.to_string(), "--out"])
        .arg(dir.join("smtp"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd");
    let mut ready = String::new();
    std::io::BufReader::new(smtp.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let (url, _d) = sqlite_url("soak");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .arg("run")
        .current_dir(root())
        .env("AFTERCARE_KAFKA__BROKERS", brokers)
        .env("AFTERCARE_KAFKA__GROUP_ID", "soak")
        .env("AFTERCARE_KAFKA__TOPICS", "soak")
        .env("AFTERCARE_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("AFTERCARE_KAFKA__MAX_POLL_INTERVAL_MS", "6000")
        .env("AFTERCARE_STORE__URL", &url)
        .env("AFTERCARE_MAIL__TRANSPORT", "smtp")
        .env("AFTERCARE_MAIL__SMTP__HOST", "127.0.0.1")
        .env("AFTERCARE_MAIL__SMTP__PORT", port.to_string())
        .env("AFTERCARE_MAIL__SMTP__TLS", "none")
        .env("AFTERCARE_HTTP__LISTEN", "127.0.0.1:0")
        .env(
            "AFTERCARE_SIGNING_KEY",
            "soak-signing-key-of-at-least-32-bytes",
        )
        .env("AFTERCARE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("aftercare run");
    let rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    // CPU seconds a process has used.
    let cpu = |pid: u32| stat_ticks(Path::new(&format!("/proc/{pid}/stat"))) as f64 / 100.0;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut published_at: std::collections::HashMap<String, f64> = Default::default();
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let publish = |order: &str, customer: &str| {
        let e = serde_json::json!({"specversion": "1.0", "id": order, "source": "/soak", "type": "order.placed",
            "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": customer,
            "data": {"order_id": order, "total": 9, "currency": "EUR", "items": [],
                     "customer": {"email": format!("{customer}@example.com"), "name": "Soak"}}})
        .to_string();
        while producer
            .send(BaseRecord::to("soak").key(customer).payload(&e))
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Timing starts once the engine has joined its group and sent a first email: the group
    // join (seconds with tansu) is start-up, not hand-off.
    publish("warm-up", "warm-up");
    producer.flush(Duration::from_secs(30)).unwrap();
    wait_until(120, "the first email sent", || {
        count(&url, "emails sent") >= 1
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let mut samples = Vec::new();
    let broker_pid = kafka.pid();
    let mut last_cpu = (cpu(broker_pid), cpu(child.id()), Instant::now());
    let mut next_sample = Duration::from_secs(10);
    while started.elapsed() < Duration::from_secs(secs) {
        // Paced: the orders due by now go out, then a short nap.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let order = format!("s{sent}");
            published_at.insert(order.clone(), epoch());
            publish(&order, &format!("c{sent}"));
            sent += 1;
        }
        if started.elapsed() >= next_sample {
            let processed = count(&url, "events processed") - 1;
            let emailed = count(&url, "emails sent") - 1;
            let now = (cpu(broker_pid), cpu(child.id()), Instant::now());
            let span = now.2.duration_since(last_cpu.2).as_secs_f64();
            samples.push((
                started.elapsed().as_secs(),
                rss(child.id()),
                sent as i64 - processed,
                sent as i64 - emailed,
                100.0 * (now.0 - last_cpu.0) / span,
                100.0 * (now.1 - last_cpu.1) / span,
            ));
            last_cpu = now;
            next_sample += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    // Whatever is still queued is sent, however long that takes: a backlog shows in the
    // hand-off figures, not as a failed run.
    let drain = Instant::now();
    while count(&url, "emails sent") <= sent as i64 && drain.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let _ = smtp.kill();
    let _ = smtp.wait();
    // Hand-off: the relay's acceptance time minus the order's publish time, per email.
    let mut handoff: Vec<f64> = std::fs::read_to_string(dir.join("smtp/log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reply"] == 250)
        .filter_map(|v| {
            let subject = v["subject"].as_str()?;
            let order = subject
                .split_whitespace()
                .find(|w| w.starts_with('s') && w[1..].chars().all(|c| c.is_ascii_digit()))?;
            Some((v["at"].as_f64()? - published_at.get(order)?) * 1000.0)
        })
        .collect();
    // Where the time goes: publish to the committed decision (ingest) and the committed
    // decision to the recorded acceptance (outbox), per email, from the store.
    let (mut ingest, mut outbox) = (Vec::new(), Vec::new());
    {
        let db = rusqlite::Connection::open(url.trim_start_matches("sqlite://")).unwrap();
        let mut stmt = db
            .prepare("SELECT order_id, created_at, sent_at FROM outbox WHERE sent_at IS NOT NULL")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .unwrap();
        for (order, created, sent) in rows.flatten() {
            if let Some(at) = published_at.get(&order) {
                ingest.push(created as f64 / 1000.0 - at * 1000.0);
                outbox.push((sent - created) as f64 / 1000.0);
            }
        }
    }
    let quantile = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let split = format!(
        "publish to committed decision p50 {:.0} ms, p99 {:.0} ms; committed decision to recorded acceptance p50 {:.0} ms, p99 {:.0} ms",
        quantile(&mut ingest, 0.5),
        quantile(&mut ingest, 0.99),
        quantile(&mut outbox, 0.5),
        quantile(&mut outbox, 0.99)
    );
    handoff.sort_by(f64::total_cmp);
    let q = |p: f64| {
        handoff
            .get(((handoff.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    // After a minute of warm-up (all samples in a shorter run).
    let warm = if secs > 120 { 60 } else { 0 };
    let steady: Vec<_> = samples.iter().filter(|s| s.0 >= warm).collect();
    let base = steady.first().map_or(0.0, |s| s.1);
    let (lo, hi) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    let max_lag = samples.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "soak: {secs} s at {rate} orders/s ({sent} orders, one immediate email each; {} emails timed)",
        handoff.len()
    );
    for (t, r, lag, unsent, broker, engine) in &samples {
        println!(
            "  t={t:>4} s  RSS {r:>6.1} MiB  lag {lag:>6} events  {unsent:>6} emails not yet sent  CPU: broker {broker:>3.0}%, aftercare {engine:>3.0}%"
        );
    }
    println!(
        "soak: RSS after warm-up {lo:.1}-{hi:.1} MiB ({:+.1}% / {:+.1}% of {base:.1}); max lag {max_lag} events; \
         event-to-SMTP hand-off p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        100.0 * (lo - base) / base,
        100.0 * (hi - base) / base,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!("soak: {split}");
}
