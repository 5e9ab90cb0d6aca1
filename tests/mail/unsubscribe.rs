//! Leaving and coming back: one-click unsubscribe, the preferences page, and an erased
//! address that gets no marketing until it subscribes again.

use super::*;

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
