//! Webhook posts (SPEC §9): the endpoints of `[webhooks.NAME]`, checked; the Standard
//! Webhooks signature; and one post, ended in the terms the outbox retries by.
//!
//! A post carries `webhook-id` (the outbox key `journey:step`, the same on every attempt, so
//! a receiver drops a repeat), `webhook-timestamp` (seconds, at the attempt) and
//! `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the
//! endpoint's secret, from `AFTERCARE_WEBHOOK_SECRET_<NAME>`). 2xx is delivered; 5xx, 408,
//! 429 and connection errors are retried; a deadline passed may have been taken (retried,
//! the id lets the receiver tell); any other answer fails the post.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::Sha256;

use crate::mail::transport::{Failure, SendError};

/// `[webhooks.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// Where the body is posted: an http:// or https:// URL.
    pub url: String,
    /// Headers sent with every post (an API key, a tenant); the signature headers and
    /// `content-type` are aftercare's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deadline of one post.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "10s".into()
}

/// Headers a post sets itself, which the config may not.
const OWN_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
];

/// Longest deadline of one post: the outbox's lease must outlive it.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The shortest signing secret, in bytes (Standard Webhooks asks for 24 to 64).
const MIN_SECRET_BYTES: usize = 16;

/// An endpoint, checked.
#[derive(Clone)]
pub struct Endpoint {
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub timeout: Duration,
    /// `None` until the environment gives it: `run` refuses to start without it (the other
    /// commands read the config without secrets).
    secret: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Every endpoint of the config, by name.
pub type Endpoints = BTreeMap<String, Endpoint>;

/// The environment variable that holds endpoint `name`'s secret:
/// `AFTERCARE_WEBHOOK_SECRET_SMS_GATEWAY` for `sms-gateway`.
pub fn secret_var(name: &str) -> String {
    format!(
        "AFTERCARE_WEBHOOK_SECRET_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

impl Endpoint {
    /// `[webhooks.NAME]` checked with its secret, if set: every problem, each with its key.
    pub fn check(
        name: &str,
        raw: &Raw,
        secret: Option<&str>,
    ) -> Result<Endpoint, Vec<(String, String)>> {
        let secret = secret
            .map(|s| decode_secret(s).map_err(|m| format!("{}: {m}", secret_var(name))))
            .transpose();
        let (url, headers, timeout) = (
            check_url(&raw.url),
            check_headers(&raw.headers),
            check_timeout(&raw.timeout),
        );
        match (url, headers, timeout, secret) {
            (Ok(url), Ok(headers), Ok(timeout), Ok(secret)) => Ok(Endpoint {
                url,
                headers,
                timeout,
                secret: secret.map(Arc::from),
            }),
            (url, headers, timeout, secret) => {
                let key = |k: &str| match k {
                    "" => format!("webhooks.{name}"),
                    k => format!("webhooks.{name}.{k}"),
                };
                let problems = [
                    ("url", url.err()),
                    ("headers", headers.err()),
                    ("timeout", timeout.err()),
                    ("", secret.err()),
                ];
                Err(problems
                    .into_iter()
                    .filter_map(|(k, m)| Some((key(k), m?)))
                    .collect())
            }
        }
    }

    /// The `webhook-signature` of `body` sent as `id` at `timestamp`; `None` without a
    /// secret.
    pub fn signature(&self, id: &str, timestamp: i64, body: &str) -> Option<String> {
        Some(signature(self.secret.as_deref()?, id, timestamp, body))
    }
}

/// The endpoints whose secret the environment does not give, as config problems: `run`
/// signs every post, and refuses to start without them.
pub fn missing_secrets(endpoints: &Endpoints) -> Vec<(String, String)> {
    endpoints
        .iter()
        .filter(|(_, e)| e.secret.is_none())
        .map(|(name, _)| {
            (
                format!("webhooks.{name}"),
                format!(
                    "needs its signing secret in {}: `whsec_` and the base64 of 24 to 64 random bytes",
                    secret_var(name)
                ),
            )
        })
        .collect()
}

fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let shown = without_credentials(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{shown}`: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{shown}` must be an http:// or https:// URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials: put them in `headers` (an Authorization header)".into(),
        );
    }
    Ok(parsed)
}

/// `url` with what stands before an `@` in its authority (a user and password) left out:
/// how a URL is quoted in a message.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        if OWN_HEADERS.contains(&header.as_str()) {
            return Err(format!("`{name}` is set by aftercare on every post"));
        }
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` has characters a header cannot carry"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

fn check_timeout(timeout: &str) -> Result<Duration, String> {
    let p = timeout.parse::<crate::time::Period>()?;
    match p.0.to_std() {
        Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
        _ => Err(format!("`{timeout}` must be longer than 0s and at most 5m")),
    }
}

/// A Standard Webhooks secret: `whsec_` and base64 (the prefix may be left out).
pub fn decode_secret(s: &str) -> Result<Vec<u8>, String> {
    let encoded = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
    let bytes = B64
        .decode(encoded)
        .map_err(|_| "not base64 after `whsec_`".to_string())?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{} bytes; a secret has at least {MIN_SECRET_BYTES} (24 to 64 recommended)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under `secret`.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // Any key length is a valid HMAC key.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// A diagnostic for every webhook step whose endpoint the config lacks, where the step
/// names it: `run` refuses such a folder at start and on reload, as it refuses an error.
pub fn unknown_endpoints(
    catalog: &crate::sequence::Catalog,
    endpoints: &Endpoints,
) -> Vec<crate::sequence::Diagnostic> {
    let mut out = Vec::new();
    for seq in catalog.sequences() {
        for (name, pos) in seq.webhook_endpoints() {
            if endpoints.contains_key(name) {
                continue;
            }
            let hint = match endpoints.keys().next() {
                Some(_) => format!(
                    "the config has {}; or add [webhooks.{name}] with its url, and set {}",
                    endpoints
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    secret_var(name)
                ),
                None => format!(
                    "add [webhooks.{name}] with its url to the config, and set {}",
                    secret_var(name)
                ),
            };
            out.push(
                crate::sequence::Diagnostic::new(
                    &seq.path,
                    pos,
                    format!("webhook endpoint `{name}` is not in the config"),
                )
                .hint(hint),
            );
        }
    }
    out
}

/// What a post needs: the endpoint's name, the id and the rendered body.
#[derive(Debug, Clone)]
pub struct Post {
    pub endpoint: String,
    pub id: String,
    pub body: String,
}

/// Posts to the configured endpoints over one HTTP client (its connections are kept).
pub struct Poster {
    client: reqwest::Client,
    endpoints: Arc<Endpoints>,
}

/// Most bytes of a receiver's answer quoted in the outcome.
const QUOTED_BYTES: usize = 200;

impl Poster {
    /// A client that verifies TLS against the public roots and follows no redirect (a
    /// receiver that moved is a configuration to fix, not a post to repeat elsewhere).
    pub fn new(endpoints: Arc<Endpoints>) -> Result<Poster, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aftercare/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Poster { client, endpoints })
    }

    /// Whether `name` is configured.
    pub fn knows(&self, name: &str) -> bool {
        self.endpoints.contains_key(name)
    }

    /// The deadline of a post to `name`.
    pub fn timeout(&self, name: &str) -> Option<Duration> {
        self.endpoints.get(name).map(|e| e.timeout)
    }

    /// The longest deadline of any endpoint (zero without endpoints).
    pub fn longest_timeout(&self) -> Duration {
        self.endpoints
            .values()
            .map(|e| e.timeout)
            .max()
            .unwrap_or_default()
    }

    /// Posts `post`, signed at `timestamp` (seconds since the epoch), under the endpoint's
    /// deadline.
    pub async fn post(&self, post: &Post, timestamp: i64) -> Result<(), SendError> {
        let Some(endpoint) = self.endpoints.get(&post.endpoint) else {
            return Err(refused(format!(
                "webhook endpoint `{}` is not configured",
                post.endpoint
            )));
        };
        let Some(signature) = endpoint.signature(&post.id, timestamp, &post.body) else {
            return Err(refused(format!(
                "webhook endpoint `{}` has no signing secret ({})",
                post.endpoint,
                secret_var(&post.endpoint)
            )));
        };
        let request = self
            .client
            .post(endpoint.url.clone())
            .headers(endpoint.headers.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &post.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .timeout(endpoint.timeout)
            .body(post.body.clone());
        match request.send().await {
            Ok(response) => answered(response).await,
            // The URL may carry a token (in its path or query): never in a message.
            Err(e) => Err(unanswered(&e.without_url())),
        }
    }
}

/// How an answer ends the post.
async fn answered(response: reqwest::Response) -> Result<(), SendError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    let failure = match code {
        408 | 429 | 500..=599 => Failure::Transient,
        _ => Failure::Refused,
    };
    let quoted = quoted_body(response).await;
    let mut message = format!("HTTP {status}");
    if !quoted.is_empty() {
        message.push_str(": ");
        message.push_str(&quoted);
    }
    Err(SendError {
        failure,
        code: Some(code),
        message,
    })
}

/// The start of an answer's body, safe to log (addresses hidden), read no further.
async fn quoted_body(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < QUOTED_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(QUOTED_BYTES);
    crate::redact::text(String::from_utf8_lossy(&bytes).trim())
}

/// A post with no answer: retried; one whose deadline passed may have been taken.
fn unanswered(e: &reqwest::Error) -> SendError {
    let failure = match e.is_timeout() {
        true => Failure::Ambiguous,
        false => Failure::Transient,
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    SendError {
        failure,
        code: None,
        message: crate::redact::text(&message),
    }
}

fn refused(message: String) -> SendError {
    SendError {
        failure: Failure::Refused,
        code: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification, signed as it says.
    #[test]
    fn the_signature_is_the_specifications() {
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// `run` refuses, at start and on reload, a folder that posts to an endpoint the config
    /// lacks, where the step names it.
    #[test]
    fn a_step_posting_to_an_unknown_endpoint_is_named_where_it_is() {
        let dir = std::env::temp_dir().join(format!("aftercare-hooks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates/sms")).unwrap();
        std::fs::write(
            dir.join("s.yaml"),
            "name: s\ncategory: transactional\ntrigger: { event: order.placed }\nsteps:\n  - id: a\n    webhook: { endpoint: sms, body: sms/b }\n",
        )
        .unwrap();
        std::fs::write(dir.join("templates/sms/b.json.j2"), "{}").unwrap();
        let (catalog, diags) = crate::sequence::Catalog::load(&dir).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let path = dir.join("s.yaml").display().to_string();
        let shown: Vec<String> = unknown_endpoints(&catalog, &Endpoints::new())
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            shown,
            [format!(
                "{path}:6:26: webhook endpoint `sms` is not in the config\n  hint: add [webhooks.sms] with its url to the config, and set AFTERCARE_WEBHOOK_SECRET_SMS"
            )]
        );
        let raw = Raw {
            url: "http://127.0.0.1:9/".into(),
            headers: BTreeMap::new(),
            timeout: default_timeout(),
        };
        let sms =
            Endpoint::check("sms", &raw, Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let known = Endpoints::from([("sms".to_string(), sms)]);
        assert!(unknown_endpoints(&catalog, &known).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endpoint_is_checked_with_every_problem_named() {
        let raw = Raw {
            url: "ftp://x".into(),
            headers: BTreeMap::from([("webhook-id".into(), "x".into())]),
            timeout: "0s".into(),
        };
        let problems = Endpoint::check("sms", &raw, Some("whsec_c2hvcnQ=")).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhooks.sms.url",
                "webhooks.sms.headers",
                "webhooks.sms.timeout",
                "webhooks.sms"
            ]
        );
        assert_eq!(
            problems[3].1,
            "AFTERCARE_WEBHOOK_SECRET_SMS: 5 bytes; a secret has at least 16 (24 to 64 recommended)"
        );
        let good = Raw {
            url: "https://hooks.example.com/sms".into(),
            headers: BTreeMap::from([("x-api-key".into(), "k".into())]),
            timeout: "5s".into(),
        };
        let e =
            Endpoint::check("sms", &good, Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(e.timeout, Duration::from_secs(5));
        // The secret is never printed.
        assert!(!format!("{e:?}").contains("MfKQ"));
        // Without it the config reads (validate, simulate, preview need none); `run` refuses.
        let unset = Endpoint::check("sms", &good, None).unwrap();
        let endpoints = Endpoints::from([("sms".to_string(), unset), ("crm".to_string(), e)]);
        assert_eq!(
            missing_secrets(&endpoints),
            [(
                "webhooks.sms".to_string(),
                "needs its signing secret in AFTERCARE_WEBHOOK_SECRET_SMS: `whsec_` and the base64 of 24 to 64 random bytes".to_string()
            )]
        );
        assert_eq!(
            secret_var("sms-gateway"),
            "AFTERCARE_WEBHOOK_SECRET_SMS_GATEWAY"
        );
        // A URL with credentials is refused without quoting them, whatever else is wrong.
        for url in [
            "ftp://u:hunter2@host/x",
            "http://u:hunter2@[::1",
            "https://u:hunter2@h/x",
        ] {
            let raw = Raw {
                url: url.into(),
                ..good.clone()
            };
            let problems = Endpoint::check("sms", &raw, None).unwrap_err();
            assert!(!format!("{problems:?}").contains("hunter2"), "{problems:?}");
        }
    }
}
