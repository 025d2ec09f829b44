//! Config diagnostics: where a problem is (a [`KeyPath`]) and what it is ([`Problem`]), collected in
//! [`Problems`] so that a validator reports every problem it finds, not only the first.

use std::fmt;

/// One step of a [`KeyPath`]: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A key inside a table, e.g. `cluster` or `node`.
    Key(String),
    /// An element of an array (arrays of tables included), e.g. the `1` of `node[1]`.
    Index(usize),
}

/// A path to a key inside the config file, printed the way an operator reads it: `cluster.node[1].id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath {
    segments: Vec<Segment>,
}

impl KeyPath {
    /// The empty path: the whole file.
    pub fn root() -> Self {
        Self::default()
    }

    /// A path of dotted keys, e.g. `KeyPath::new("cluster.timing")` (no indices; use [`KeyPath::index`]).
    pub fn new(dotted: &str) -> Self {
        let mut path = Self::root();
        for part in dotted.split('.').filter(|p| !p.is_empty()) {
            path.segments.push(Segment::Key(part.to_string()));
        }
        path
    }

    /// This path followed by `key`.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut path = self.clone();
        path.segments.push(Segment::Key(key.into()));
        path
    }

    /// This path followed by the array index `index`.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.segments.push(Segment::Index(index));
        path
    }

    /// The steps of this path, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The path without its last step (the root stays the root).
    pub fn parent(&self) -> Self {
        let mut path = self.clone();
        path.segments.pop();
        path
    }

    /// True for the empty path.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?
                    } else {
                        write!(f, "{k:?}")?
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of a key/value pair a problem points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Anchor {
    /// The value (the usual case: "this value is wrong").
    #[default]
    Value,
    /// The key itself (e.g. "this key is not allowed here").
    Key,
}

/// One problem found in a config: where, what, and optionally a second place involved (the first
/// definition of a duplicate, the section a reference points to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is.
    pub path: KeyPath,
    /// Whether `path` designates the key or its value.
    pub anchor: Anchor,
    /// What is wrong, in the operator's words (no trailing period).
    pub message: String,
    /// Another place the operator should look at, e.g. the first of two duplicates.
    pub related: Option<KeyPath>,
}

impl Problem {
    /// A problem about the value at `path`.
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            path,
            anchor: Anchor::Value,
            message: message.into(),
            related: None,
        }
    }

    /// The same problem, pointing at `related` as a second place to look.
    pub fn with_related(mut self, related: KeyPath) -> Self {
        self.related = Some(related);
        self
    }

    /// The same problem, pointing at the key rather than at its value.
    pub fn at_key(mut self) -> Self {
        self.anchor = Anchor::Key;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(related) = &self.related {
            write!(f, " (see {related})")?;
        }
        Ok(())
    }
}

/// Collects every [`Problem`] a validator finds; validators never stop at the first one.
#[derive(Clone, Debug, Default)]
pub struct Problems {
    items: Vec<Problem>,
}

impl Problems {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem about the value at `path`.
    pub fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.items.push(Problem::new(path, message));
    }

    /// Records a fully built problem (with a related path or a key anchor).
    pub fn push(&mut self, problem: Problem) {
        self.items.push(problem);
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter()
    }

    /// Takes the problems out.
    pub fn into_vec(self) -> Vec<Problem> {
        self.items
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

/// Reports every value that appears more than once in `items`, pointing at the later one and
/// relating it to the first: duplicate node ids, resource names, bind addresses.
pub fn check_unique<'a, T, I>(problems: &mut Problems, items: I, what: &str)
where
    T: Eq + std::hash::Hash + fmt::Display + 'a,
    I: IntoIterator<Item = (KeyPath, &'a T)>,
{
    let mut seen: std::collections::HashMap<&T, KeyPath> = std::collections::HashMap::new();
    for (path, value) in items {
        match seen.get(value) {
            Some(first) => problems.push(
                Problem::new(path, format!("duplicate {what} {value}")).with_related(first.clone()),
            ),
            None => {
                seen.insert(value, path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_displays_like_the_operator_reads_it() {
        let p = KeyPath::new("cluster").key("node").index(1).key("id");
        assert_eq!(p.to_string(), "cluster.node[1].id");
        assert_eq!(
            KeyPath::new("dns.record").index(0).key("a b").to_string(),
            "dns.record[0].\"a b\""
        );
        assert_eq!(p.parent().to_string(), "cluster.node[1]");
        assert_eq!(KeyPath::root().to_string(), "(top level)");
    }

    #[test]
    fn check_unique_reports_each_later_duplicate_against_the_first() {
        let ids = [1u32, 2, 1, 1];
        let mut problems = Problems::new();
        check_unique(
            &mut problems,
            ids.iter()
                .enumerate()
                .map(|(i, id)| (KeyPath::new("n").index(i), id)),
            "node id",
        );
        let v = problems.into_vec();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].path.to_string(), "n[2]");
        assert_eq!(
            v[0].related.as_ref().map(|p| p.to_string()).as_deref(),
            Some("n[0]")
        );
        assert_eq!(v[1].path.to_string(), "n[3]");
    }
}
