//! What a message cannot be made to say: no header or recipient injected by customer data,
//! and DKIM signatures that verify and cover the unsubscribe headers.

use super::*;

#[test]
fn customer_data_cannot_inject_headers_or_recipients() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("inject"), &[]);
    let mut rig = rig(port, Tls::None, None);
    // A name carrying a header, and an address carrying one: the first is encoded, the second
    // refused (recorded as failed, never sent).
    rig.apply(&[
        placed(
            "c1",
            "o1",
            "Eve\r\nBcc: victim@example.com",
            "eve@example.com",
        ),
        placed(
            "c2",
            "o2",
            "Mallory",
            "mallory@example.com\r\nBcc: victim@example.com",
        ),
    ]);
    let c = rig.send_until("both handled", |c| {
        c["emails sent"] + c["emails failed"] == 2
    });
    assert_eq!((c["emails sent"], c["emails failed"]), (1, 1));
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let h = headers(&messages[0]);
    assert_eq!(header(&h, "Bcc"), None, "{}", messages[0]);
    // In the body the text is only text; the header block has no line of its own for it.
    let head = messages[0].split("\r\n\r\n").next().unwrap();
    assert!(
        !head.lines().any(|l| l.starts_with("Bcc")),
        "a Bcc header got through:\n{head}"
    );
    // The name is one encoded word (RFC 2047) of "Eve Bcc: victim@example.com".
    assert_eq!(
        header(&h, "To"),
        Some("=?utf-8?b?RXZlIEJjYzogdmljdGltQGV4YW1wbGUuY29t?= <eve@example.com>")
    );
    for entry in server.log() {
        assert_eq!(entry["rcpt_tos"], json!(["eve@example.com"]));
    }
    assert_eq!(
        rig.timeline("c2").last().unwrap(),
        &(
            "failed".to_string(),
            "invalid address: the customer's address is not valid".to_string()
        )
    );
}

#[test]
fn dkim_signatures_verify_and_cover_the_unsubscribe_headers() {
    let dir = scratch("dkim");
    let key = dir.join("dkim.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    };
    run(&["genrsa", "-traditional", "-out", "dkim.pem", "2048"]);
    let der = run(&["rsa", "-in", "dkim.pem", "-pubout", "-outform", "der"]);
    use base64::Engine as _;
    let public = dir.join("public.b64");
    std::fs::write(
        &public,
        base64::engine::general_purpose::STANDARD.encode(der),
    )
    .unwrap();

    let port = free_port();
    let server = SmtpServer::start(port, &dir.join("out"), &[]);
    let mut rig = rig(port, Tls::None, None);
    rig.config.mail.dkim = Some(aftercare::config::Dkim {
        selector: "s1".into(),
        domain: None,
        key_file: key,
    });
    rig.apply(&[placed("c1", "o1", "Ann", "ann@example.com")]);
    rig.apply(&[delivered("c1", "o1")]);
    rig.send_until("two emails sent", |c| c["emails sent"] == 2);
    let messages = server.messages();
    let review = messages
        .iter()
        .find(|m| m.contains("X-Aftercare-Sequence: review"))
        .unwrap();
    let h = headers(review);
    let signature = header(&h, "DKIM-Signature")
        .unwrap()
        .replace([' ', '\t'], "");
    assert!(signature.contains("c=relaxed/relaxed"), "{signature}");
    assert!(signature.contains("d=example.com") && signature.contains("s=s1"));
    let signed: Vec<String> = signature
        .split(';')
        .find_map(|t| t.strip_prefix("h="))
        .unwrap()
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect();
    for name in [
        "from",
        "subject",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(
            signed.iter().any(|s| s == name),
            "{name} not signed: {signed:?}"
        );
    }
    // An independent verifier (dkimpy) accepts every message as received.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/dkim_verify.py");
    for (i, m) in messages.iter().enumerate() {
        let file = dir.join(format!("m{i}.eml"));
        std::fs::write(&file, m).unwrap();
        let out = Command::new("python3")
            .arg(&script)
            .arg(&file)
            .arg(&public)
            .output()
            .expect("python3 with dkimpy (pip install dkimpy)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "pass",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
