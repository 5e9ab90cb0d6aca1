//! The operators' side of the HTTP server.
//!
//! Open (no secrets in them, and probes cannot carry one):
//! - `GET /healthz`: the process serves;
//! - `GET /readyz`: the store answers, the broker's metadata can be fetched and no worker is
//!   retrying a transient error (503 with one line per problem otherwise);
//! - `GET /metrics`: Prometheus text format ([`super::metrics`]);
//! - `GET /` and `GET /dashboard`: the read-only dashboard page, which asks for the token and
//!   reads the API below with it.
//!
//! Behind `Authorization: Bearer $AFTERCARE_ADMIN_TOKEN` (401 without it, and always 401
//! while no token is set):
//! - `GET /api/customers/{id}` (also `/customers/{id}`): profile, orders, journeys, timeline
//!   with reasons;
//! - `GET /api/sequences` (also `/sequences`): loaded versions, in-flight journeys per version
//!   and step;
//! - `GET /api/figures`: retention figures (funnels, suppressions, goals, NPS, repeat
//!   purchases) as last computed ([`super::figures`]);
//! - `GET /api/experiments`: holdouts, variants and the return on relationship (SPEC §8), the
//!   same figures as `aftercare simulate --report`, as last computed;
//! - `POST /api/customers/{id}/journeys/{journey}/{pause|resume|cancel}` (also without
//!   `/api`): an operator's control of one journey, recorded on the timeline;
//! - `DELETE /api/customers/{id}` (also without `/api`): erases the customer, as a
//!   `customer.erased` event would (204; 400 for an id no event could carry).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Stats;
use super::apply::Refused;
use super::figures::{Report, Shared};
use super::http::Web;
use super::reload::Live;
use crate::engine::ControlError;
use crate::engine::{Control, JourneyId};
use crate::store::record::{journeys, profile_and_orders};
use crate::time::rfc3339;

/// A check that the broker answers, run off the async threads.
pub type BrokerCheck = Arc<dyn Fn() -> Result<(), rdkafka::error::KafkaError> + Send + Sync>;

/// What the operators' routes need besides the unsubscribe pages' state.
#[derive(Default)]
pub struct Ops {
    /// `AFTERCARE_ADMIN_TOKEN`; `None` keeps the API closed.
    pub token: Option<String>,
    pub stats: Arc<Stats>,
    pub live: Option<Arc<Live>>,
    /// The catalog generation the HTTP engine was built from.
    pub seen: AtomicU64,
    pub report: Shared,
    pub broker: Option<BrokerCheck>,
}

pub fn routes(web: Arc<Web>) -> Router<Arc<Web>> {
    let api = Router::new()
        .route("/customers/{id}", get(customer).delete(forget))
        .route(
            "/customers/{id}/journeys/{journey}/{op}",
            post(control_journey),
        )
        .route("/sequences", get(sequences))
        .route("/figures", get(figures))
        .route("/experiments", get(experiments));
    let guarded = Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .route_layer(middleware::from_fn_with_state(web, authorize));
    Router::new()
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .merge(guarded)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Constant-time comparison: the time taken does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = match (&web.ops.token, given) {
        (Some(token), Some(given)) => same(token.as_bytes(), given.trim().as_bytes()),
        _ => false,
    };
    if allowed {
        return next.run(request).await;
    }
    let message = if web.ops.token.is_none() {
        "the admin API is closed: set AFTERCARE_ADMIN_TOKEN to open it"
    } else {
        "missing or wrong bearer token (Authorization: Bearer $AFTERCARE_ADMIN_TOKEN)"
    };
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Why a request's work on the store was not done.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Unreadable(#[from] crate::store::record::Unreadable),
    #[error("the store connection was left broken by a failed request")]
    Poisoned,
    #[error("the request's worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Runs `f` on the HTTP side's store connection, off the async threads.
pub(super) async fn with_store<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&mut Side<'_>) -> Result<T, SideError> + Send + 'static,
) -> Result<T, SideError> {
    let web = web.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = web.apply.lock().map_err(|_| SideError::Poisoned)?;
        let (store, applier) = &mut *guard;
        if let Some(live) = &web.ops.live {
            let mut seen = web.ops.seen.load(Ordering::Acquire);
            if let Some(catalog) = live.changed(&mut seen) {
                applier.reload(catalog);
                web.ops.seen.store(seen, Ordering::Release);
            }
        }
        f(&mut Side {
            store: &mut **store,
            applier,
        })
    })
    .await?
}

/// The store and engine of the HTTP side, borrowed for one request.
pub struct Side<'a> {
    pub store: &'a mut dyn crate::store::Store,
    pub applier: &'a mut super::apply::Applier,
}

async fn ready(State(web): State<Arc<Web>>) -> Response {
    let store = with_store(&web, |w| Ok(w.store.next_due().map(|_| ())?)).await;
    let broker = match web.ops.broker.clone() {
        Some(check) => match tokio::task::spawn_blocking(move || check()).await {
            Ok(checked) => checked.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        None => Ok(()),
    };
    let mut problems = Vec::new();
    if let Err(e) = store {
        problems.push(format!("store unavailable: {e}"));
    }
    if let Err(e) = broker {
        problems.push(format!("broker unavailable: {e}"));
    }
    problems.extend(web.ops.stats.health.problems());
    if problems.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = problems.join("\n");
    body.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        web.ops.stats.metrics.encode(),
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn customer(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Response {
    let found = with_store(&web, move |w| {
        let Some((stored, timeline)) = w.store.customer(&id)? else {
            return Ok(None);
        };
        let (profile, orders) = profile_and_orders(&stored)?;
        let journeys = journeys(&stored)?;
        let timeline: Vec<Value> = timeline
            .iter()
            .map(|t| {
                json!({
                    "at": rfc3339(t.at), "journey": t.journey, "sequence": t.sequence,
                    "version": t.version, "step": t.step, "action": t.action,
                    "reason": t.reason, "subject": t.subject,
                })
            })
            .collect();
        // A timer past 9999-12-31 never fires: shown as due "never", not as a date that
        // RFC 3339 cannot write.
        let journeys: Vec<Value> = journeys
            .iter()
            .map(|j| {
                let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
                if let Some(d) = j.due
                    && !crate::time::fires(d)
                {
                    v["due"] = Value::from("never");
                }
                v
            })
            .collect();
        Ok(Some(json!({
            "id": stored.id,
            "profile": profile,
            "orders": orders,
            "journeys": journeys,
            "next_due": stored.next_due.map(rfc3339),
            "timeline": timeline,
        })))
    })
    .await;
    match found {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such customer"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn forget(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Response {
    if let Err(e) = crate::event::check_identifier("the customer id", &id) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let done = with_store(&web, move |w| {
        Ok(w.applier.forget(w.store, &id, "aftercare/admin")?)
    })
    .await;
    match done {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "erasure not saved");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not erased, try again: {e}"),
            )
        }
    }
}

async fn control_journey(
    State(web): State<Arc<Web>>,
    Path((id, journey, op)): Path<(String, String, String)>,
) -> Response {
    let op = match op.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "cancel" => Control::Cancel,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown operation: use pause, resume or cancel",
            );
        }
    };
    let Ok(journey) = journey.parse::<JourneyId>() else {
        return error(
            StatusCode::NOT_FOUND,
            "a journey id is 16 hex digits (see GET /api/customers/{id})",
        );
    };
    let done = with_store(&web, move |w| {
        let now = w.applier.now();
        Ok(w.applier.control(w.store, &id, journey, op, now)?)
    })
    .await;
    match done {
        Ok(Some(Ok(decisions))) => {
            web.ops.stats.metrics.decided(&decisions);
            let lines: Vec<Value> = decisions
                .iter()
                .map(|d| {
                    json!({
                        "at": rfc3339(d.at), "sequence": &*d.sequence, "step": d.step.as_deref(),
                        "action": d.action.as_str(), "reason": d.reason, "subject": d.subject,
                    })
                })
                .collect();
            Json(json!({ "decisions": lines })).into_response()
        }
        Ok(Some(Err(e @ Refused::Control(ControlError::NoSuchJourney)))) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Ok(Some(Err(e))) => error(StatusCode::CONFLICT, &e.to_string()),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such customer"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn sequences(State(web): State<Arc<Web>>) -> Response {
    let catalog = web.ops.live.as_ref().map(|l| l.current());
    let counts = with_store(&web, |w| Ok(w.store.journey_counts()?)).await;
    let counts = match counts {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut loaded = Vec::new();
    if let Some(catalog) = &catalog {
        for s in catalog.sequences() {
            loaded.push(json!({
                "name": &*s.name,
                "version": &*s.version,
                "path": s.path,
                "trigger": match &s.trigger.date { Some(d) => d.field.to_string(), None => s.trigger.event.to_string() },
                "steps": s.steps.iter().map(|st| st.id.to_string()).collect::<Vec<_>>(),
            }));
        }
    }
    let in_flight: Vec<Value> = counts
        .iter()
        .map(|c| {
            json!({
                "sequence": c.sequence, "version": c.version, "step": c.step,
                "status": c.status, "count": c.count,
                "current": catalog.as_ref().is_some_and(|k| k.version(&c.sequence, &c.version).is_some()),
            })
        })
        .collect();
    Json(json!({ "loaded": loaded, "in_flight": in_flight })).into_response()
}

/// The last report the figures thread computed.
fn last_report(web: &Web) -> Arc<Report> {
    match web.ops.report.read() {
        Ok(r) => r.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

async fn experiments(State(web): State<Arc<Web>>) -> Response {
    Json(last_report(&web).experiments.clone()).into_response()
}

async fn figures(State(web): State<Arc<Web>>) -> Response {
    let report = last_report(&web);
    let mut value = serde_json::to_value(&*report).unwrap_or(Value::Null);
    // Live, not as of the last refresh.
    value["dead_letters"] = json!(
        web.ops
            .stats
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Json(value).into_response()
}
