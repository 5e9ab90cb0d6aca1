//! Logs and traces of `run`.
//!
//! - Logs on stderr, `text` or `json` (`log.format`), filtered by `log.level` or
//!   `AFTERCARE_LOG`. Customer ids appear hashed ([`hashed`]); email addresses never appear.
//! - Spans: `event` (event id and type, topic/partition/offset, hashed customer), a
//!   `decision` child per decision (sequence, step, kind, reason), and `send` (sequence, step,
//!   attempt, SMTP reply code). They are DEBUG-level so they cost nothing unless exported:
//!   with `trace.otlp_endpoint` set they go to an OpenTelemetry collector over OTLP/HTTP. An
//!   event whose Kafka message carries a W3C `traceparent` header (or `ce_traceparent`, the
//!   CloudEvents binding's name) continues the producer's trace. An email keeps the trace
//!   context of the event span that queued it (`outbox.trace`), and its `send` span, later and
//!   on another thread, is a child of that event span: one trace from the order event to the
//!   relay's acceptance.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{Headers, Message, OwnedMessage};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Log, LogFormat, Trace};

/// A customer id as logs and spans show it: the first 16 hex digits of its SHA-256. Stable,
/// so one customer's lines can be followed, and never the id (which may be an address).
pub fn hashed(customer: &str) -> String {
    crate::redact::hash_prefix(customer, 8)
}

/// Keeps the exporter alive; flushes the spans still buffered when dropped.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export: {e}");
        }
    }
}

/// Installs the global subscriber: logs as configured, spans to OTLP when configured.
pub fn init(log: &Log, trace: &Trace) -> super::StartResult<Guard> {
    let (otel, provider) = match exporter(trace)? {
        Some(provider) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("aftercare"))
                .with_filter(EnvFilter::new("aftercare=debug"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(log_layer(log))
        .with(otel)
        .try_init()
        .map_err(|e| super::StartError::Telemetry(e.to_string()))?;
    Ok(Guard { provider })
}

/// Logs on stderr in `log.format`, filtered by `AFTERCARE_LOG` or else `log.level`.
fn log_layer<S>(log: &Log) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = || {
        EnvFilter::try_from_env("AFTERCARE_LOG")
            .or_else(|_| EnvFilter::try_new(&log.level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    }
}

/// The OTLP/HTTP span exporter, batching, when `trace.otlp_endpoint` is set.
fn exporter(trace: &Trace) -> super::StartResult<Option<SdkTracerProvider>> {
    if trace.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let protocol = match trace.protocol.as_str() {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    // The exporter's HTTP client is reqwest with rustls (the webhooks' TLS features), which
    // reads the process's crypto provider and panics without one: ring, as lettre uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&trace.otlp_endpoint)
        .with_protocol(protocol)
        .build()
        .map_err(|e| super::StartError::Telemetry(e.to_string()))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(trace.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

struct KafkaHeaders<'a>(&'a OwnedMessage);

impl Extractor for KafkaHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0.headers()?;
        let wanted = |name: &str| name == key || name.strip_prefix("ce_") == Some(key);
        headers
            .iter()
            .find(|h| wanted(h.key))
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .headers()
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

/// The span of one Kafka event, continuing the producer's trace when the message says so.
pub fn event_span(m: &OwnedMessage, e: &crate::event::Event) -> tracing::Span {
    let span = tracing::debug_span!(
        "event",
        event.id = %e.id,
        event.source = %e.source,
        event.r#type = %e.kind,
        customer = tracing::field::Empty,
        messaging.destination = m.topic(),
        messaging.partition = m.partition(),
        messaging.offset = m.offset(),
    );
    if !span.is_disabled() {
        span.record("customer", hashed(&e.subject));
        let parent = TraceContextPropagator::new().extract(&KafkaHeaders(m));
        let _ = span.set_parent(parent);
    }
    span
}

/// The W3C `traceparent` of `span`, when it is exported (an OpenTelemetry span with a valid
/// context); `None` otherwise, so nothing is kept when traces are off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span `traceparent` names (kept by [`traceparent`]).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    if span.is_disabled() {
        return;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
}

/// A zero-length child span per decision, under the span of what caused it.
pub fn decision_spans(parent: &tracing::Span, decisions: &[crate::engine::Decision]) {
    if parent.is_disabled() {
        return;
    }
    for d in decisions {
        let _span = tracing::debug_span!(
            parent: parent,
            "decision",
            sequence = %d.sequence,
            step = d.step.as_deref().unwrap_or(""),
            kind = d.action.as_str(),
            reason = %d.reason,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn customer_ids_are_hashed_stably() {
        let h = super::hashed("ann@example.com");
        assert_eq!(h.len(), 16);
        assert_eq!(h, super::hashed("ann@example.com"));
        assert_ne!(h, super::hashed("bob@example.com"));
        assert!(!h.contains('@'));
    }
}
