//! Configuration: defaults → TOML file → `AFTERCARE_*` environment, then validated.
//!
//! Every key can be set from the environment with `__` between levels
//! (`AFTERCARE_KAFKA__BROKERS`). Secrets come only from the environment and never from the
//! file, so a config file can be committed.

use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};

use crate::engine::Policy;
use crate::engine::experiment::GlobalHoldout;
use crate::sequence::Limits;
use crate::time::{Period, QuietHours, parse_tz};

/// The file read when `-c` is not given.
pub const DEFAULT_PATH: &str = "config/aftercare.toml";

/// Environment variables that hold secrets rather than config keys.
const SECRETS: &[&str] = &[
    "AFTERCARE_SMTP_PASSWORD",
    "AFTERCARE_SIGNING_KEY",
    "AFTERCARE_ADMIN_TOKEN",
];

/// Environment variables read by aftercare that are not config keys (`AFTERCARE_TEST_*` are
/// the test suite's own).
const OTHER_VARS: &[&str] = &["AFTERCARE_LOG", "AFTERCARE_FAULT"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub kafka: Kafka,
    pub store: Store,
    pub mail: Mail,
    pub policy: PolicyConfig,
    pub experiments: Experiments,
    pub http: Http,
    pub sequences: Sequences,
    pub log: Log,
    pub trace: Trace,
    /// `[webhooks.NAME]`: where webhook steps post (SPEC §9).
    pub webhooks: std::collections::BTreeMap<String, crate::webhook::Raw>,
    #[serde(skip)]
    pub secrets: Secrets,
    /// What [`Config::settings`] made of it at load.
    #[serde(skip)]
    checked: Option<Settings>,
}

/// The configuration's second stage: every value checked for what it means, in its checked
/// form, for the service to run on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    pub delivery: Delivery,
    pub retention: Retention,
    pub intervals: Intervals,
    pub limits: Limits,
    pub webhooks: std::sync::Arc<crate::webhook::Endpoints>,
}

/// The service's periods.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    /// How often the store-backed figures are recomputed.
    pub figures_refresh: std::time::Duration,
    /// The NPS window.
    pub nps_window: chrono::Duration,
    /// How often the sequences folder is looked at.
    pub watch: std::time::Duration,
}

/// What a check found wrong: each key with why, all of them.
pub type Problems = Vec<(String, String)>;

/// The problems found so far.
#[derive(Default)]
struct Gather(Problems);

impl Gather {
    /// The value, or `None` with its problem noted.
    fn ok<T>(&mut self, r: Result<T, (String, String)>) -> Option<T> {
        r.map_err(|p| self.0.push(p)).ok()
    }

    fn fail<T>(&mut self, key: &str, message: impl Into<String>) -> Option<T> {
        self.0.push((key.to_string(), message.into()));
        None
    }

    /// Notes `key` when its value `v` is under `min`.
    fn at_least(&mut self, key: &str, v: u64, min: u64) {
        if v < min {
            self.fail::<()>(key, format!("must be at least {min}"));
        }
    }

    /// One section checked alone: its value, or its first problem.
    fn first<T>(check: impl FnOnce(&mut Gather) -> Option<T>) -> Result<T, (String, String)> {
        let mut g = Gather::default();
        let v = check(&mut g);
        match (v, g.0.into_iter().next()) {
            (Some(v), None) => Ok(v),
            (_, Some(p)) => Err(p),
            (None, None) => Err(("config".into(), "invalid".into())),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kafka {
    /// `host:port,host:port`.
    pub brokers: String,
    pub group_id: String,
    #[serde(deserialize_with = "list_or_csv")]
    pub topics: Vec<String>,
    pub dlq_topic: String,
    /// Consumer group session timeout; a dead member's partitions move after this long.
    pub session_timeout_ms: u64,
    /// librdkafka drops a consumer from the group that does not poll for this long.
    pub max_poll_interval_ms: u64,
    /// Longest a fetch waits at the broker for new messages (librdkafka's `fetch.wait.max.ms`):
    /// Kafka answers as soon as a message arrives, but brokers that do not (tansu 0.6) answer
    /// only when this runs out, which then bounds the latency of a quiet stream.
    pub fetch_wait_ms: u64,
    /// Larger messages go to the dead-letter topic unread.
    pub max_event_bytes: usize,
    /// A dead letter the topic refuses as too large is published with its value cut to this
    /// many bytes (the store keeps it whole).
    pub dlq_max_bytes: usize,
    /// Most bytes of messages held in memory: fetched ahead by the client, buffered, and in the
    /// batch being applied.
    pub buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `sqlite://path` (embedded default) or `postgres://...`.
    pub url: String,
    /// How long processed-event keys are kept for dedupe.
    pub dedupe_retention: String,
    /// How long timeline lines are kept, counted from when they were written.
    pub timeline_retention: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    pub transport: Transport,
    pub from: String,
    /// An address for `mailto:` unsubscribes in `List-Unsubscribe` (optional).
    pub unsubscribe_mailto: Option<String>,
    /// Emails being sent at once.
    pub concurrency: usize,
    /// Most emails per second; 0 is no limit.
    pub rate_limit: f64,
    /// Deadline of one send; past it the send is ambiguous (the server may have accepted it).
    pub send_timeout: String,
    pub retry: Retry,
    pub smtp: Smtp,
    pub file: FileMail,
    pub dkim: Option<Dkim>,
}

/// Backoff for 4xx replies and connection errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Wait before the first retry; doubled after each.
    pub first: String,
    /// The longest wait between two attempts.
    pub max: String,
    /// An email still failing this long after it was queued is recorded as failed.
    pub give_up_after: String,
}

/// DKIM signing (relaxed/relaxed), when configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dkim {
    pub selector: String,
    /// The signing domain (`d=`); default the From address's domain.
    pub domain: Option<String>,
    /// The private key: an RSA key in PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), or an Ed25519 seed
    /// in base64 (32 bytes).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Smtp,
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub tls: Tls,
    /// A PEM certificate to trust besides the public roots (a private relay's CA).
    pub ca_file: Option<PathBuf>,
    /// Connections kept open to the relay.
    pub pool_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileMail {
    pub dir: PathBuf,
}

/// How long the store keeps what it needs only for a while (`store.*_retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Processed-event keys: a redelivery older than this applies again.
    pub dedupe: chrono::Duration,
    /// Timeline lines, from when they were written (not the decision's time: a replay of
    /// old events is kept as long as a live one).
    pub timeline: chrono::Duration,
}

impl Retention {
    /// How long processed-event keys are kept: the dedupe window, and never longer than the
    /// timeline (SPEC §7: `timeline_retention` prunes both).
    pub fn dedupe_keys(&self) -> chrono::Duration {
        self.dedupe.min(self.timeline)
    }
}

/// `policy.*` as written; [`Config::policy`] gives the checked form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub min_gap: String,
    pub quiet_hours: Option<String>,
    pub max_event_age: String,
    /// Timezone for customers whose profile has none.
    pub timezone: String,
    /// A bounced address gets no transactional email either (order updates included).
    pub bounce_stops_transactional: bool,
}

/// Experiments across sequences (SPEC §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiments {
    /// The share of all customers held out of every marketing sequence, `0%` (off) to `50%`.
    pub global_holdout: String,
    /// Draws the global holdout group: changing it draws the group anew.
    pub global_salt: String,
}

impl Default for Experiments {
    fn default() -> Experiments {
        Experiments {
            global_holdout: "0%".into(),
            global_salt: "aftercare".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: String,
    /// The base of links put in emails, e.g. `https://mail.example.com`.
    pub public_url: String,
    /// How often the figures that need the store (journeys, outbox depth, retention, NPS)
    /// are recomputed for `/metrics`, the admin API and the dashboard.
    pub figures_refresh: String,
    /// The window NPS is computed over, back from now.
    pub nps_window: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sequences {
    pub dir: PathBuf,
    /// Watch `dir` while running: a changed file is validated and, if good, becomes the
    /// version new journeys start on.
    pub watch: bool,
    /// How often the folder is looked at.
    pub watch_interval: String,
    /// Larger sequence and template files are refused unread.
    pub max_file_bytes: usize,
    /// Deepest nesting of YAML mappings and lists (block or flow style).
    pub max_depth: usize,
    /// Most nodes that YAML aliases may expand to in one file.
    pub max_alias_nodes: usize,
    /// MiniJinja's fuel for one render of one template part: bounds its time and memory.
    pub template_fuel: u64,
    /// MiniJinja's recursion limit (includes and macros count several levels each).
    pub template_recursion: usize,
}

/// Logs on stderr.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (for people) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// A filter in `tracing` syntax: `info`, `aftercare=debug,rdkafka=warn`.
    /// `AFTERCARE_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Distributed tracing: spans exported with OTLP over HTTP when an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trace {
    /// The collector's traces URL, e.g. `http://otel-collector:4318/v1/traces`; empty = off.
    pub otlp_endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    pub protocol: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            otlp_endpoint: String::new(),
            protocol: "http/protobuf".into(),
            service_name: "aftercare".into(),
        }
    }
}

/// `mail.*` checked: what the outbox worker needs besides the transport.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub from: lettre::message::Mailbox,
    pub unsubscribe_mailto: Option<lettre::Address>,
    pub concurrency: usize,
    pub rate_limit: f64,
    pub send_timeout: std::time::Duration,
    pub retry_first: std::time::Duration,
    pub retry_max: std::time::Duration,
    pub give_up_after: std::time::Duration,
}

/// Secrets, from the environment only.
#[derive(Clone, Default)]
pub struct Secrets {
    pub smtp_password: Option<String>,
    pub signing_key: Option<String>,
    pub admin_token: Option<String>,
    /// `AFTERCARE_WEBHOOK_SECRET_<NAME>`, by variable name.
    pub webhooks: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Secrets")
            .field("smtp_password", &set(&self.smtp_password))
            .field("signing_key", &set(&self.signing_key))
            .field("admin_token", &set(&self.admin_token))
            .field("webhooks", &self.webhooks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Kafka {
    fn default() -> Kafka {
        Kafka {
            brokers: "localhost:9092".into(),
            group_id: "aftercare".into(),
            topics: vec!["orders".into(), "support".into()],
            dlq_topic: "aftercare.dlq".into(),
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            fetch_wait_ms: 100,
            max_event_bytes: crate::event::MAX_EVENT_BYTES,
            dlq_max_bytes: 900_000,
            buffer_bytes: 64 << 20,
        }
    }
}

impl Default for Store {
    fn default() -> Store {
        Store {
            url: "sqlite://aftercare.db".into(),
            dedupe_retention: "30d".into(),
            timeline_retention: "400d".into(),
        }
    }
}

impl Default for Mail {
    fn default() -> Mail {
        Mail {
            transport: Transport::File,
            from: "Shop <shop@example.com>".into(),
            unsubscribe_mailto: None,
            concurrency: 8,
            rate_limit: 0.0,
            send_timeout: "60s".into(),
            retry: Retry::default(),
            smtp: Smtp::default(),
            file: FileMail::default(),
            dkim: None,
        }
    }
}

impl Default for Smtp {
    fn default() -> Smtp {
        Smtp {
            host: "localhost".into(),
            port: 587,
            username: None,
            tls: Tls::Starttls,
            ca_file: None,
            pool_size: 8,
        }
    }
}

impl Default for Retry {
    /// In the spirit of RFC 5321 and Postfix: minutes at first, at most an hour apart, for
    /// five days.
    fn default() -> Retry {
        Retry {
            first: "5m".into(),
            max: "1h".into(),
            give_up_after: "5d".into(),
        }
    }
}

impl Default for FileMail {
    fn default() -> FileMail {
        FileMail { dir: "mail".into() }
    }
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig {
            min_gap: "0s".into(),
            quiet_hours: None,
            max_event_age: "7d".into(),
            timezone: "UTC".into(),
            bounce_stops_transactional: true,
        }
    }
}

impl Default for Http {
    fn default() -> Http {
        Http {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://localhost:8080".into(),
            figures_refresh: "30s".into(),
            nps_window: "90d".into(),
        }
    }
}

impl Default for Sequences {
    fn default() -> Sequences {
        Sequences {
            dir: "sequences".into(),
            watch: true,
            watch_interval: "2s".into(),
            max_file_bytes: Limits::default().max_file_bytes,
            max_depth: Limits::default().max_depth,
            max_alias_nodes: Limits::default().max_alias_nodes,
            template_fuel: Limits::default().template_fuel,
            template_recursion: Limits::default().template_recursion,
        }
    }
}

/// A config problem, naming where it came from (the file or the environment variable).
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    })
}

impl Config {
    /// Loads `path` (or the default file when present), then the environment.
    /// `required` says whether a missing file is an error (`-c` given) or means defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AFTERCARE_"))
            .collect();
        Config::load_with(path, &env)
    }

    /// As [`Config::load`], with the environment given (tests set it without touching the process).
    pub fn load_with(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let (file, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let shown = file.display().to_string();
        let mut table = read_table(&file, required, &shown)?;
        let (from_env, secrets) = apply_env(&mut table, env)?;
        let mut config: Config = table.try_into().map_err(|e: toml::de::Error| {
            let message = e.to_string().trim().replace('\n', " ");
            // Blame the environment variable when the failing key came from one.
            let origin = from_env
                .iter()
                .find(|(key, _)| message.contains(&format!("`{key}`")))
                .map_or(shown.clone(), |(_, var)| var.clone());
            ConfigError { origin, message }
        })?;
        config.secrets = secrets;
        let settings = config
            .check()
            .map_err(|problems| problems_error(&problems, &from_env, &shown))?;
        config.checked = Some(settings);
        Ok(config)
    }

    /// Second stage: values that parse as TOML but mean nothing (a bad duration, zone, URL),
    /// every one found, and the checked values (as checked at load, when loaded).
    pub fn settings(&self) -> Result<Settings, Problems> {
        match &self.checked {
            Some(s) => Ok(s.clone()),
            None => self.check(),
        }
    }

    fn check(&self) -> Result<Settings, Problems> {
        let mut g = Gather::default();
        let policy = self.policy_in(&mut g);
        let delivery = self.delivery_in(&mut g);
        let retention = self.retention_in(&mut g);
        let intervals = self.intervals_in(&mut g);
        let limits = self.limits_in(&mut g);
        let webhooks = self.webhooks_in(&mut g);
        self.check_rest(&mut g);
        match (policy, delivery, retention, intervals, limits) {
            (Some(policy), Some(delivery), Some(retention), Some(intervals), Some(limits))
                if g.0.is_empty() =>
            {
                Ok(Settings {
                    policy,
                    delivery,
                    retention,
                    intervals,
                    limits,
                    webhooks: std::sync::Arc::new(webhooks),
                })
            }
            _ => Err(g.0),
        }
    }

    /// The checks whose values are used as written.
    fn check_rest(&self, g: &mut Gather) {
        if self.kafka.buffer_bytes < 1 << 20 {
            g.fail::<()>("kafka.buffer_bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.kafka.dlq_max_bytes < 1024 {
            g.fail::<()>("kafka.dlq_max_bytes", "must be at least 1024");
        }
        self.check_trace(g);
        let url = &self.store.url;
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            g.fail::<()>(
                "store.url",
                format!("`{url}` must start with sqlite:// or postgres://"),
            );
        }
        if self.kafka.topics.is_empty() {
            g.fail::<()>("kafka.topics", "at least one topic is needed");
        }
        let public = &self.http.public_url;
        if !(public.starts_with("http://") || public.starts_with("https://")) {
            g.fail::<()>(
                "http.public_url",
                format!("`{public}` must be an http:// or https:// URL"),
            );
        }
    }

    /// Every `[webhooks.NAME]`, checked with its secret; a name sequences can use.
    fn webhooks_in(&self, g: &mut Gather) -> crate::webhook::Endpoints {
        let mut out = crate::webhook::Endpoints::new();
        for (name, raw) in &self.webhooks {
            let word = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !word {
                g.fail::<()>(
                    &format!("webhooks.{name}"),
                    "an endpoint's name may only use letters, digits, - and _ (at most 64)",
                );
                continue;
            }
            let secret = self.secrets.webhooks.get(&crate::webhook::secret_var(name));
            match crate::webhook::Endpoint::check(name, raw, secret.map(String::as_str)) {
                Ok(e) => {
                    out.insert(name.clone(), e);
                }
                Err(problems) => g.0.extend(problems),
            }
        }
        out
    }

    /// The trace exporter's protocol and endpoint (empty for none).
    fn check_trace(&self, g: &mut Gather) {
        if !matches!(self.trace.protocol.as_str(), "http/protobuf" | "http/json") {
            g.fail::<()>(
                "trace.protocol",
                format!(
                    "`{}` must be http/protobuf or http/json",
                    self.trace.protocol
                ),
            );
        }
        let endpoint = &self.trace.otlp_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            g.fail::<()>(
                "trace.otlp_endpoint",
                format!("`{endpoint}` must be an http:// or https:// URL"),
            );
        }
    }

    /// The sending policy, checked.
    pub fn policy(&self) -> Result<Policy, (String, String)> {
        Gather::first(|g| self.policy_in(g))
    }

    fn policy_in(&self, g: &mut Gather) -> Option<Policy> {
        let p = &self.policy;
        let period = |key: &str, v: &str| {
            v.parse::<Period>()
                .map_err(|m| (format!("policy.{key}"), m))
        };
        let min_gap = g.ok(period("min_gap", &p.min_gap));
        let max_event_age = g.ok(period("max_event_age", &p.max_event_age));
        let quiet_hours = g.ok(p
            .quiet_hours
            .as_deref()
            .filter(|q| !q.is_empty() && *q != "off")
            .map(|q| {
                q.parse::<QuietHours>()
                    .map_err(|m| ("policy.quiet_hours".to_string(), m))
            })
            .transpose());
        let timezone = g.ok(parse_tz(&p.timezone).map_err(|m| ("policy.timezone".to_string(), m)));
        let global_holdout = g.ok(self.global_holdout());
        Some(Policy {
            min_gap: min_gap?,
            max_event_age: max_event_age?,
            quiet_hours: quiet_hours?,
            timezone: timezone?,
            bounce_stops_transactional: p.bounce_stops_transactional,
            global_holdout: global_holdout?,
            coupon_key: self
                .secrets
                .signing_key
                .as_ref()
                .map(|k| crate::engine::coupon::key_from(k.as_bytes()).into()),
        })
    }

    /// `experiments.global_holdout` (0% is off, at most 50%) with its salt.
    fn global_holdout(&self) -> Result<Option<GlobalHoldout>, (String, String)> {
        let x = &self.experiments;
        let share = crate::engine::experiment::parse_share(&x.global_holdout)
            .filter(|p| *p <= 5_000)
            .ok_or_else(|| {
                (
                    "experiments.global_holdout".to_string(),
                    format!(
                        "`{}` is not a share from 0% to 50%: write it like \"2%\" (\"0%\" is off)",
                        x.global_holdout
                    ),
                )
            })?;
        let salt_ok = !x.global_salt.is_empty()
            && x.global_salt.len() <= 100
            && !x.global_salt.chars().any(char::is_control);
        if !salt_ok {
            return Err((
                "experiments.global_salt".to_string(),
                "must be 1 to 100 characters with no control characters".to_string(),
            ));
        }
        Ok((share > 0).then(|| GlobalHoldout {
            share,
            salt: x.global_salt.as_str().into(),
        }))
    }

    /// The delivery settings, checked.
    pub fn delivery(&self) -> Result<Delivery, (String, String)> {
        Gather::first(|g| self.delivery_in(g))
    }

    fn delivery_in(&self, g: &mut Gather) -> Option<Delivery> {
        let m = &self.mail;
        let (from, unsubscribe_mailto) = self.addresses_in(g);
        let concurrency = match m.concurrency {
            0 => g.fail("mail.concurrency", "must be at least 1"),
            n => Some(n),
        };
        let rate_limit = match m.rate_limit {
            r if r >= 0.0 && r.is_finite() => Some(r),
            _ => g.fail(
                "mail.rate_limit",
                "must be 0 (no limit) or a positive number of emails per second",
            ),
        };
        let send_timeout = g.ok(mail_period("send_timeout", &m.send_timeout));
        let retry_first = g.ok(mail_period("retry.first", &m.retry.first));
        let retry_max = g.ok(mail_period("retry.max", &m.retry.max));
        let give_up_after = g.ok(mail_period("retry.give_up_after", &m.retry.give_up_after));
        Some(Delivery {
            from: from?,
            unsubscribe_mailto: unsubscribe_mailto?,
            concurrency: concurrency?,
            rate_limit: rate_limit?,
            send_timeout: send_timeout?,
            retry_first: retry_first?,
            retry_max: retry_max?,
            give_up_after: give_up_after?,
        })
    }

    /// The sender's address and the unsubscribe address, each checked.
    fn addresses_in(
        &self,
        g: &mut Gather,
    ) -> (
        Option<lettre::message::Mailbox>,
        Option<Option<lettre::Address>>,
    ) {
        let m = &self.mail;
        let from = g.ok(m
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| ("mail.from".to_string(), format!("`{}`: {e}", m.from))));
        let unsubscribe_mailto = g.ok(m
            .unsubscribe_mailto
            .as_deref()
            .map(|a| {
                a.parse::<lettre::Address>()
                    .map_err(|e| ("mail.unsubscribe_mailto".to_string(), format!("`{a}`: {e}")))
            })
            .transpose());
        (from, unsubscribe_mailto)
    }

    fn intervals_in(&self, g: &mut Gather) -> Option<Intervals> {
        let positive = |key: &str, v: &str| match v.parse::<Period>() {
            Ok(p) if !p.is_zero() => Ok(p.0),
            Ok(_) => Err((key.to_string(), "must be longer than 0s".to_string())),
            Err(m) => Err((key.to_string(), m)),
        };
        let std = |key: &str, d: chrono::Duration| {
            d.to_std().map_err(|e| (key.to_string(), e.to_string()))
        };
        let refresh = g.ok(positive("http.figures_refresh", &self.http.figures_refresh)
            .and_then(|d| std("http.figures_refresh", d)));
        let window = g.ok(positive("http.nps_window", &self.http.nps_window));
        let watch = g.ok(
            positive("sequences.watch_interval", &self.sequences.watch_interval)
                .and_then(|d| std("sequences.watch_interval", d)),
        );
        Some(Intervals {
            figures_refresh: refresh?,
            nps_window: window?,
            watch: watch?,
        })
    }

    /// How long processed-event keys (the dedupe window) and timeline lines are kept, checked.
    pub fn retention(&self) -> Result<Retention, (String, String)> {
        Gather::first(|g| self.retention_in(g))
    }

    fn retention_in(&self, g: &mut Gather) -> Option<Retention> {
        let period = |key: &str, text: &str, zero: &str| match text.parse::<Period>() {
            Ok(p) if !p.is_zero() => Ok(p.0),
            Ok(_) => Err((key.to_string(), zero.to_string())),
            Err(m) => Err((key.to_string(), m)),
        };
        let dedupe = g.ok(period(
            "store.dedupe_retention",
            &self.store.dedupe_retention,
            "must be longer than 0s: a redelivered event would be applied twice",
        ));
        let timeline = g.ok(period(
            "store.timeline_retention",
            &self.store.timeline_retention,
            "must be longer than 0s: every decision would be deleted as it is written",
        ));
        Some(Retention {
            dedupe: dedupe?,
            timeline: timeline?,
        })
    }

    /// The limits on what sequence and template files may cost, checked.
    pub fn limits(&self) -> Result<Limits, (String, String)> {
        Gather::first(|g| self.limits_in(g))
    }

    fn limits_in(&self, g: &mut Gather) -> Option<Limits> {
        let s = &self.sequences;
        let before = g.0.len();
        g.at_least("sequences.max_file_bytes", s.max_file_bytes as u64, 1024);
        g.at_least("sequences.max_depth", s.max_depth as u64, 8);
        g.at_least("sequences.template_fuel", s.template_fuel, 1000);
        g.at_least(
            "sequences.template_recursion",
            s.template_recursion as u64,
            10,
        );
        if s.template_recursion > 500 {
            g.fail::<()>(
                "sequences.template_recursion",
                "must be at most 500 (MiniJinja's own limit)",
            );
        }
        if s.max_depth > 1000 {
            g.fail::<()>(
                "sequences.max_depth",
                "must be at most 1000: deeper trees can exhaust a thread's stack",
            );
        }
        (g.0.len() == before).then_some(Limits {
            max_file_bytes: s.max_file_bytes,
            max_depth: s.max_depth,
            max_alias_nodes: s.max_alias_nodes,
            template_fuel: s.template_fuel,
            template_recursion: s.template_recursion,
        })
    }

    /// Default timezone, for callers that only need it.
    pub fn timezone(&self) -> Tz {
        parse_tz(&self.policy.timezone).unwrap_or(Tz::UTC)
    }
}

/// `mail.{key}`'s period, which must be longer than 0s.
fn mail_period(key: &str, v: &str) -> Result<std::time::Duration, (String, String)> {
    match v.parse::<Period>() {
        Ok(p) if !p.is_zero() => {
            p.0.to_std()
                .map_err(|e| (format!("mail.{key}"), e.to_string()))
        }
        Ok(_) => Err((format!("mail.{key}"), "must be longer than 0s".into())),
        Err(e) => Err((format!("mail.{key}"), e)),
    }
}

/// The TOML table in `file` (shown as `shown`); an empty one when the file is missing and not
/// `required`.
fn read_table(file: &Path, required: bool, shown: &str) -> Result<toml::Table, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(src) => toml::from_str::<toml::Table>(&src).map_err(|e| ConfigError {
            origin: shown.to_string(),
            message: e.to_string().trim().replace('\n', "\n  "),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(toml::Table::new()),
        Err(e) => Err(ConfigError {
            origin: shown.to_string(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Sets the `AFTERCARE_*` variables in `env` over `table`, secrets aside: the keys set, as
/// (`kafka.brokers`, the variable's name), and the secrets.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(Vec<(String, String)>, Secrets), ConfigError> {
    let mut from_env = Vec::new();
    let mut secrets = Secrets::default();
    for (name, value) in env {
        match name.as_str() {
            "AFTERCARE_SMTP_PASSWORD" => secrets.smtp_password = Some(value.clone()),
            "AFTERCARE_SIGNING_KEY" => secrets.signing_key = Some(value.clone()),
            "AFTERCARE_ADMIN_TOKEN" => secrets.admin_token = Some(value.clone()),
            n if n.starts_with("AFTERCARE_WEBHOOK_SECRET_") => {
                secrets.webhooks.insert(n.to_string(), value.clone());
            }
            n if OTHER_VARS.contains(&n) || n.starts_with("AFTERCARE_TEST_") => {}
            _ => {
                let key = env_key(name)?;
                set_path(table, &key, parse_env_value(value)).map_err(|message| ConfigError {
                    origin: name.clone(),
                    message,
                })?;
                from_env.push((key.join("."), name.clone()));
            }
        }
    }
    Ok((from_env, secrets))
}

/// Every problem at once: the first as the error, blamed on the variable that set its key (or
/// the file), the others on lines of their own, each with its origin.
fn problems_error(
    problems: &[(String, String)],
    from_env: &[(String, String)],
    shown: &str,
) -> ConfigError {
    let origin_of = |key: &str| {
        from_env
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(shown.to_string(), |(_, var)| var.clone())
    };
    let mut lines = problems.iter();
    let Some((key, message)) = lines.next() else {
        return ConfigError {
            origin: shown.to_string(),
            message: "invalid".into(),
        };
    };
    let mut text = format!("{key}: {message}");
    for (key, message) in lines {
        text.push_str(&format!("\n  {}: {key}: {message}", origin_of(key)));
    }
    ConfigError {
        origin: origin_of(key),
        message: text,
    }
}

/// `AFTERCARE_KAFKA__BROKERS` → [`kafka`, `brokers`].
fn env_key(name: &str) -> Result<Vec<String>, ConfigError> {
    let rest = name.trim_start_matches("AFTERCARE_");
    if !rest.contains("__") {
        return Err(ConfigError {
            origin: name.to_string(),
            message: format!(
                "not a config key: nested keys use a double underscore (AFTERCARE_KAFKA__BROKERS); secrets are {}",
                SECRETS.join(", ")
            ),
        });
    }
    Ok(rest.split("__").map(|p| p.to_ascii_lowercase()).collect())
}

/// Numbers, booleans and `[lists]` are read as TOML; anything else is a string.
fn parse_env_value(raw: &str) -> toml::Value {
    let looks_typed =
        raw.starts_with('[') || raw == "true" || raw == "false" || raw.parse::<f64>().is_ok();
    if looks_typed
        && let Ok(t) = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        && let Some(v) = t.get("v")
    {
        return v.clone();
    }
    toml::Value::String(raw.to_string())
}

fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = key.split_last() else {
        return Err("empty key".into());
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("aftercare.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("aftercare-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn env_overrides_file_and_secrets_stay_out_of_the_file() {
        let d = tmpdir("env");
        let p = write(
            &d,
            "[kafka]\nbrokers = \"a:1\"\n[policy]\nmin_gap = \"1d\"\n",
        );
        let c = Config::load_with(
            Some(&p),
            &env(&[
                ("AFTERCARE_KAFKA__BROKERS", "b:2,c:3"),
                ("AFTERCARE_KAFKA__TOPICS", "orders,support,returns"),
                ("AFTERCARE_MAIL__SMTP__PORT", "2525"),
                ("AFTERCARE_SMTP_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2,c:3");
        assert_eq!(c.kafka.topics, ["orders", "support", "returns"]);
        assert_eq!(c.mail.smtp.port, 2525);
        assert_eq!(c.secrets.smtp_password.as_deref(), Some("hunter2"));
        assert_eq!(c.policy().unwrap().min_gap.to_string(), "1d");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// Every problem of the second stage at once, each with its key and where it came from,
    /// rather than one per start.
    #[test]
    fn every_problem_is_reported_at_once_with_its_key_and_origin() {
        let d = tmpdir("all");
        let p = write(
            &d,
            "[policy]\nmin_gap = \"0x\"\n[mail]\nconcurrency = 0\nrate_limit = -1.0\n",
        );
        let e = Config::load_with(Some(&p), &env(&[("AFTERCARE_STORE__URL", "mysql://db")]))
            .unwrap_err();
        let file = p.display().to_string();
        assert_eq!(e.origin, file);
        let lines: Vec<&str> = e.message.lines().collect();
        assert_eq!(lines.len(), 4, "{}", e.message);
        assert!(lines[0].starts_with("policy.min_gap: `0x`"), "{}", lines[0]);
        assert_eq!(
            &lines[1..],
            [
                format!("  {file}: mail.concurrency: must be at least 1"),
                format!("  {file}: mail.rate_limit: must be 0 (no limit) or a positive number of emails per second"),
                "  AFTERCARE_STORE__URL: store.url: `mysql://db` must start with sqlite:// or postgres://".to_string(),
            ]
        );
        // The one at a time checks still give their first problem.
        let c = Config {
            mail: Mail {
                concurrency: 0,
                ..Config::default().mail
            },
            ..Config::default()
        };
        assert_eq!(
            c.delivery().unwrap_err(),
            (
                "mail.concurrency".to_string(),
                "must be at least 1".to_string()
            )
        );
        assert!(c.settings().is_err());
    }

    /// `[webhooks.NAME]` from the file or the environment, its secret from the environment
    /// only; each problem named by its key.
    #[test]
    fn webhook_endpoints_are_checked_with_their_secrets() {
        let d = tmpdir("webhooks");
        let p = write(
            &d,
            "[webhooks.sms]\nurl = \"https://sms.example.com/send\"\nheaders = { authorization = \"Bearer t\" }\n",
        );
        // Read without its secret (validate, simulate and preview need none; `run` refuses).
        let c = Config::load_with(Some(&p), &[]).unwrap();
        let hooks = c.settings().unwrap().webhooks;
        assert_eq!(crate::webhook::missing_secrets(&hooks).len(), 1);
        let env = |k: &str, v: &str| (k.to_string(), v.to_string());
        let secret = env(
            "AFTERCARE_WEBHOOK_SECRET_SMS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let c = Config::load_with(Some(&p), std::slice::from_ref(&secret)).unwrap();
        let hooks = c.settings().unwrap().webhooks;
        assert_eq!(hooks["sms"].url.as_str(), "https://sms.example.com/send");
        assert_eq!(hooks["sms"].timeout, std::time::Duration::from_secs(10));
        // The secret is not a config key, and is never printed.
        assert!(!format!("{:?}", c.secrets).contains("MfKQ"));
        let e = Config::load_with(
            Some(&p),
            &[secret, env("AFTERCARE_WEBHOOKS__SMS__TIMEOUT", "1h")],
        )
        .unwrap_err();
        assert_eq!(e.origin, "AFTERCARE_WEBHOOKS__SMS__TIMEOUT");
        assert_eq!(
            e.message,
            "webhooks.sms.timeout: `1h` must be longer than 0s and at most 5m"
        );
    }

    #[test]
    fn the_global_holdout_is_a_share_up_to_half_with_its_salt() {
        let d = tmpdir("holdout");
        let p = write(&d, "[experiments]\nglobal_holdout = \"60%\"\n");
        let e = Config::load_with(Some(&p), &[]).unwrap_err();
        assert_eq!(
            e.message,
            "experiments.global_holdout: `60%` is not a share from 0% to 50%: write it like \"2%\" (\"0%\" is off)"
        );
        let p = write(
            &d,
            "[experiments]\nglobal_holdout = \"2.5%\"\nglobal_salt = \"q4\"\n",
        );
        let c = Config::load_with(Some(&p), &[]).unwrap();
        assert_eq!(
            c.settings().unwrap().policy.global_holdout,
            Some(GlobalHoldout {
                share: 250,
                salt: "q4".into()
            })
        );
        assert_eq!(
            Config::default().settings().unwrap().policy.global_holdout,
            None
        );
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let d = tmpdir("err");
        let p = write(&d, "[policy]\nmin_gap = \"3 days\"\n");
        let e = Config::load_with(Some(&p), &[]).unwrap_err();
        assert_eq!(e.origin, p.display().to_string());
        assert!(
            e.message
                .starts_with("policy.min_gap: `3 days` is not a duration"),
            "{}",
            e.message
        );

        let p = write(&d, "[store]\ndedupe_retention = \"0s\"\n");
        let e = Config::load_with(Some(&p), &[]).unwrap_err();
        assert_eq!(
            e.message,
            "store.dedupe_retention: must be longer than 0s: a redelivered event would be applied twice"
        );

        let p = write(&d, "[mail.smtp]\nport = \"x\"\n");
        let e = Config::load_with(Some(&p), &[]).unwrap_err();
        assert!(e.message.contains("mail.smtp.port"), "{}", e.message);

        // Delivery settings are checked at load, each naming its key.
        for (text, message) in [
            (
                "[mail.retry]\nfirst = \"0s\"\n",
                "mail.retry.first: must be longer than 0s",
            ),
            (
                "[mail]\nrate_limit = -1.0\n",
                "mail.rate_limit: must be 0 (no limit) or a positive number of emails per second",
            ),
            (
                "[mail]\nconcurrency = 0\n",
                "mail.concurrency: must be at least 1",
            ),
        ] {
            let p = write(&d, text);
            let e = Config::load_with(Some(&p), &[]).unwrap_err();
            assert_eq!(
                (e.origin.as_str(), e.message.as_str()),
                (p.to_str().unwrap(), message)
            );
        }
        let p = write(&d, "[mail]\nunsubscribe_mailto = \"not an address\"\n");
        let e = Config::load_with(Some(&p), &[]).unwrap_err();
        assert!(
            e.message
                .starts_with("mail.unsubscribe_mailto: `not an address`: "),
            "{}",
            e.message
        );

        let e = Config::load_with(Some(&p), &env(&[("AFTERCARE_KAFKA_BROKERS", "x")])).unwrap_err();
        assert_eq!(e.origin, "AFTERCARE_KAFKA_BROKERS");

        let p = write(&d, "");
        let e = Config::load_with(
            Some(&p),
            &env(&[("AFTERCARE_POLICY__TIMEZONE", "Mars/Base")]),
        )
        .unwrap_err();
        assert_eq!(e.origin, "AFTERCARE_POLICY__TIMEZONE");
        assert_eq!(
            e.message,
            "policy.timezone: `Mars/Base` is not an IANA timezone name"
        );
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_named_file_is_an_error() {
        let c = Config::load_with(None, &[]).unwrap();
        assert_eq!(c.kafka.dlq_topic, "aftercare.dlq");
        assert!(Config::load_with(Some(Path::new("/nonexistent/x.toml")), &[]).is_err());
    }
}
