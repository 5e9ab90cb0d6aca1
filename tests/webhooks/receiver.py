"""A webhook receiver for aftercare's tests: Python's http.server, with signatures checked by
the `standardwebhooks` package (PyPI), an implementation this project did not write.

    python3 receiver.py --port P --out DIR --secret whsec_... [--answer 503,429,200]
                        [--delay SECONDS]

Every POST is logged as one JSON line in DIR/log.jsonl: the path, the headers, the body as
text, whether `standardwebhooks` verified its signature (and why not), and the status
answered. --answer gives the statuses of the first posts in order (the last repeats):
`503,200` answers 503 once, then 200. A post whose signature does not verify is answered 401
whatever the script says. --delay waits that long before answering (a slow receiver).
Prints "ready <port>" on stdout once it accepts connections; stops on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--answer", default="200")
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    answers = [int(a) for a in args.answer.split(",")]
    verifier = Webhook(args.secret)
    lock = threading.Lock()
    state = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length).decode("utf-8", "replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified, why = True, None
            except WebhookVerificationError as e:
                verified, why = False, str(e)
            with lock:
                n = state["n"]
                state["n"] += 1
            status = answers[min(n, len(answers) - 1)] if verified else 401
            if args.delay:
                time.sleep(args.delay)
            entry = {"path": self.path, "headers": headers, "body": body,
                     "verified": verified, "why": why, "status": status}
            with lock, open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")
            reply = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *a: (server.shutdown(), sys.exit(0)))
    print(f"ready {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
