//! Every class of broken sequence file: the exact message, position and hint.

mod common;

use common::{default_templates, diagnostics};

/// Diagnostics for one file `s.yaml` with the default templates.
fn check(yaml: &str) -> Vec<String> {
    diagnostics(&[("s.yaml", yaml)], default_templates())
}

const HEAD: &str = "name: s\ntrigger: { event: order.placed }\nsteps:\n";

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        check("name: s\nsteps: [a, b\n"),
        [
            "s.yaml:3:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'\n  hint: check indentation (spaces, not tabs) and that quotes and brackets are closed",
        ]
    );
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let yaml = format!(
        "{HEAD}  - id: a\n    wiat: 1d\n    email: {{ template: t/a }}\nexit_onn: [order.refunded]\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:5: unknown key `wiat` in a step\n  hint: did you mean `wait`?",
            "s.yaml:7:1: unknown key `exit_onn` in the sequence\n  hint: did you mean `exit_on`?",
        ]
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_known_keys() {
    let yaml = format!("{HEAD}  - id: a\n    colour: red\n");
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:5: unknown key `colour` in a step\n  hint: known keys here: id, wait, wait_for, send_window, skip_when, category, goal, email, webhook, coupon, start, exit, variants, branch",
        ]
    );
}

#[test]
fn missing_id_and_trigger() {
    assert_eq!(
        check("steps:\n  - email: { template: t/a }\n"),
        [
            "s.yaml:1:1: missing `trigger`\n  hint: add `trigger: { event: order.delivered }` to say which event enrols customers",
            "s.yaml:2:5: step has no `id`\n  hint: give every step a unique `id`, like `id: welcome`",
        ]
    );
}

#[test]
fn bad_duration() {
    let yaml = format!("{HEAD}  - id: a\n    wait: 3days\n    email: {{ template: t/a }}\n");
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:11: `3days` is not a duration: write a number and a unit, like 30s, 15m, 2h, 3d or 1w\n  hint: durations look like 30s, 15m, 2h, 3d or 1w",
        ]
    );
}

#[test]
fn bad_cron() {
    let yaml = format!(
        "{HEAD}  - id: a\n    send_window: \"0 25 * * *\"\n    email: {{ template: t/a }}\n"
    );
    let got = check(&yaml);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("s.yaml:5:18: `0 25 * * *` is not a valid cron schedule: "),
        "{}",
        got[0]
    );
    assert!(got[0].ends_with(
        "\n  hint: cron has 5 fields: minute hour day month weekday, e.g. \"0 9-18 * * MON-FRI\""
    ));
    let yaml =
        format!("{HEAD}  - id: a\n    send_window: \"9 to 5\"\n    email: {{ template: t/a }}\n");
    assert_eq!(
        check(&yaml)[0].lines().next().unwrap(),
        "s.yaml:5:18: `9 to 5` has 3 fields; a cron schedule has 5 (minute hour day month weekday)"
    );
}

#[test]
fn bad_timezone() {
    let yaml = format!("timezone: Mars/Olympus\n{HEAD}  - id: a\n    email: {{ template: t/a }}\n");
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:1:11: `Mars/Olympus` is not an IANA timezone name\n  hint: use a name like Asia/Seoul or America/New_York",
        ]
    );
}

#[test]
fn expression_syntax_error() {
    let yaml = format!(
        "{HEAD}  - id: a\n    skip_when: \"customer.open_tickets >\"\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:16: expression `customer.open_tickets >`: syntax error: unexpected end of input, expected expression\n  hint: expressions use Jinja syntax, e.g. customer.open_tickets > 0",
        ]
    );
}

#[test]
fn unknown_template_suggests_the_closest() {
    let yaml = format!("{HEAD}  - id: a\n    email: {{ template: t/aa }}\n");
    assert_eq!(
        check(&yaml),
        ["s.yaml:5:24: unknown template `t/aa`\n  hint: did you mean `t/a`?",]
    );
}

#[test]
fn template_syntax_error_names_the_template_file() {
    let mut templates = default_templates();
    templates.push((
        "t/broken.html.j2".into(),
        "<p>\n  Hello {{ customer.name </p>\n".into(),
    ));
    templates.push(("t/broken.subject.j2".into(), "Hi".into()));
    let got = diagnostics(
        &[(
            "s.yaml",
            &format!("{HEAD}  - id: a\n    email: {{ template: t/a }}\n"),
        )],
        templates,
    );
    assert_eq!(
        got,
        [
            "templates/t/broken.html.j2:2:27: syntax error: unexpected `/`\n  hint: check the {{ }} and {% %} tags near this position: each must be closed",
        ]
    );
}

#[test]
fn duplicate_step_id() {
    let yaml = format!(
        "{HEAD}  - id: a\n    email: {{ template: t/a }}\n  - id: a\n    email: {{ template: t/b }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:6:9: duplicate step id `a`\n  hint: step ids must be unique in a file; `a` is first used on line 4",
        ]
    );
}

#[test]
fn start_of_an_unknown_sequence() {
    let yaml = format!("{HEAD}  - id: a\n    start: reveiw-request\n");
    let other = "name: review-request\ntrigger: { event: x }\nsteps:\n  - id: b\n    email: { template: t/a }\n";
    assert_eq!(
        diagnostics(&[("s.yaml", &yaml), ("r.yaml", other)], default_templates()),
        [
            "s.yaml:5:12: `start` names an unknown sequence `reveiw-request`\n  hint: did you mean `review-request`?",
        ]
    );
}

#[test]
fn wait_and_wait_for_on_one_step() {
    let yaml = format!(
        "{HEAD}  - id: a\n    wait: 1d\n    wait_for: {{ event: order.shipped, timeout: 3d }}\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:6:5: a step has either `wait` or `wait_for`, not both\n  hint: split it into two steps: one that waits, then one that waits for the event",
        ]
    );
}

#[test]
fn two_actions_on_one_step() {
    let yaml = format!("{HEAD}  - id: a\n    email: {{ template: t/a }}\n    start: s\n");
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:6:5: a step has one action; this one has `email` and `start`\n  hint: split it into one step per action",
        ]
    );
}

#[test]
fn reenter_on_a_per_order_journey() {
    let yaml = format!(
        "journey: per_order\nreenter: true\n{HEAD}  - id: a\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:2:1: `reenter` applies to per_customer journeys only\n  hint: a per_order journey runs once per order; remove `reenter`",
        ]
    );
}

#[test]
fn wait_for_without_timeout() {
    let yaml = format!(
        "{HEAD}  - id: a\n    wait_for: {{ event: order.shipped }}\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:5: `wait_for` needs a `timeout`\n  hint: add `timeout: 3d`: how long to wait before `on_timeout` decides",
        ]
    );
}

#[test]
fn on_timeout_naming_an_unknown_step() {
    let yaml = format!(
        "{HEAD}  - id: wait\n    wait_for: {{ event: order.shipped, timeout: 3d, on_timeout: delay-notise }}\n  - id: delay-notice\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:64: `on_timeout` names an unknown step `delay-notise`\n  hint: did you mean `delay-notice`?",
        ]
    );
}

#[test]
fn every_error_in_every_file_is_reported_in_order() {
    let a = format!("{HEAD}  - id: a\n    wait: soon\n    email: {{ template: t/x }}\n");
    let b = "trigger: { event: order.placed }\njourney: per_ordr\nsteps:\n  - id: a\n    emial: { template: t/a }\n";
    let got: Vec<String> = diagnostics(&[("a.yaml", &a), ("b.yaml", b)], default_templates())
        .iter()
        .map(|d| d.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        [
            "a.yaml:5:11: `soon` is not a duration: write a number and a unit, like 30s, 15m, 2h, 3d or 1w",
            "a.yaml:6:24: unknown template `t/x`",
            "b.yaml:2:10: unknown journey kind `per_ordr`",
            "b.yaml:5:5: unknown key `emial` in a step",
        ]
    );
}

#[test]
fn the_cli_prints_every_error_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("aftercare-validate-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("templates/t")).unwrap();
    std::fs::write(dir.join("templates/t/a.subject.j2"), "A").unwrap();
    std::fs::write(dir.join("templates/t/a.html.j2"), "<p>A</p>").unwrap();
    std::fs::write(
        dir.join("good.yaml"),
        format!("{HEAD}  - id: a\n    email: {{ template: t/a }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        format!("{HEAD}  - id: a\n    wait: 1x\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .arg("validate")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = dir.join("bad.yaml").display().to_string();
    assert_eq!(
        stdout,
        format!(
            "{path}:5:11: `1x` is not a duration: write a number and a unit, like 30s, 15m, 2h, 3d or 1w\n  hint: durations look like 30s, 15m, 2h, 3d or 1w\n"
        )
    );
    std::fs::remove_file(dir.join("bad.yaml")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .arg("validate")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_zero_timeout_is_refused() {
    let yaml = format!(
        "{HEAD}  - id: a\n    wait_for: {{ event: order.shipped, timeout: 0s, on_timeout: a }}\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:48: `timeout` must be longer than 0s\n  hint: wait at least a second, e.g. `timeout: 1h`",
        ]
    );
}

/// An experiment (SPEC §8): a holdout from 0% to 50% with at most two decimals, measures with
/// the keys they need and unique names, a target in percentage points.
#[test]
fn experiments_are_checked_key_by_key() {
    let steps = "steps:\n  - id: a\n    email: { template: t/a }\n";
    let file = |experiment: &str| {
        format!("name: s\ntrigger: {{ event: order.placed }}\nexperiment:\n{experiment}{steps}")
    };
    assert_eq!(
        check(&file(
            "  holdout: 10%\n  salt: 2026q4\n  target: 2.5pp\n  measure:\n    - { name: repeat_purchase, event: order.placed, within: 90d }\n    - { name: review, event: review.submitted, within: 30d, when: \"event.data.rating >= 4\" }\n"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        check(&file("  holdout: 60%\n")),
        [
            "s.yaml:4:12: `experiment.holdout` must be a share from 0% to 50%, found `60%`\n  hint: write it like `10%`; holding out more than half leaves too few customers treated"
        ]
    );
    for bad in ["ten", "10", "10.125%", "-5%", "1e1%"] {
        assert_eq!(
            check(&file(&format!("  holdout: \"{bad}\"\n"))).len(),
            1,
            "{bad}"
        );
    }
    assert_eq!(
        check(&file("  salt: x\n")),
        [
            "s.yaml:4:3: `experiment` has no `holdout`\n  hint: add `holdout: 10%`: the share of the customers who enter held out"
        ]
    );
    assert_eq!(
        check(&file(
            "  holdout: 5%\n  target: 2%\n  measure:\n    - { name: m, event: order.placed }\n    - { name: m, event: order.placed, within: 1d }\n    - { name: m, event: order.placed, within: 1d }\n    - { name: n, event: order.placed, within: 1d, per: day }\n"
        )),
        [
            "s.yaml:5:11: `experiment.target` must be an uplift in percentage points, found `2%`\n  hint: write it like `2pp` (from 29% to 31% is 2pp)",
            "s.yaml:7:7: a measure has no `within`\n  hint: add `within: 90d`",
            "s.yaml:8:15: two measures are named `m`\n  hint: give each measure its own name: the figures are kept by name",
            "s.yaml:9:15: two measures are named `m`\n  hint: give each measure its own name: the figures are kept by name",
            "s.yaml:10:51: unknown key `per` in a measure\n  hint: known keys here: name, event, within, when",
        ]
    );
}

/// Variants of a step: two or more, unique ids, whole weights from 1, and each overrides at
/// most the step's action, nothing else.
#[test]
fn variants_split_a_step_and_override_only_its_action() {
    let file = |variants: &str| {
        format!("{HEAD}  - id: a\n    email: {{ template: t/a }}\n    variants:\n{variants}")
    };
    assert_eq!(
        check(&file(
            "      - { id: a, weight: 1 }\n      - { id: b, weight: 3, email: { template: t/b } }\n"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        check(&file("      - { id: a, weight: 1 }\n")),
        [
            "s.yaml:7:7: a split needs two variants or more, found 1\n  hint: add `- { id: b, weight: 1, email: { template: ... } }`, or remove `variants`"
        ]
    );
    assert_eq!(
        check(&file(
            "      - { id: a, weight: 0 }\n      - { id: a, weight: 1.5 }\n      - { id: a, weight: 1 }\n      - { weight: 1, wait: 2d, email: { template: t/b }, exit: true }\n      - { id: c, weight: 1, email: { template: t/nope } }\n"
        )),
        [
            "s.yaml:7:26: a variant's `weight` must be a whole number from 1 to 1000000, found `0`\n  hint: weights are relative: 1 and 1 split evenly, 3 and 1 give the first three in four",
            "s.yaml:8:15: two variants are named `a`\n  hint: give each variant its own id: decisions and figures name it",
            "s.yaml:8:26: a variant's `weight` must be a whole number from 1 to 1000000, found `1.5`\n  hint: weights are relative: 1 and 1 split evenly, 3 and 1 give the first three in four",
            "s.yaml:9:15: two variants are named `a`\n  hint: give each variant its own id: decisions and figures name it",
            "s.yaml:10:9: a variant has no `id`\n  hint: add `id: b`",
            "s.yaml:10:22: `wait` cannot differ between variants\n  hint: a variant overrides only the step's action (`email`, `start` or `exit`); the rest is the step's",
            "s.yaml:10:58: a variant has one action; this one has `email` and `exit`\n  hint: split it into one step per action",
            "s.yaml:11:48: unknown template `t/nope`\n  hint: create templates/t/nope.subject.j2 and templates/t/nope.html.j2",
        ]
    );
    let missing = check(&file(
        "      - { id: a, weight: 1 }\n      - { id: c, weight: 1, email: { template: t/nope } }\n",
    ));
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("s.yaml:8:48: unknown template `t/nope`"),
        "{}",
        missing[0]
    );
}

/// A value quoted back in a diagnostic is cut short: a 5,000-digit holdout or a 3,000-digit
/// wait gives a message of at most 500 bytes and a `…`, not the value whole.
#[test]
fn values_quoted_in_messages_are_cut_short() {
    let digits = "9".repeat(5_000);
    for yaml in [
        format!(
            "name: s\ntrigger: {{ event: order.placed }}\nexperiment: {{ holdout: \"{digits}%\" }}\nsteps:\n  - id: a\n    email: {{ template: t/a }}\n"
        ),
        format!("{HEAD}  - id: a\n    wait: \"{digits}\"\n    email: {{ template: t/a }}\n"),
    ] {
        let got = check(&yaml);
        assert_eq!(got.len(), 1, "{got:?}");
        let message = got[0].lines().next().unwrap();
        let text = message.splitn(4, ':').nth(3).unwrap().trim_start();
        assert!(text.len() <= 500 + '…'.len_utf8(), "{} bytes", text.len());
        assert!(text.ends_with("99…"), "{text}");
    }
}

#[test]
fn branches_go_to_known_steps_with_the_fallback_last_and_never_loop_without_a_wait() {
    let yaml = format!(
        "{HEAD}  - id: ask\n    branch:\n      - {{ goto: ask }}\n      - {{ when: \"customer.orders_count > 1\", goto: thnaks }}\n      - {{ when: \"x\" }}\n  - id: thanks\n    email: {{ template: t/a }}\n    branch: [{{ goto: thanks }}]\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:6:9: only the last arm of a `branch` may go without `when`\n  hint: an arm without `when` always matches: the arms after it would never run; move it last",
            "s.yaml:7:52: `goto` names an unknown step `thnaks`\n  hint: did you mean `thanks`?",
            "s.yaml:8:9: a branch arm has no `goto`\n  hint: add `goto: STEP`, the id of a step in this file",
            "s.yaml:11:5: a step has one action; this one has `email` and `branch`\n  hint: split it into one step per action",
        ]
    );
    let looping = format!(
        "{HEAD}  - id: a\n    email: {{ template: t/a }}\n  - id: again\n    branch: [{{ when: \"customer.orders_count > 1\", goto: a }}]\n  - id: waited\n    wait: 1d\n    branch: [{{ goto: a }}]\n"
    );
    assert_eq!(
        check(&looping),
        [
            "s.yaml:7:14: this arm goes back to `a` with no wait on the way: it would loop at one instant\n  hint: add a `wait` (or `wait_for`) to a step between the target and the branch",
            // With a wait, the loop is bounded; but a journey sends each step's email once.
            "s.yaml:10:14: this arm goes back over `a`, whose email (or webhook) a journey sends once\n  hint: go back only to steps that wait or branch, or `start` a new journey of a sequence for the repeat",
        ]
    );
    // A zero wait is no wait; going back over steps that only wait is fine.
    let zero = format!(
        "{HEAD}  - id: a\n    wait: 0s\n  - id: again\n    branch: [{{ when: \"customer.orders_count > 1\", goto: a }}]\n"
    );
    assert_eq!(check(&zero).len(), 1, "{:?}", check(&zero));
    let poll = format!(
        "{HEAD}  - id: a\n    wait: 1d\n  - id: again\n    branch: [{{ when: \"customer.orders_count < 2\", goto: a }}]\n  - id: thanks\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(check(&poll), Vec::<String>::new());
}

#[test]
fn date_triggers_are_checked_key_by_key() {
    let steps = "steps:\n  - id: a\n    email: { template: t/a }\n";
    let bad = format!(
        "name: s\ntrigger: {{ date: customer.brithday, offset: 3 days, at: \"9am\", repeat: yarly }}\n{steps}"
    );
    let both =
        format!("name: s\ntrigger: {{ event: order.placed, date: customer.birthday }}\n{steps}");
    let stray = format!("name: s\ntrigger: {{ event: order.placed, offset: -3d }}\n{steps}");
    let attribute =
        format!("name: s\ntrigger: {{ date: \"customer.attributes.re newal\" }}\n{steps}");
    let good = format!(
        "name: s\ntrigger: {{ date: customer.attributes.renewal, offset: -30d, at: \"23:59\", repeat: monthly }}\n{steps}"
    );
    let all: Vec<String> = [bad, both, stray, attribute, good]
        .iter()
        .flat_map(|y| check(y))
        .collect();
    assert_eq!(
        all,
        [
            "s.yaml:2:18: `date` must be customer.birthday or customer.attributes.NAME, found `customer.brithday`\n  hint: the customer's profile field that holds a YYYY-MM-DD or RFC 3339 date",
            "s.yaml:2:45: `offset` must be whole days, e.g. `-3d` or `2d`, found `3 days`\n  hint: days before (-) or after the date; the time of day is `at`",
            "s.yaml:2:57: `at` must be a time of day HH:MM, found `9am`\n  hint: e.g. `at: \"09:00\"`, in the customer's timezone",
            "s.yaml:2:72: unknown `repeat` `yarly`\n  hint: did you mean `yearly`?",
            "s.yaml:2:33: a trigger has either `event` or `date`, not both\n  hint: one sequence per trigger: split it in two",
            "s.yaml:2:33: `offset` goes with a `date` trigger\n  hint: remove it, or trigger on `date: customer.birthday` instead of an event",
            "s.yaml:2:18: `date` must be customer.birthday or customer.attributes.NAME, found `customer.attributes.re newal`\n  hint: the customer's profile field that holds a YYYY-MM-DD or RFC 3339 date",
        ]
    );
}

#[test]
fn reorder_triggers_need_a_category_an_interval_and_a_journey_per_order() {
    let steps = "steps:\n  - id: a\n    email: { template: t/a }\n";
    let bad = format!(
        "name: s\njourney: per_order\ntrigger: {{ reorder: {{ after: 0s, per_quantity: yes }} }}\n{steps}"
    );
    let per_customer =
        format!("name: s\ntrigger: {{ reorder: {{ category: film, after: 30d }} }}\n{steps}");
    let with_event = format!(
        "name: s\njourney: per_order\ntrigger: {{ event: order.placed, reorder: {{ category: film, after: 30d }} }}\n{steps}"
    );
    let good = format!(
        "name: s\njourney: per_order\ntrigger: {{ reorder: {{ category: film, after: 30d, per_quantity: true }} }}\n{steps}"
    );
    let all: Vec<String> = [bad, per_customer, with_event, good]
        .iter()
        .flat_map(|y| check(y))
        .collect();
    assert_eq!(
        all,
        [
            "s.yaml:3:21: `reorder` has no `category`\n  hint: add `category: film`",
            "s.yaml:3:30: `reorder.after` must be longer than 0s\n  hint: e.g. `after: 30d`",
            "s.yaml:3:48: `reorder.per_quantity` must be true or false\n  hint: write `true` or `false` without quotes",
            "s.yaml:2:1: a `reorder` trigger starts a journey per order\n  hint: add `journey: per_order`",
            "s.yaml:3:12: a `reorder` trigger has no `event` or `date`: it starts after an order\n  hint: remove it; the orders that count are those with an item of `reorder.category`",
        ]
    );
}

#[test]
fn a_holdout_needs_a_marketing_sequence_and_something_to_measure() {
    let steps =
        "trigger: { event: order.placed }\nsteps:\n  - id: a\n    email: { template: t/a }\n";
    let transactional = format!(
        "name: s\ncategory: transactional\nexperiment:\n  holdout: 10%\n  measure: [{{ name: m, event: order.placed, within: 30d }}]\n{steps}"
    );
    let unmeasured = format!("name: s\nexperiment:\n  holdout: 10%\n{steps}");
    let instant = format!(
        "name: s\nexperiment:\n  holdout: 10%\n  measure: [{{ name: m, event: order.placed, within: 0s }}]\n{steps}"
    );
    let all: Vec<String> = [transactional, unmeasured, instant]
        .iter()
        .flat_map(|y| check(y))
        .collect();
    assert_eq!(
        all,
        [
            "s.yaml:3:1: a transactional sequence cannot hold customers out: its emails are always sent\n  hint: remove `experiment`, or give the sequence a marketing category",
            "s.yaml:2:1: a holdout without a `measure` withholds emails and measures nothing\n  hint: add `measure: [{ name: repeat_purchase, event: order.placed, within: 90d }]`",
            "s.yaml:4:53: `measure.within` must be longer than 0s: nothing could be counted\n  hint: how long after entering a conversion counts, e.g. `within: 90d`",
        ]
    );
}

#[test]
fn a_webhook_needs_an_endpoint_and_a_json_body_template() {
    let yaml = format!(
        "{HEAD}  - id: a\n    webhook: {{ body: t/hook }}\n  - id: b\n    webhook: {{ endpoint: \"sms gw\", body: t/hok }}\n  - id: c\n    webhook: {{ endpoint: sms, body: t/a }}\n  - id: d\n    webhook: {{ endpoint: sms }}\n    email: {{ template: t/a }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:5:14: `webhook` has no `endpoint`\n  hint: add `endpoint: sms`, the name of a [webhooks.sms] section of aftercare.toml",
            "s.yaml:7:26: a webhook endpoint `sms gw` may only use letters, digits, - and _\n  hint: for example camera-education or cross_sell",
            "s.yaml:7:42: unknown webhook body `t/hok`\n  hint: did you mean `t/hook`?",
            "s.yaml:9:37: template `t/a` has no default json part\n  hint: create templates/t/a.json.j2",
            "s.yaml:11:5: a step has one action; this one has `email` and `webhook`\n  hint: split it into one step per action",
        ]
    );
}

#[test]
fn after_auto_needs_a_fallback_and_a_fallback_needs_after_auto() {
    let steps = "steps:\n  - id: a\n    email: { template: t/a }\n";
    let trigger = |r: &str| {
        format!(
            "name: s\njourney: per_order\ntrigger: {{ reorder: {{ category: film, {r} }} }}\n{steps}"
        )
    };
    let all: Vec<String> = [
        trigger("after: auto"),
        trigger("after: 30d, fallback: 30d"),
        trigger("after: auto, fallback: 0s"),
        trigger("after: auto, fallback: 30d"),
    ]
    .iter()
    .flat_map(|y| check(y))
    .collect();
    assert_eq!(
        all,
        [
            "s.yaml:3:46: `after: auto` needs a `fallback`\n  hint: add `fallback: 30d`: the interval used while fewer than 30 customers have bought the category twice",
            "s.yaml:3:51: `fallback` goes with `after: auto`\n  hint: remove it: a fixed `after` is always used",
            "s.yaml:3:62: `reorder.fallback` must be longer than 0s\n  hint: e.g. `fallback: 30d`",
        ]
    );
}

/// A webhook body is rendered for a sample customer: one that is not JSON is refused (every
/// `{{ }}` writes a JSON value, so a value inside quotes breaks it for every customer).
#[test]
fn a_webhook_body_that_renders_to_what_is_not_json_is_refused() {
    let mut templates = default_templates();
    templates.push((
        "sms/quoted.json.j2".into(),
        r#"{"name": "{{ customer.name }}", }"#.into(),
    ));
    let yaml = format!("{HEAD}  - id: a\n    webhook: {{ endpoint: sms, body: sms/quoted }}\n");
    let diags = diagnostics(&[("s.yaml", &yaml)], templates);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].starts_with("templates/sms/quoted.json.j2:1:1: the rendered body is not JSON: expected `,` or `}` at line 1 column 12"),
        "{diags:?}"
    );
    assert!(
        diags[0].contains("hint: each {{ }} writes a JSON value"),
        "{diags:?}"
    );
}

#[test]
fn a_coupon_is_generated_on_a_sending_step_with_a_plain_prefix_and_a_sane_length() {
    let yaml = format!(
        "{HEAD}  - id: a\n    wait: 1d\n    coupon: {{ generate: {{}} }}\n  - id: b\n    email: {{ template: t/a }}\n    coupon: {{ generate: {{ prefix: \"tri \", length: 3 }} }}\n  - id: c\n    email: {{ template: t/a }}\n    coupon: {{ pool: tripod }}\n  - id: d\n    email: {{ template: t/a }}\n    coupon: {{ generate: {{ prefix: TRI-, length: 8 }} }}\n"
    );
    assert_eq!(
        check(&yaml),
        [
            "s.yaml:6:5: a `coupon` goes on a step that sends an `email` or a `webhook`\n  hint: move it to the step whose message carries the code",
            "s.yaml:9:35: `coupon.generate.prefix` `tri ` may only use capital letters, digits, - and _ (at most 16)\n  hint: for example `TRI-`",
            "s.yaml:9:51: `coupon.generate.length` must be a whole number from 6 to 32, found `3`\n  hint: 8 characters of base32 make over a trillion codes",
            "s.yaml:12:13: `coupon` has no `generate`\n  hint: add `generate: { prefix: \"TRI-\", length: 8 }`",
            "s.yaml:12:15: unknown key `pool` in `coupon`\n  hint: known keys here: generate",
        ]
    );
}
