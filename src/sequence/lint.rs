//! Warnings about valid sequences that do something a shop should not: `validate` prints them
//! and still accepts the files.
//!
//! Review gating — sending customers to a review request only when their score is high — is
//! against Google's review policy and the FTC's rule on consumer reviews (16 CFR 465.7): a
//! branch whose condition reads a score and whose arms differ in reaching a review request is
//! flagged.

use super::{Action, Catalog, Sequence};

/// Words that make a condition a judgement of the customer's satisfaction.
const SCORES: &[&str] = &["score", "rating", "nps", "csat"];

/// One line per warning: `path:line:column: warning: …`.
pub fn warnings(catalog: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    for seq in catalog.sequences() {
        for (i, step) in seq.steps.iter().enumerate() {
            let Some(Action::Branch(arms)) = &step.action else {
                continue;
            };
            let Some(scored) = arms.iter().find(|a| {
                a.when.as_ref().is_some_and(|w| {
                    let text = w.to_string().to_ascii_lowercase();
                    SCORES.iter().any(|s| text.contains(s))
                })
            }) else {
                continue;
            };
            // Where each arm goes, and where no match goes (the next step).
            let mut targets: Vec<usize> = arms.iter().map(|a| a.goto).collect();
            if arms.iter().all(|a| a.when.is_some()) {
                targets.push(i + 1);
            }
            let reach: Vec<bool> = targets
                .iter()
                .map(|t| asks_review(catalog, seq, *t))
                .collect();
            if reach.iter().any(|r| *r) && reach.iter().any(|r| !r) {
                out.push(format!(
                    "{}:{}:{}: warning: this branch sends customers to a review request or away from it by their score (review gating); Google's review policy and the FTC's rule on consumer reviews forbid asking only the satisfied: ask everyone, and send low scores to support as well",
                    seq.path, scored.pos.line, scored.pos.col
                ));
            }
        }
    }
    out
}

/// Whether the journey, from step `from` on (until an exit or another branch), asks for a
/// review: an email of the `review` category, or a start of a `review` sequence.
fn asks_review(catalog: &Catalog, seq: &Sequence, from: usize) -> bool {
    for (i, step) in seq.steps.iter().enumerate().skip(from) {
        match &step.action {
            Some(Action::Email { .. }) if *seq.step_category(i).0 == *"review" => return true,
            Some(Action::Start { sequence }) => {
                let review = catalog
                    .get(sequence)
                    .is_some_and(|s| *s.category.0 == *"review");
                if review {
                    return true;
                }
            }
            Some(Action::Exit | Action::Branch(_)) => return false,
            _ => {}
        }
    }
    false
}
