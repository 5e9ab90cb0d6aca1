//! The HTTP side of `run` (on `http.listen`): unsubscribe and preferences pages.
//!
//! - `GET /u/{token}`: a small page confirming what the link does, with one button;
//! - `POST /u/{token}`: the RFC 8058 one-click unsubscribe (what mailbox providers POST with
//!   `List-Unsubscribe=One-Click`): idempotent, 200, committed before the answer;
//! - `GET /preferences/{token}`, `POST /preferences/{token}`: choose categories;
//! - `GET /healthz`.
//!
//! A change is an event like any other (`customer.unsubscribed` / `customer.subscribed` from
//! source `aftercare/http`), applied through the same engine path as Kafka's, so it lands on
//! the timeline and every pending send of the category is suppressed when its turn comes.
//! A forged or altered token gets 400 and the same few words whatever was wrong with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};

use super::admin::SideError;
use crate::event::{Event, EventData};
use crate::mail::token::{Claim, Signer};
use crate::service::apply::Applier;
use crate::store::Store;
use crate::store::record::profile_and_orders;

/// What the handlers share.
pub struct Web {
    pub signer: Signer,
    /// The marketing categories for the preferences page when no live catalog is given
    /// (`ops.live`, which follows hot reloads).
    pub categories: Vec<String>,
    /// The store and an engine to apply changes with (one at a time).
    pub apply: Mutex<(Box<dyn Store>, Applier)>,
    /// The operators' routes: probes, metrics, admin API, dashboard ([`super::admin`]).
    pub ops: super::admin::Ops,
}

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(super::admin::routes(web.clone()))
        .route("/u/{token}", get(confirm).post(one_click))
        .route(
            "/preferences/{token}",
            get(preferences).post(save_preferences),
        )
        .with_state(web)
}

/// Serves until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Arc<Web>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(web))
        .with_graceful_shutdown(stop)
        .await
}

const INVALID: &str = "This link is not valid. If you copied it from an email, copy all of it.";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
         button{{font-size:1rem;padding:.5rem 1rem}}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    (status, Html(html)).into_response()
}

fn invalid() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Invalid link",
        &format!("<p>{INVALID}</p>"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn what(category: &str) -> String {
    if category == "all" {
        "all our emails except order updates".into()
    } else {
        format!("“{}” emails", escape(category))
    }
}

async fn confirm(State(web): State<Arc<Web>>, Path(token): Path<String>) -> Response {
    let Some(claim) = web.signer.verify(&token) else {
        return invalid();
    };
    let token = escape(&token);
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop sending you {}?</p><form method=\"post\" action=\"/u/{token}\">\
             <button type=\"submit\">Unsubscribe</button></form>\
             <p><a href=\"/preferences/{token}\">Choose which emails you get</a></p>",
            what(&claim.category)
        ),
    )
}

async fn one_click(State(web): State<Arc<Web>>, Path(token): Path<String>) -> Response {
    let Some(claim) = web.signer.verify(&token) else {
        return invalid();
    };
    let event = Change {
        customer: claim.customer.clone(),
        subscribe: false,
        categories: vec![claim.category.clone()],
    };
    match apply(&web, vec![event]).await {
        Ok(()) => page(
            StatusCode::OK,
            "Unsubscribed",
            &format!("<p>You will get no more {}.</p>", what(&claim.category)),
        ),
        Err(e) => unavailable(&e),
    }
}

async fn preferences(State(web): State<Arc<Web>>, Path(token): Path<String>) -> Response {
    let Some(claim) = web.signer.verify(&token) else {
        return invalid();
    };
    let unsubscribed = match current(&web, &claim).await {
        Ok(u) => u,
        Err(e) => return unavailable(&e),
    };
    let all = unsubscribed.iter().any(|c| c == "all");
    let mut boxes = String::new();
    for c in &categories(&web) {
        let checked = if all || unsubscribed.contains(c) {
            ""
        } else {
            " checked"
        };
        boxes.push_str(&format!(
            "<p><label><input type=\"checkbox\" name=\"c_{c}\"{checked}> {c}</label></p>",
            c = escape(c)
        ));
    }
    page(
        StatusCode::OK,
        "Email preferences",
        &format!(
            "<p>Order updates always come. Choose the other emails you want:</p>\
             <form method=\"post\" action=\"/preferences/{}\">{boxes}\
             <button type=\"submit\">Save</button></form>",
            escape(&token)
        ),
    )
}

async fn save_preferences(
    State(web): State<Arc<Web>>,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(claim) = web.signer.verify(&token) else {
        return invalid();
    };
    let categories = categories(&web);
    let wanted: Vec<String> = categories
        .iter()
        .filter(|c| form.contains_key(&format!("c_{c}")))
        .cloned()
        .collect();
    let unwanted: Vec<String> = categories
        .iter()
        .filter(|c| !wanted.contains(c))
        .cloned()
        .collect();
    let mut events = Vec::new();
    if !wanted.is_empty() {
        // Choosing a category also lifts an unsubscribe from everything.
        let mut lift = wanted.clone();
        lift.push("all".into());
        events.push(Change {
            customer: claim.customer.clone(),
            subscribe: true,
            categories: lift,
        });
    }
    if !unwanted.is_empty() {
        events.push(Change {
            customer: claim.customer.clone(),
            subscribe: false,
            categories: unwanted,
        });
    }
    match apply(&web, events).await {
        Ok(()) => page(
            StatusCode::OK,
            "Preferences saved",
            "<p>Your choices are saved.</p>",
        ),
        Err(e) => unavailable(&e),
    }
}

/// The marketing categories on offer: those of the sequences loaded now (hot reloads
/// included).
fn categories(web: &Web) -> Vec<String> {
    match &web.ops.live {
        Some(live) => super::marketing_categories(&live.current()),
        None => web.categories.clone(),
    }
}

fn unavailable(e: &SideError) -> Response {
    tracing::error!(error = %e, "preferences change not saved");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<p>Your request could not be saved just now. Please try again in a minute.</p>",
    )
}

/// A change of preferences asked for on this server: categories subscribed to or
/// unsubscribed from.
struct Change {
    customer: String,
    subscribe: bool,
    categories: Vec<String>,
}

impl Change {
    /// As an event happening `now`; its id is unique, and its effect idempotent (a set of
    /// categories added or removed).
    fn event(self, now: DateTime<Utc>) -> Arc<Event> {
        let (kind, data) = match self.subscribe {
            true => (
                "customer.subscribed",
                EventData::CustomerSubscribed {
                    categories: self.categories,
                },
            ),
            false => (
                "customer.unsubscribed",
                EventData::CustomerUnsubscribed {
                    categories: self.categories,
                },
            ),
        };
        Event::internal(kind, "aftercare/http", &self.customer, data, now)
    }
}

/// Applies the changes in one transaction, off the async threads (the stores block). One
/// about a customer the store does not hold (erased since the email was sent) is dropped: a
/// link must not bring them back.
async fn apply(web: &Arc<Web>, changes: Vec<Change>) -> Result<(), SideError> {
    let metrics = web.ops.stats.metrics.clone();
    super::admin::with_store(web, move |w| {
        let now = w.applier.now();
        let events: Vec<Arc<Event>> = changes.into_iter().map(|c| c.event(now)).collect();
        let applied = w.applier.apply_known(w.store, &events, now)?;
        metrics.decided(&applied.decisions);
        Ok(())
    })
    .await
}

/// The categories the customer is unsubscribed from now.
async fn current(web: &Arc<Web>, claim: &Claim) -> Result<Vec<String>, SideError> {
    let customer = claim.customer.clone();
    super::admin::with_store(web, move |w| {
        let Some(stored) = w.store.load(&customer)? else {
            return Ok(Vec::new());
        };
        let (profile, _) = profile_and_orders(&stored)?;
        Ok(profile.unsubscribed.iter().map(|c| c.to_string()).collect())
    })
    .await
}
