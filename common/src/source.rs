//! A parsed config file that remembers where every key and value came from, so any problem can be
//! reported as `file:line:column: reason`.
//!
//! The file is parsed once with toml's span-preserving parser (`toml::de::DeTable`); each section is
//! then deserialized on its own from that tree, so a type error in one section does not hide the
//! problems of the others, and validation problems (a [`KeyPath`]) are mapped back to the span of
//! their key or value.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diag::{Anchor, KeyPath, Problem, Segment};

/// A diagnostic with its place in a file: printed as `file:line:column: reason`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Located {
    /// The file name as the operator gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in one config file, located; empty means the file is good.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// The problems, sorted by position.
    pub items: Vec<Located>,
    /// True when the file could not be read at all (a different exit code from "has problems").
    pub unreadable: bool,
}

impl Diagnostics {
    /// One diagnostic for a file that cannot be read.
    pub fn unreadable(file: &str, reason: impl fmt::Display) -> Self {
        Self {
            items: vec![Located {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read: {reason}"),
            }],
            unreadable: true,
        }
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a located problem.
    pub fn push(&mut self, located: Located) {
        self.items.push(located);
    }

    /// Sorts by position and drops exact duplicates (the toml parser's recovery can repeat itself).
    pub fn finish(&mut self) {
        self.items.sort_by_key(|a| (a.line, a.column));
        let mut seen = std::collections::HashSet::new();
        self.items
            .retain(|d| seen.insert((d.line, d.column, d.message.clone())));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            if self.unreadable {
                writeln!(f, "{}: {}", d.file, d.message)?;
            } else {
                writeln!(f, "{d}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A config file parsed with its spans: the source of truth for locating problems.
#[derive(Debug)]
pub struct SourceFile<'a> {
    name: String,
    text: &'a str,
    root: Spanned<DeTable<'a>>,
    line_starts: Vec<usize>,
}

impl<'a> SourceFile<'a> {
    /// Parses `text` (named `name` in diagnostics); on syntax errors returns every one it found.
    pub fn parse(name: &str, text: &'a str) -> Result<Self, Diagnostics> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let (root, errors) = DeTable::parse_recoverable(text);
        let file = Self {
            name: name.to_string(),
            text,
            root,
            line_starts,
        };
        if errors.is_empty() {
            return Ok(file);
        }
        let mut diags = Diagnostics::default();
        for e in errors {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            diags.push(file.at(offset, format!("syntax error: {}", e.message())));
        }
        diags.finish();
        Err(diags)
    }

    /// The file name used in diagnostics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The (1-based) line and column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start)
            + 1;
        (line, column)
    }

    /// A diagnostic at a byte offset.
    pub fn at(&self, offset: usize, message: impl Into<String>) -> Located {
        let (line, column) = self.position(offset);
        Located {
            file: self.name.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// The top-level keys with the span of each key, in file order.
    pub fn top_level_keys(&self) -> Vec<(String, Range<usize>)> {
        let mut keys: Vec<_> = self
            .root
            .get_ref()
            .keys()
            .map(|k| (k.get_ref().to_string(), k.span()))
            .collect();
        keys.sort_by_key(|(_, span)| span.start);
        keys
    }

    /// The value at `path`, if the file has one.
    pub fn get(&self, path: &KeyPath) -> Option<&Spanned<DeValue<'a>>> {
        match self.walk(path) {
            Walk::Found { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The number of elements of the array at `path` (arrays of tables included).
    pub fn array_len(&self, path: &KeyPath) -> Option<usize> {
        match self.get(path)?.get_ref() {
            DeValue::Array(a) => Some(a.len()),
            _ => None,
        }
    }

    /// Deserializes the value at `path` on its own; `Ok(None)` when the file does not have it.
    ///
    /// Serde stops at the first error, so after each error the offending key (or array element)
    /// is removed from a copy of the tree and deserialization is retried: one run reports every
    /// unknown key and every badly typed value of the section, each at its exact place. A
    /// "missing field" that only follows from such a removal is not reported.
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        path: &KeyPath,
    ) -> Result<Option<T>, Vec<Located>> {
        let Some(value) = self.get(path) else {
            return Ok(None);
        };
        let mut value = value.clone();
        let mut errors = Vec::new();
        let mut removed: Vec<(String, usize)> = Vec::new();
        for _ in 0..MAX_RETRIES {
            let root_start = value.span().start;
            let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(v) if errors.is_empty() => return Ok(Some(v)),
                Ok(_) => return Err(errors),
                Err(e) => e,
            };
            let offset = e.span().map(|s| s.start).unwrap_or(root_start);
            let follow_on = missing_field(e.message())
                .is_some_and(|f| removed.iter().any(|(k, at)| k == f && *at == offset));
            if !follow_on {
                errors.push(self.at(offset, e.message().to_string()));
            }
            match remove_at(&mut value, offset) {
                Some(key) => removed.push(key),
                None => break,
            }
        }
        if errors.is_empty() {
            // Only follow-on errors were seen; report the last state rather than claim success.
            errors.push(self.at(value.span().start, "this section could not be read"));
        }
        Err(errors)
    }

    /// Maps a validation problem to its place: the value (or key) at its path, else the nearest
    /// enclosing item that exists (a missing key is reported at its table).
    pub fn locate(&self, problem: &Problem) -> Located {
        let offset = self.offset_of(&problem.path, problem.anchor);
        let mut message = problem.message.clone();
        if let Some(related) = &problem.related
            && let Walk::Found { value, .. } = self.walk(related)
        {
            let (line, column) = self.position(value.span().start);
            message.push_str(&format!(" (see line {line} column {column})"));
        }
        self.at(offset, message)
    }

    fn offset_of(&self, path: &KeyPath, anchor: Anchor) -> usize {
        match self.walk(path) {
            Walk::Found { key_span, value } => match (anchor, key_span) {
                (Anchor::Key, Some(k)) => k.start,
                _ => value.span().start,
            },
            Walk::Partial { nearest } => nearest.map(|v| v.span().start).unwrap_or(0),
        }
    }

    fn walk(&self, path: &KeyPath) -> Walk<'_, 'a> {
        let mut current: Option<&Spanned<DeValue<'a>>> = None;
        let mut key_span = None;
        for seg in path.segments() {
            let next = match (seg, current) {
                (Segment::Key(k), None) => self
                    .root
                    .get_ref()
                    .get_key_value(k.as_str())
                    .map(|(k, v)| (Some(k.span()), v)),
                (Segment::Key(k), Some(v)) => match v.get_ref() {
                    DeValue::Table(t) => t
                        .get_key_value(k.as_str())
                        .map(|(k, v)| (Some(k.span()), v)),
                    _ => None,
                },
                (Segment::Index(n), Some(v)) => match v.get_ref() {
                    DeValue::Array(a) => a.get(*n).map(|e| (Some(e.span()), e)),
                    _ => None,
                },
                (Segment::Index(_), None) => None,
            };
            match next {
                Some((k, v)) => {
                    key_span = k;
                    current = Some(v);
                }
                None => return Walk::Partial { nearest: current },
            }
        }
        match current {
            Some(value) => Walk::Found { key_span, value },
            None => Walk::Partial { nearest: None },
        }
    }
}

/// How many errors one section may report before the rest is left for the next run.
const MAX_RETRIES: usize = 64;

/// The field name of serde's "missing field `name`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the table entry whose key or value starts at `offset`, or the array element that does,
/// anywhere below `value`; returns the removed key's name (empty for an array element) and where
/// its table starts (serde reports a missing field there).
fn remove_at(value: &mut Spanned<DeValue<'_>>, offset: usize) -> Option<(String, usize)> {
    let own_start = value.span().start;
    // Deepest match first: an array of tables starts where its first table does, and the error
    // is about the table, not the whole array.
    match value.get_mut() {
        DeValue::Table(t) => {
            if let Some(found) = t.iter_mut().find_map(|(_, v)| remove_at(v, offset)) {
                return Some(found);
            }
            let key = t
                .iter()
                .find(|(k, v)| k.span().start == offset || v.span().start == offset)
                .map(|(k, _)| k.get_ref().to_string())?;
            t.remove(key.as_str());
            Some((key, own_start))
        }
        DeValue::Array(a) => {
            if let Some(found) = a.iter_mut().find_map(|e| remove_at(e, offset)) {
                return Some(found);
            }
            if !a.iter().any(|e| e.span().start == offset) {
                return None;
            }
            let kept: Vec<_> = a
                .iter()
                .filter(|e| e.span().start != offset)
                .cloned()
                .collect();
            *a = kept.into_iter().collect();
            Some((String::new(), own_start))
        }
        _ => None,
    }
}

enum Walk<'s, 'a> {
    Found {
        key_span: Option<Range<usize>>,
        value: &'s Spanned<DeValue<'a>>,
    },
    Partial {
        nearest: Option<&'s Spanned<DeValue<'a>>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const TEXT: &str = "[cluster]\nname = \"lab\"\n\n[[cluster.node]]\nid = 1\nname = \"gw1\"\n\n[[cluster.node]]\nid = 2\nname = \"gw2\"   # two\n";

    fn loc(file: &SourceFile<'_>, path: KeyPath) -> (usize, usize) {
        let l = file.locate(&Problem::new(path, "x"));
        (l.line, l.column)
    }

    #[test]
    fn key_path_maps_to_the_value_span() {
        let file = SourceFile::parse("t.toml", TEXT).unwrap();
        assert_eq!(loc(&file, KeyPath::new("cluster.name")), (2, 8));
        assert_eq!(
            loc(&file, KeyPath::new("cluster.node").index(1).key("id")),
            (9, 6)
        );
        assert_eq!(loc(&file, KeyPath::new("cluster.node").index(1)), (8, 1));
        let key = file
            .locate(&Problem::new(KeyPath::new("cluster.node").index(1).key("name"), "x").at_key());
        assert_eq!((key.line, key.column), (10, 1));
    }

    #[test]
    fn a_missing_key_is_reported_at_its_nearest_existing_table() {
        let file = SourceFile::parse("t.toml", TEXT).unwrap();
        assert_eq!(
            loc(&file, KeyPath::new("cluster.node").index(0).key("votes")),
            (4, 1)
        );
        assert_eq!(
            loc(&file, KeyPath::new("cluster.node").index(7).key("id")),
            (4, 1)
        );
        assert_eq!(loc(&file, KeyPath::new("nothing.here")), (1, 1));
    }

    #[test]
    fn related_paths_are_appended_with_their_position() {
        let file = SourceFile::parse("t.toml", TEXT).unwrap();
        let p = Problem::new(
            KeyPath::new("cluster.node").index(1).key("id"),
            "duplicate node id 1",
        )
        .with_related(KeyPath::new("cluster.node").index(0).key("id"));
        assert_eq!(
            file.locate(&p).to_string(),
            "t.toml:9:6: duplicate node id 1 (see line 5 column 6)"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "a = \"é\"\nb = \"ü\" ; c = 1\n";
        let errs = SourceFile::parse("u.toml", text).unwrap_err();
        assert_eq!(errs.items[0].line, 2);
        assert_eq!(errs.items[0].column, 9);
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Node {
        id: u32,
        name: String,
    }

    #[test]
    fn section_errors_point_at_the_offending_key() {
        let text = "[[node]]\nid = 1\nnmae = \"a\"\n[[node]]\nid = \"two\"\nname = \"b\"\n";
        let file = SourceFile::parse("n.toml", text).unwrap();
        let e0 = file
            .deserialize::<Node>(&KeyPath::new("node").index(0))
            .unwrap_err();
        assert_eq!(
            e0.len(),
            2,
            "misspelt `name` is both unknown and missing: {e0:?}"
        );
        assert_eq!((e0[0].line, e0[0].column), (3, 1));
        assert!(
            e0[0].message.starts_with("unknown field `nmae`"),
            "{}",
            e0[0].message
        );
        let e1 = file
            .deserialize::<Node>(&KeyPath::new("node").index(1))
            .unwrap_err();
        assert_eq!((e1[0].line, e1[0].column), (5, 6));
        assert_eq!(
            file.deserialize::<Node>(&KeyPath::new("absent"))
                .unwrap()
                .map(|n| n.id),
            None
        );
    }

    #[test]
    fn every_unknown_key_and_bad_value_of_a_section_is_reported() {
        let text = "[[node]]\nid = 1\nnmae = \"a\"\ncolour = 1\n[[node]]\nid = \"two\"\nname = \"b\"\n[[node]]\nname = \"c\"\n";
        let file = SourceFile::parse("n.toml", text).unwrap();
        let errs = file
            .deserialize::<Vec<Node>>(&KeyPath::new("node"))
            .unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(
            got.iter()
                .any(|g| g.starts_with("n.toml:3:1: unknown field `nmae`")),
            "{got:?}"
        );
        // node[0] lacks `name` because it was misspelt, not removed: serde says so, and it is real.
        assert!(
            got.iter()
                .any(|g| g.starts_with("n.toml:1:1: missing field `name`")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("n.toml:4:1: unknown field `colour`")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("n.toml:6:6: invalid type")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("n.toml:8:1: missing field `id`")),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|g| g.contains("missing field `id`") && g.starts_with("n.toml:5:")),
            "{got:?}"
        );
    }

    #[test]
    fn syntax_errors_are_all_reported_and_sorted() {
        let errs = SourceFile::parse("s.toml", "a = \nb = 2\nc = [1 2]\n").unwrap_err();
        assert!(errs.items.len() >= 2, "{errs}");
        assert!(
            errs.items
                .windows(2)
                .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column))
        );
        assert!(
            errs.items
                .iter()
                .all(|d| d.message.starts_with("syntax error: "))
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Builds a document of `[[t]]` tables (with a random amount of padding and comments) and
        /// remembers where each value was written, so the mapping can be checked exactly.
        fn document(rows: &[(usize, usize, bool, i64)]) -> (String, Vec<(KeyPath, usize, usize)>) {
            let mut text = String::from("# generated\n");
            let mut line = 2;
            let mut expect = Vec::new();
            for (i, (pad, blank, comment, value)) in rows.iter().enumerate() {
                if *comment {
                    text.push_str("# a comment with é\n");
                    line += 1;
                }
                text.push_str("[[t]]\n");
                line += 1;
                for _ in 0..*blank {
                    text.push('\n');
                    line += 1;
                }
                let prefix = format!("{}k{i} ={}", " ".repeat(*pad), " ".repeat(pad % 3 + 1));
                text.push_str(&format!("{prefix}{value}\n"));
                expect.push((
                    KeyPath::new("t").index(i).key(format!("k{i}")),
                    line,
                    prefix.chars().count() + 1,
                ));
                line += 1;
            }
            (text, expect)
        }

        proptest! {
            #[test]
            fn every_value_is_located_where_it_was_written(
                rows in proptest::collection::vec((0usize..6, 0usize..3, any::<bool>(), any::<i64>()), 1..12)
            ) {
                let (text, expect) = document(&rows);
                let file = SourceFile::parse("p.toml", &text).expect("generated TOML parses");
                for (path, line, column) in expect {
                    let got = file.locate(&Problem::new(path.clone(), "x"));
                    prop_assert_eq!((got.line, got.column), (line, column), "path {} in\n{}", path, text);
                }
            }

            #[test]
            fn locating_any_path_never_panics(
                keys in proptest::collection::vec(("[a-z]{1,3}", proptest::option::of(0usize..4)), 0..5)
            ) {
                let file = SourceFile::parse("p.toml", "a = 1\n[b]\nc = [1, 2]\n[[d]]\ne = { f = 1 }\n").expect("parses");
                let mut path = KeyPath::root();
                for (k, idx) in keys {
                    path = path.key(k);
                    if let Some(i) = idx {
                        path = path.index(i);
                    }
                }
                let got = file.locate(&Problem::new(path, "x"));
                prop_assert!(got.line >= 1 && got.column >= 1);
            }
        }
    }
}
