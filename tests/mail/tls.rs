//! TLS to the relay: STARTTLS and implicit TLS against certificates made for the test.

use super::*;

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
