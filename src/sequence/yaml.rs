//! YAML into a small node tree that remembers where every node started.
//!
//! We read saphyr-parser's event stream ourselves instead of deserializing with serde: serde
//! stops at the first problem, while `validate` must report every problem with its position.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::diag::Pos;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or nothing at all.
    Null,
    /// Any other scalar, as written; `quoted` tells `"true"` (a string) from `true`.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What the node is, in words a marketer knows, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Null => "nothing",
            NodeKind::Scalar { .. } => "a single value",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// A YAML syntax error with its position, or a limit the file went past.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// What to do about it, when more particular than "check the syntax".
    pub hint: Option<&'static str>,
}

/// What one file may cost to read (SPEC §7): nesting and alias expansion. A file of 637 bytes
/// of nested aliases otherwise expands to gigabytes, and 50,000 nested lists overflow the
/// stack of whoever walks or drops the tree.
#[derive(Debug, Clone, Copy)]
pub struct YamlLimits {
    pub max_depth: usize,
    pub max_alias_nodes: usize,
}

impl Default for YamlLimits {
    fn default() -> YamlLimits {
        let l = super::Limits::default();
        YamlLimits {
            max_depth: l.max_depth,
            max_alias_nodes: l.max_alias_nodes,
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line() as u32, span.start.col() as u32 + 1)
}

/// Parses one YAML document with the default limits. An empty file is a `Null` node at 1:1.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    parse_limited(src, YamlLimits::default())
}

/// Parses one YAML document, refusing it as soon as it goes past `limits`.
pub fn parse_limited(src: &str, limits: YamlLimits) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(src);
    let mut builder = Builder {
        limits,
        ..Builder::default()
    };
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            let pos = Pos::new(e.marker().line() as u32, e.marker().col() as u32 + 1);
            // The scanner's own bound on flow nesting (255 levels), met while it reads ahead.
            if e.info() == "recursion limit exceeded" {
                return Builder::too_deep(pos, limits.max_depth);
            }
            SyntaxError {
                pos,
                message: e.info().to_string(),
                hint: None,
            }
        })?;
        if let Some(done) = builder.push(event, pos_of(&span))? {
            return Ok(done);
        }
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos::START,
        kind: NodeKind::Null,
    }))
}

/// A scalar's node kind: null when plain and written as null, else its text and whether it
/// was quoted.
fn scalar(text: std::borrow::Cow<'_, str>, style: ScalarStyle) -> NodeKind {
    let quoted = !matches!(style, ScalarStyle::Plain);
    if !quoted && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
        NodeKind::Null
    } else {
        NodeKind::Scalar {
            text: text.into_owned(),
            quoted,
        }
    }
}

/// A mapping or list being read: where it started, its anchor, what it holds so far, and how
/// many nodes that is (itself included).
enum Open {
    Seq(Pos, usize, Vec<Node>, usize),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    /// Each anchor's node and its size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    documents: usize,
    limits: YamlLimits,
    /// Nodes copied in by aliases so far.
    expanded: usize,
}

impl Builder {
    /// Feeds one event; returns the root once a second document would start.
    fn push(&mut self, event: Event<'_>, pos: Pos) -> Result<Option<Node>, SyntaxError> {
        match event {
            Event::DocumentStart(_) => self.document(pos)?,
            Event::Scalar(text, style, anchor, _) => {
                let node = Node {
                    pos,
                    kind: scalar(text, style),
                };
                self.finish(node, 1, anchor)?;
            }
            Event::Alias(id) => self.alias(id, pos)?,
            Event::SequenceStart(anchor, _) => {
                self.deeper(pos)?;
                self.stack.push(Open::Seq(pos, anchor, Vec::new(), 1));
            }
            Event::MappingStart(anchor, _) => {
                self.deeper(pos)?;
                self.stack.push(Open::Map(pos, anchor, Vec::new(), None, 1))
            }
            Event::SequenceEnd | Event::MappingEnd => self.close()?,
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(None)
    }

    /// A document starts: refused when it is not the first.
    fn document(&mut self, pos: Pos) -> Result<(), SyntaxError> {
        self.documents += 1;
        if self.documents > 1 {
            return Err(SyntaxError {
                pos,
                message: "a sequence file holds one YAML document; remove the second `---`".into(),
                hint: None,
            });
        }
        Ok(())
    }

    /// An alias: a copy of its anchor's node, at the alias, counted against the alias limit.
    fn alias(&mut self, id: usize, pos: Pos) -> Result<(), SyntaxError> {
        let (node, size) = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
            pos,
            message: "alias to an unknown anchor".into(),
            hint: None,
        })?;
        self.copied(size, pos)?;
        self.finish(Node { pos, ..node }, size, 0)
    }

    /// The innermost mapping or list ends: it becomes a node of what holds it.
    fn close(&mut self) -> Result<(), SyntaxError> {
        let (node, anchor, size) = match self.stack.pop() {
            Some(Open::Seq(pos, anchor, items, size)) => (
                Node {
                    pos,
                    kind: NodeKind::Seq(items),
                },
                anchor,
                size,
            ),
            Some(Open::Map(pos, anchor, entries, _, size)) => (
                Node {
                    pos,
                    kind: NodeKind::Map(entries),
                },
                anchor,
                size,
            ),
            None => return Ok(()),
        };
        self.finish(node, size, anchor)
    }

    /// A mapping or list opens: refused past the nesting limit, before it is read.
    fn deeper(&self, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(Builder::too_deep(pos, self.limits.max_depth));
        }
        Ok(())
    }

    fn too_deep(pos: Pos, max: usize) -> SyntaxError {
        SyntaxError {
            pos,
            message: format!("nested deeper than {max} levels of mappings and lists"),
            hint: Some(
                "a sequence file needs a handful of levels; look for a runaway `- ` or `[` (sequences.max_depth)",
            ),
        }
    }

    /// Counts nodes copied by an alias or kept for an anchor: anchors nested in each other
    /// each keep a copy of what they hold, so they cost as much as aliases would.
    fn copied(&mut self, size: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.expanded = self.expanded.saturating_add(size);
        if self.expanded > self.limits.max_alias_nodes {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "aliases expand to more than {} nodes",
                    self.limits.max_alias_nodes
                ),
                hint: Some(
                    "write the repeated part out, or alias smaller pieces (sequences.max_alias_nodes)",
                ),
            });
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, size: usize, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.copied(size, node.pos)?;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(_, _, items, total)) => {
                items.push(node);
                *total = total.saturating_add(size);
            }
            Some(Open::Map(_, _, entries, key, total)) => {
                *total = total.saturating_add(size);
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let root = parse("name: x\nsteps:\n  - id: a\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0.pos, Pos::new(2, 1));
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        let NodeKind::Map(step) = &items[0].kind else {
            panic!("not a map")
        };
        assert_eq!(step[0].1.pos, Pos::new(3, 9));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("name: x\nsteps: [a, b\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
    }

    #[test]
    fn quoted_scalars_are_marked() {
        let root = parse("a: 'true'\nb: true\nc: ~\n").unwrap();
        let NodeKind::Map(e) = root.kind else {
            panic!()
        };
        assert!(matches!(
            &e[0].1.kind,
            NodeKind::Scalar { quoted: true, .. }
        ));
        assert!(matches!(
            &e[1].1.kind,
            NodeKind::Scalar { quoted: false, .. }
        ));
        assert_eq!(e[2].1.kind, NodeKind::Null);
    }

    #[test]
    fn alias_bombs_are_refused_at_the_alias_that_crosses_the_limit() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
            let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(bomb.len() < 700, "{}", bomb.len());
        let err = parse(&bomb).unwrap_err();
        assert_eq!(err.message, "aliases expand to more than 10000 nodes");
        // Anchored copies and alias copies together: a: 11, b: 111 + 110, c: 1,111 + 1,110,
        // d: 11,111 (the anchor of d crosses the limit).
        assert_eq!(err.pos.line, 4);
        // Aliases under the limit are fine.
        assert!(parse("a: &a [1, 2]\nb: *a\nc: *a\n").is_ok());
        // Anchors nested in each other, without a single alias, keep copies too.
        let nested = format!(
            "z: {}[{}]{}\n",
            "&a [".repeat(60),
            vec!["x"; 500].join(","),
            "]".repeat(60)
        );
        assert_eq!(
            parse(&nested).unwrap_err().message,
            "aliases expand to more than 10000 nodes"
        );
    }

    #[test]
    fn nesting_is_bounded_in_block_and_flow_style() {
        let block: String = (0..50_000)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        let err = parse(&block).unwrap_err();
        assert_eq!(
            err.message,
            "nested deeper than 64 levels of mappings and lists"
        );
        assert_eq!(err.pos, Pos::new(65, 129));
        // Flow style: the scanner reads ahead and stops at its own bound.
        let flow = format!("a: {}{}", "[".repeat(200_000), "]".repeat(200_000));
        let err = parse(&flow).unwrap_err();
        assert_eq!(
            err.message,
            "nested deeper than 64 levels of mappings and lists"
        );
        let flow = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
        let err = parse(&flow).unwrap_err();
        assert_eq!(
            err.message,
            "nested deeper than 64 levels of mappings and lists"
        );
        assert_eq!(err.pos, Pos::new(1, 67));
        let flow_maps = format!("a: {}{}", "{b: ".repeat(100_000), "}".repeat(100_000));
        assert!(parse(&flow_maps).is_err());
        let ok: String = (0..60).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
        assert!(parse(&ok).is_ok());
    }
}
