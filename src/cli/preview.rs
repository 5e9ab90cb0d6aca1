//! `aftercare preview SEQUENCE STEP --event FILE`: render one step's email (or webhook body)
//! for a sample event.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use minijinja::Value;

use crate::engine::context::Ctx;
use crate::engine::{Customer, Journey, JourneyId, Order, State};
use crate::event::Event;
use crate::sequence::diag::did_you_mean;
use crate::sequence::{Action, Catalog, JourneyKind, Sequence};
use crate::template::Rendered;

#[derive(clap::Args)]
pub struct Args {
    /// Sequence name.
    sequence: String,
    /// Step id (an email or webhook step).
    step: String,
    /// A CloudEvent in JSON (one object, or the first line of a JSON Lines file).
    #[arg(long)]
    event: PathBuf,
    /// The sequences directory (default: `sequences.dir` from the config).
    #[arg(long)]
    sequences: Option<PathBuf>,
    /// Render for this locale instead of the event's `data.customer.locale`.
    #[arg(long)]
    locale: Option<String>,
    /// `text` (headers, text part, HTML part) or `json`.
    #[arg(long, default_value = "text")]
    format: String,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let dir = args
        .sequences
        .clone()
        .unwrap_or(config.sequences.dir.clone());
    let catalog = super::load_catalog_strict(&dir, &config)?;
    let (seq, si, sent) = sending_step(&catalog, &args, &dir)?;
    let ev = Arc::new(read_event(&args.event)?);

    // The customer and order as they would be right after this event.
    let mut customer = Customer::new(ev.subject.clone());
    customer.apply(&ev);
    let order_id = ev.order_id().map(Arc::from);
    let journey = journey_at(&seq, si, &ev, order_id.clone());
    let order = order_id.as_deref().and_then(|o| customer.order(o));
    // The step's coupon code, as `run` derives it for this journey (with the config's key).
    let policy = config
        .policy()
        .map_err(|(key, m)| anyhow!("config error: {key}: {m}"))?;
    let key = format!("{}:{}", journey.id, seq.steps[si].id);
    let secret = policy.coupon_key.as_deref().unwrap_or_default();
    let code = crate::engine::coupon::code_for(&seq.steps[si], secret, &customer.profile.id, &key);
    let ctx = context(
        &customer,
        order,
        &journey,
        &config.http.public_url,
        code.as_deref(),
    );
    let locale = args
        .locale
        .as_deref()
        .or(customer.profile.locale.as_deref());
    match sent {
        Sent::Email(template) => {
            let rendered = catalog
                .templates
                .render(&template, locale, &ctx)
                .map_err(|e| anyhow!("{e}"))?;
            print(&rendered, &template, locale, &args.format)?;
        }
        Sent::Webhook { endpoint, body } => {
            let json = catalog
                .templates
                .render_json(&body, locale, &ctx)
                .map_err(|e| anyhow!("{e}"))?;
            let post = PostShown {
                endpoint: &endpoint,
                url: config.webhooks.get(&*endpoint).map(|w| w.url.as_str()),
                headers: config
                    .webhooks
                    .get(&*endpoint)
                    .map(|w| w.headers.keys().cloned().collect())
                    .unwrap_or_default(),
                id: format!("{}:{}", journey.id, seq.steps[si].id),
                body: &body,
                locale,
            };
            print_post(&post, json, &args.format)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a step sends: an email's template, or a webhook's endpoint and body.
enum Sent {
    Email(Arc<str>),
    Webhook { endpoint: Arc<str>, body: Arc<str> },
}

/// A webhook post as `preview` shows it.
struct PostShown<'a> {
    endpoint: &'a str,
    /// The endpoint's URL, when the config has it.
    url: Option<&'a str>,
    /// The `webhook-id` it is posted with.
    id: String,
    /// The names of the headers the config adds.
    headers: Vec<String>,
    body: &'a str,
    locale: Option<&'a str>,
}

/// The rendered webhook post as `format` says: `json`, or the request as text. The body is
/// shown as it is posted, byte for byte; header values from the config are not shown.
fn print_post(post: &PostShown<'_>, json: String, format: &str) -> anyhow::Result<()> {
    if format == "json" {
        /// The post as JSON, its body as rendered (a `Value` would reorder and round it).
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            endpoint: &'a str,
            url: Option<&'a str>,
            webhook_id: &'a str,
            headers: &'a [String],
            body: &'a serde_json::value::RawValue,
            template: &'a str,
            locale: Option<&'a str>,
        }
        let body = serde_json::value::RawValue::from_string(json)?;
        let shown = Shown {
            endpoint: post.endpoint,
            url: post.url,
            webhook_id: &post.id,
            headers: &post.headers,
            body: &body,
            template: post.body,
            locale: post.locale,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        let url = post.url.unwrap_or("(not in the config)");
        println!("POST {url} (webhook {})", post.endpoint);
        println!("webhook-id: {}", post.id);
        for h in &post.headers {
            println!("{h}: (from the config)");
        }
        println!(
            "Template: {}.json.j2 (locale {})",
            post.body,
            post.locale.unwrap_or("default")
        );
        println!("\n{json}");
    }
    Ok(())
}

/// What the templates see. As when sent: the customer and order the event produced, not the
/// event; the links carry a preview token.
fn context(
    customer: &Customer,
    order: Option<&Arc<Order>>,
    journey: &Journey,
    public_url: &str,
    coupon: Option<&str>,
) -> Value {
    let mut ctx = Ctx::new(&customer.profile, None, order, Some(journey));
    ctx.coupon = Ctx::coupon(coupon);
    let base = public_url.trim_end_matches('/');
    ctx.unsubscribe_url = Value::from(format!("{base}/u/preview-token"));
    ctx.preferences_url = Value::from(format!("{base}/preferences/preview-token"));
    ctx.into_value()
}

/// The sequence and step named in `args`, and what the step sends; an error names what is
/// there instead.
fn sending_step(
    catalog: &Catalog,
    args: &Args,
    dir: &Path,
) -> anyhow::Result<(Arc<Sequence>, usize, Sent)> {
    let seq = catalog.get(&args.sequence).cloned().ok_or_else(|| {
        let names = catalog.sequences().iter().map(|s| &*s.name);
        match did_you_mean(&args.sequence, names) {
            Some(s) => anyhow!("no sequence `{}`; did you mean `{s}`?", args.sequence),
            None => anyhow!("no sequence `{}` in {}", args.sequence, dir.display()),
        }
    })?;
    let Some(si) = seq.step_index(&args.step) else {
        let ids: Vec<&str> = seq.steps.iter().map(|s| &*s.id).collect();
        bail!(
            "sequence `{}` has no step `{}`; its steps are: {}",
            seq.name,
            args.step,
            ids.join(", ")
        );
    };
    let sent = match &seq.steps[si].action {
        Some(Action::Email { template }) => Sent::Email(template.clone()),
        Some(Action::Webhook { endpoint, body, .. }) => Sent::Webhook {
            endpoint: endpoint.clone(),
            body: body.clone(),
        },
        _ => bail!(
            "step `{}` of `{}` sends no email and posts no webhook",
            args.step,
            seq.name
        ),
    };
    Ok((seq, si, sent))
}

/// A journey of `seq` at step `si`, started by `ev` (for `order_id` when per order).
fn journey_at(seq: &Arc<Sequence>, si: usize, ev: &Event, order_id: Option<Arc<str>>) -> Journey {
    Journey {
        id: JourneyId::derive(&[&seq.name, &ev.source, &ev.id]),
        sequence: seq.clone(),
        order_id: order_id.filter(|_| seq.journey == JourneyKind::PerOrder),
        started_at: ev.time,
        step: si,
        state: State::Paused,
        backfill: false,
        held: false,
    }
}

/// The rendered email as `format` says: `json`, or headers and parts as text.
fn print(
    rendered: &Rendered,
    template: &str,
    locale: Option<&str>,
    format: &str,
) -> anyhow::Result<()> {
    if format == "json" {
        let json = serde_json::json!({
            "subject": rendered.subject, "html": rendered.html, "text": rendered.text,
            "template": template, "locale": locale,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("Subject: {}", rendered.subject);
        println!(
            "Template: {template} (locale {})",
            locale.unwrap_or("default")
        );
        println!("\n--- text/plain ---\n{}", rendered.text.trim_end());
        println!("\n--- text/html ---\n{}", rendered.html.trim_end());
    }
    Ok(())
}

fn read_event(path: &PathBuf) -> anyhow::Result<Event> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // A pretty-printed single event, or the first line of a JSON Lines file.
    Event::from_structured(text.as_bytes())
        .or_else(|whole| {
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            Event::from_structured(first.as_bytes()).map_err(|_| whole)
        })
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}
