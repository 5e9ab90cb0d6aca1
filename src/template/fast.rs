//! A fast path for simple subject lines: text, `{{ a.b }}` and `{% if a.b %}…{% endif %}`.
//!
//! `simulate` renders a subject for every email decision; MiniJinja sets up a full render state
//! each time. Subjects are nearly always this simple, so they are rendered directly; anything
//! else — or any value that is not a string, an integer or undefined — goes to MiniJinja,
//! which stays the definition (a test compares the two).

use minijinja::value::{Value, ValueKind};

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Vec<String>),
    If(Vec<String>, Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Simple(Vec<Piece>);

impl Simple {
    /// The template as pieces, if it only uses what the fast path models.
    pub fn parse(src: &str) -> Option<Simple> {
        // MiniJinja drops one trailing newline.
        let src = src
            .strip_suffix('\n')
            .map(|s| s.strip_suffix('\r').unwrap_or(s))
            .unwrap_or(src);
        let mut nest = Nest::default();
        let mut rest = src;
        while !rest.is_empty() {
            let next = rest.find(['{']).unwrap_or(rest.len());
            let (text, tail) = rest.split_at(next);
            if !text.is_empty() {
                nest.cur.push(Piece::Text(text.to_string()));
            }
            rest = tail;
            if rest.is_empty() {
                break;
            }
            rest = nest.markup(rest)?;
        }
        nest.stack.is_empty().then_some(Simple(nest.cur))
    }

    /// Renders, or `None` when a value falls outside what the fast path models.
    pub fn render(&self, ctx: &Value) -> Option<String> {
        let mut out = String::with_capacity(64);
        render(&self.0, ctx, &mut out)?;
        Some(out)
    }
}

/// The pieces parsed so far: each open `{% if %}` with its condition and the pieces before it,
/// and those of the innermost level.
#[derive(Default)]
struct Nest {
    stack: Vec<(Vec<String>, Vec<Piece>)>,
    cur: Vec<Piece>,
}

impl Nest {
    /// Reads the markup (or lone `{`) that `rest` starts with; what follows it, or `None` when
    /// it is not modelled.
    #[inline]
    fn markup<'a>(&mut self, rest: &'a str) -> Option<&'a str> {
        if let Some(body) = rest.strip_prefix("{{") {
            let end = body.find("}}")?;
            self.cur.push(Piece::Var(path(&body[..end])?));
            Some(&body[end + 2..])
        } else if let Some(body) = rest.strip_prefix("{%") {
            let end = body.find("%}")?;
            self.block(body[..end].trim())?;
            Some(&body[end + 2..])
        } else if rest.starts_with("{#") {
            None
        } else {
            self.cur.push(Piece::Text("{".into()));
            Some(&rest[1..])
        }
    }

    /// `{% if a.b %}` opens a level and `{% endif %}` closes one; other tags are not modelled.
    #[inline]
    fn block(&mut self, tag: &str) -> Option<()> {
        if let Some(cond) = tag.strip_prefix("if ") {
            self.stack
                .push((path(cond)?, std::mem::take(&mut self.cur)));
        } else if tag == "endif" {
            let (cond, outer) = self.stack.pop()?;
            let inner = std::mem::replace(&mut self.cur, outer);
            self.cur.push(Piece::If(cond, inner));
        } else {
            return None;
        }
        Some(())
    }
}

fn render(pieces: &[Piece], ctx: &Value, out: &mut String) -> Option<()> {
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(path) => {
                let v = resolve(ctx, path)?;
                match v.kind() {
                    ValueKind::Undefined | ValueKind::None => {}
                    ValueKind::String => out.push_str(v.as_str()?),
                    ValueKind::Number if v.as_i64().is_some() => out.push_str(&v.to_string()),
                    _ => return None,
                }
            }
            Piece::If(cond, inner) => {
                if resolve(ctx, cond)?.is_true() {
                    render(inner, ctx, out)?;
                }
            }
        }
    }
    Some(())
}

fn resolve(ctx: &Value, path: &[String]) -> Option<Value> {
    let mut v = ctx.clone();
    for seg in path {
        if v.is_undefined() || v.is_none() {
            return None;
        }
        v = v.get_attr(seg).ok()?;
    }
    Some(v)
}

/// `order.id` → [`order`, `id`]; anything else (filters, calls, `-` whitespace control) → None.
fn path(expr: &str) -> Option<Vec<String>> {
    let expr = expr.trim();
    let ok = !expr.is_empty()
        && expr.split('.').all(|seg| {
            !seg.is_empty()
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !seg.starts_with(|c: char| c.is_ascii_digit())
        });
    ok.then(|| expr.split('.').map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::{Environment, UndefinedBehavior, context};

    /// The fast path renders exactly what MiniJinja renders, whenever it renders at all.
    #[test]
    fn agrees_with_minijinja() {
        let templates = [
            "Your order {{ order.id }} is confirmed\n",
            "주문이 확인되었습니다 {% if order.id %}(주문번호 {{ order.id }}){% endif %}",
            "Hi {{customer.name}}, {{ customer.orders_count }} orders {so far}",
            "{% if customer.vip %}VIP {% if order.id %}#{{ order.id }}{% endif %}{% endif %}done",
            "Plain text",
        ];
        let contexts = [
            context! { order => context! { id => "o-1" }, customer => context! { name => "Ann", orders_count => 3, vip => true } },
            context! { order => context! { id => "" }, customer => context! { name => "<b>", vip => false } },
            context! { customer => context! { name => (), orders_count => 1.5 } },
            context! {},
        ];
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        let mut rendered = 0;
        for src in templates {
            let fast = Simple::parse(src).unwrap_or_else(|| panic!("not simple: {src}"));
            let t = env.template_from_str(src).unwrap();
            for ctx in &contexts {
                if let Some(got) = fast.render(ctx) {
                    assert_eq!(got, t.render(ctx).unwrap(), "{src} with {ctx:?}");
                    rendered += 1;
                }
            }
        }
        assert!(
            rendered >= 12,
            "the fast path declined too often: {rendered}"
        );
    }

    #[test]
    fn declines_anything_else() {
        for src in [
            "{{ order.id | upper }}",
            "{% for x in y %}{% endfor %}",
            "{# c #}",
            "{{- a -}}",
            "{% if a %}x",
        ] {
            assert!(Simple::parse(src).is_none(), "{src}");
        }
    }
}
