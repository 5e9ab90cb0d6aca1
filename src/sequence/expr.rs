//! MiniJinja expressions (`when`, `skip_when`, `pause_when`), compiled once at load.

use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, Expression, Value};

use super::fast::Fast;

/// Expressions only need MiniJinja's filters and tests, never templates, so they share one
/// process-wide environment. That lets a compiled expression live as long as its sequence
/// without borrowing a per-catalog environment.
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // An expression decides one thing; this bounds one that loops over a large range.
        env.set_fuel(Some(EXPR_FUEL));
        env.set_recursion_limit(EXPR_RECURSION);
        env
    })
}

/// The budget of one evaluation: far above what a condition on a customer with a long
/// history needs (a few thousand), far below what takes a measurable time.
const EXPR_FUEL: u64 = 100_000;
const EXPR_RECURSION: usize = 100;

/// The longest expression accepted.
pub const MAX_EXPR_BYTES: usize = 2048;

/// A compiled expression and the text it came from.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    compiled: Arc<Expression<'static, 'static>>,
    /// The same expression evaluated without the VM, when its shape allows.
    fast: Option<Fast>,
}

impl Expr {
    /// Compiles `source`; the error is MiniJinja's message without its "syntax error" prefix noise.
    pub fn compile(source: &str) -> Result<Expr, String> {
        // MiniJinja's parser nests one level per operator of a chain (`1+1+…`): a long one
        // overflows a thread's stack while it compiles. A condition needs a line or two.
        if source.len() > MAX_EXPR_BYTES {
            return Err(format!(
                "it is {} bytes long; an expression is at most {MAX_EXPR_BYTES}",
                source.len()
            ));
        }
        let compiled = env()
            .compile_expression_owned(source.to_string())
            .map_err(|e| describe(&e))?;
        Ok(Expr {
            source: source.into(),
            compiled: Arc::new(compiled),
            fast: Fast::parse(source),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a truth value. An evaluation error is returned, never panics.
    pub fn eval(&self, ctx: Value) -> Result<bool, String> {
        if let Some(v) = self.fast.as_ref().and_then(|f| f.eval(&ctx)) {
            return Ok(v);
        }
        self.eval_slow(ctx)
    }

    /// Always through MiniJinja's VM.
    pub fn eval_slow(&self, ctx: Value) -> Result<bool, String> {
        self.compiled
            .eval(ctx)
            .map(|v| v.is_true())
            .map_err(|e| describe(&e))
    }
}

impl Expr {
    /// Evaluates through the VM; `Err` only when the evaluation went past its budget (what
    /// load-time checks refuse), whatever else it returned.
    pub fn eval_budgeted(&self, ctx: Value) -> Result<(), String> {
        match self.compiled.eval(ctx) {
            Err(e) if crate::template::over_budget(&e) => Err(describe(&e)),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Two expressions are the same when written the same: one source compiles to one program.
impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

impl Eq for Expr {}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// MiniJinja's error text, with its detail when it has one.
pub fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn compiles_and_evaluates() {
        let e = Expr::compile("customer.open_tickets > 0").unwrap();
        assert!(
            e.eval(context! { customer => context! { open_tickets => 2 } })
                .unwrap()
        );
        assert!(
            !e.eval(context! { customer => context! { open_tickets => 0 } })
                .unwrap()
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = Expr::compile("customer.open_tickets >").unwrap_err();
        assert!(err.contains("syntax error"), "{err}");
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    /// Stored versions are compiled again on the engine thread (a default 2 MiB stack): the
    /// longest expression of the worst shapes must compile there.
    #[test]
    fn the_longest_expressions_compile_on_a_small_stack() {
        let worst = [
            "-".repeat(MAX_EXPR_BYTES - 1) + "1",
            "not ".repeat((MAX_EXPR_BYTES - 1) / 4) + "1",
            vec!["1"; MAX_EXPR_BYTES / 2].join("+"),
            format!("x{}", "|lower".repeat((MAX_EXPR_BYTES - 1) / 6)),
            format!("x{}", ".a".repeat((MAX_EXPR_BYTES - 1) / 2)),
            format!("x{}", "[0]".repeat((MAX_EXPR_BYTES - 1) / 3)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for e in &worst {
                    assert!(e.len() <= MAX_EXPR_BYTES);
                    let _ = Expr::compile(e);
                }
            })
            .unwrap();
        assert!(handle.join().is_ok());
    }
}
