"""A real SMTP server for aftercare's delivery tests: aiosmtpd (PyPI), with faults on demand.

    python3 server.py --port P --out DIR [--fail-first N] [--fail-code 451]
                      [--reject-domain D] [--tls-cert C --tls-key K] [--implicit-tls]
                      [--auth USER:PASSWORD] [--discard] [--delay SECONDS]

Every DATA attempt is logged as one JSON line in DIR/log.jsonl (sender, recipients, whether
TLS was on, the reply given, the Message-ID); every accepted message is written whole to
DIR/<n>.eml. The first N DATA commands are answered with --fail-code (default 451); recipients
in --reject-domain get 550 at RCPT. With a certificate, STARTTLS is required, or with
--implicit-tls TLS from the first byte (port 465 style). --auth requires AUTH (after TLS).
--discard accepts and drops everything (a sink for benchmarks: no files, no log). --delay
waits that long before answering each DATA (a slow relay). Prints
"ready <port>" on stdout once it accepts connections; stops on SIGTERM.
"""

import argparse
import asyncio
import email
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out, fail_first, fail_code, reject_domain, discard=False, delay=0.0):
        self.discard = discard
        self.delay = delay
        self.out = out
        self.fail_left = fail_first
        self.fail_code = fail_code
        self.reject_domain = reject_domain
        self.accepted = 0

    def log(self, entry):
        with open(os.path.join(self.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_domain and address.lower().endswith("@" + self.reject_domain):
            self.log({"rcpt": address, "reply": 550})
            return "550 5.1.1 <%s>: no such user" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.discard:
            return "250 2.0.0 OK"
        msg = email.message_from_bytes(envelope.content)
        entry = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "message_id": msg.get("Message-ID"),
            "subject": msg.get("Subject"),
            "at": time.time(),
        }
        if self.fail_left > 0:
            self.fail_left -= 1
            entry["reply"] = self.fail_code
            self.log(entry)
            # Postfix-style: the reply quotes the recipient.
            return "%d 4.3.0 <%s>: try again later" % (self.fail_code, envelope.rcpt_tos[0])
        self.accepted += 1
        path = os.path.join(self.out, "%04d.eml" % self.accepted)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        entry["reply"] = 250
        self.log(entry)
        return "250 2.0.0 OK queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-code", type=int, default=451)
    p.add_argument("--reject-domain", default="")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--discard", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--auth", help="USER:PASSWORD required (AUTH PLAIN/LOGIN, after TLS)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    handler = Handler(a.out, a.fail_first, a.fail_code, a.reject_domain, a.discard, a.delay)
    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.implicit_tls:
            kwargs = {"ssl_context": ctx}
        else:
            kwargs = {"tls_context": ctx, "require_starttls": True}
    if a.auth:
        user, password = a.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            from aiosmtpd.smtp import AuthResult, LoginPassword

            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            # handled=False: aiosmtpd answers 535 itself on a failure.
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticator, auth_required=True)
    controller = Controller(
        handler, hostname="127.0.0.1", port=a.port, server_hostname="localhost", **kwargs
    )
    controller.start()
    print("ready %d" % a.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
