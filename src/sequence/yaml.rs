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

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line() as u32, span.start.col() as u32 + 1)
}

/// Parses one YAML document. An empty file is a `Null` node at 1:1.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(src);
    let mut builder = Builder::default();
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| SyntaxError {
            pos: Pos::new(e.marker().line() as u32, e.marker().col() as u32 + 1),
            message: e.info().to_string(),
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

enum Open {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    /// Feeds one event; returns the root once a second document would start.
    fn push(&mut self, event: Event<'_>, pos: Pos) -> Result<Option<Node>, SyntaxError> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a sequence file holds one YAML document; remove the second `---`"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let kind = if !quoted && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    NodeKind::Null
                } else {
                    NodeKind::Scalar {
                        text: text.into_owned(),
                        quoted,
                    }
                };
                self.finish(Node { pos, kind }, anchor);
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos,
                    message: "alias to an unknown anchor".into(),
                })?;
                self.finish(Node { pos, ..node }, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(pos, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(pos, anchor, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(pos, anchor, items)) => (
                        Node {
                            pos,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Open::Map(pos, anchor, entries, _)) => (
                        Node {
                            pos,
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                    None => return Ok(None),
                };
                self.finish(node, anchor);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(None)
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
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
}
