//! `hastack import`: converts the config of the stack hastack replaces (corosync.conf, haproxy.cfg,
//! dnsmasq.conf) into the matching sections of hastack.toml, and says which lines it could not convert.
//!
//! Each importer is a pure function of the input text: it never touches the system, so it is fuzzed
//! and property-tested like the wire parsers. The result is always checked by the same validation as
//! `hastack config check` before it is printed.
//!
//! How a conversion goes (see [`Draft`]):
//! 1. the importer parses its format and fills the section structs, recording for each input line
//!    the config key(s) it went to, or why it does not convert (`Draft::skip`);
//! 2. the config is validated; whatever hastack refuses is taken out (the deepest key or array
//!    element the problem points at whose section still loads) and the lines that fed it are listed
//!    with the checker's message, until the config is valid;
//! 3. it is written with only the keys that differ from hastack's defaults, under a comment header
//!    listing the assumptions made (a prefix length the source does not give, ...).
//!
//! A line counts as converted when its meaning is in the output, also when that meaning is "no
//! effect" in the source too (a check option overridden by a later one, a repeated flag).

pub mod corosync;
pub mod dnsmasq;
pub mod haproxy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use hastack_common::{KeyPath, Problem, Problems, Segment};

use crate::config::Config;

/// Which foreign config a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// corosync.conf (totem, nodelist, quorum, logging).
    Corosync,
    /// haproxy.cfg (global, defaults, frontend, backend, listen).
    Haproxy,
    /// dnsmasq.conf (DHCP and DNS options).
    Dnsmasq,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Corosync => "corosync.conf",
            Kind::Haproxy => "haproxy.cfg",
            Kind::Dnsmasq => "dnsmasq.conf",
        })
    }
}

/// One input line the importer could not carry over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconverted {
    /// 1-based line number in the input.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
    /// Why it was not converted (unsupported keyword, no hastack equivalent, bad value, ...).
    pub reason: String,
}

/// What an importer produced: a hastack config (the sections it could fill) and what it left out.
#[derive(Debug, Clone)]
pub struct Import {
    /// The converted config, as TOML text ready for /etc/hastack/hastack.toml.
    pub toml: String,
    /// Lines not converted, in input order.
    pub unconverted: Vec<Unconverted>,
    /// Assumptions made while converting (also written as comments at the top of `toml`).
    pub notes: Vec<Note>,
}

/// Guesses the kind from the file name, then from the contents.
pub fn detect(path: &Path, text: &str) -> Option<Kind> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    if name.contains("corosync") {
        return Some(Kind::Corosync);
    }
    if name.contains("haproxy") {
        return Some(Kind::Haproxy);
    }
    if name.contains("dnsmasq") {
        return Some(Kind::Dnsmasq);
    }
    let words = |l: &str| l.split_whitespace().next().map(str::to_owned);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match words(line).as_deref() {
            Some("totem" | "nodelist" | "quorum" | "totem{" | "nodelist{" | "quorum{") => return Some(Kind::Corosync),
            Some("global" | "defaults" | "frontend" | "backend" | "listen") => return Some(Kind::Haproxy),
            _ => {}
        }
        let key = line.split('=').next().unwrap_or_default().trim();
        if key.starts_with("dhcp-") || matches!(key, "domain" | "local" | "address" | "server" | "addn-hosts" | "expand-hosts" | "cache-size") {
            return Some(Kind::Dnsmasq);
        }
    }
    None
}

/// Converts `text` (read from `path`, named in messages) as `kind`.
pub fn convert(kind: Kind, text: &str) -> Import {
    match kind {
        Kind::Corosync => corosync::convert(text),
        Kind::Haproxy => haproxy::convert(text),
        Kind::Dnsmasq => dnsmasq::convert(text),
    }
}

/// Checks converted TOML with the same validation as `hastack config check`; the diagnostics as text.
pub fn validate(toml: &str) -> Result<(), String> {
    crate::config::Config::from_str_named("<imported>", toml).map(|_| ()).map_err(|d| d.to_string())
}

/// A line an importer converted, but with an assumption the operator should check (a prefix
/// length the source file does not give, say). Written as a comment at the top of the TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based line number in the input.
    pub line: usize,
    /// What was assumed.
    pub text: String,
}

/// An importer's work in progress: the config being built, which input lines each part came from,
/// and the lines already known not to convert. [`Draft::finish`] makes the result valid: whatever
/// `hastack config check` would reject is taken out again, and the lines it came from are listed
/// with the checker's reason, so the TOML an importer prints always loads.
pub(crate) struct Draft {
    /// The config being built.
    pub config: Config,
    /// Content lines (not blank, not comments) by number, trimmed.
    lines: BTreeMap<usize, String>,
    /// Where each converted line went; a line may feed several places (a defaults line).
    origins: Vec<(Vec<Segment>, usize)>,
    /// Lines converted without a place of their own (an overridden option, a section header).
    consumed: BTreeSet<usize>,
    /// Lines not converted, with the reason.
    skipped: BTreeMap<usize, String>,
    /// Lines that lost a place to validation, with the checker's first reason.
    removed: BTreeMap<usize, String>,
    notes: Vec<Note>,
}

impl Default for Draft {
    fn default() -> Self {
        Draft::new("", |_| false)
    }
}

impl Draft {
    /// A draft for `text`; `is_content` says which trimmed lines count (not comments or blank).
    pub fn new(text: &str, is_content: impl Fn(&str) -> bool) -> Self {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| is_content(l))
            .map(|(n, l)| (n, l.to_string()))
            .collect();
        Self {
            config: Config::default(),
            lines,
            origins: Vec::new(),
            consumed: BTreeSet::new(),
            skipped: BTreeMap::new(),
            removed: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Records that `line` was converted into the value at `path`.
    pub fn origin(&mut self, line: usize, path: &KeyPath) {
        self.origins.push((path.segments().to_vec(), line));
    }

    /// Records that `line` was converted without a place of its own.
    pub fn consumed(&mut self, line: usize) {
        self.consumed.insert(line);
    }

    /// Records that `line` could not be converted, and why (the first reason given is kept).
    pub fn skip(&mut self, line: usize, reason: impl Into<String>) {
        self.skipped.entry(line).or_insert_with(|| reason.into());
    }

    /// True when `line` was given a place in the config.
    pub fn is_placed(&self, line: usize) -> bool {
        self.origins.iter().any(|(_, l)| *l == line)
    }

    /// Records an assumption made while converting `line`.
    pub fn note(&mut self, line: usize, text: impl Into<String>) {
        self.notes.push(Note { line, text: text.into() });
    }

    /// Makes the config valid (see [`Draft`]), renders it and lists every unconverted line.
    pub fn finish(mut self, kind: Kind) -> Import {
        let mut table = self
            .config
            .to_toml()
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .unwrap_or_default();
        if table.is_empty() && self.config != Config::default() {
            self.remove_all("the converted values could not be written as TOML");
        }
        let config = self.repair(&mut table);
        let mut toml = minimal_toml(&config);
        if let Err(d) = validate(&toml) {
            // The repair works on Config::validate; a value that does not load back would need a
            // bug elsewhere. Give up on the whole result rather than print something unloadable.
            let first = d.lines().next().unwrap_or_default().to_string();
            self.remove_all(&format!("the converted config does not load back: {first}"));
            toml = String::new();
        }
        let mut unconverted: BTreeMap<usize, String> = self.skipped.clone();
        let placed: BTreeSet<usize> = self.origins.iter().map(|(_, l)| *l).collect();
        // A line is only "removed" when none of its places is left; the reason is the first
        // removal's (the root cause: a listen section's backend without servers, say).
        for (line, reason) in &self.removed {
            if !placed.contains(line) {
                unconverted.entry(*line).or_insert_with(|| reason.clone());
            }
        }
        for line in self.lines.keys() {
            if !placed.contains(line) && !self.consumed.contains(line) {
                unconverted.entry(*line).or_insert_with(|| "not understood by the importer".into());
            }
        }
        // A line both placed and listed keeps its listing: the importer said it does not convert.
        let unconverted: Vec<Unconverted> = unconverted
            .into_iter()
            .map(|(line, reason)| Unconverted {
                line,
                text: self.lines.get(&line).cloned().unwrap_or_default(),
                reason,
            })
            .collect();
        // An assumption about a line that was not converted after all says nothing about the result.
        self.notes.retain(|n| !unconverted.iter().any(|u: &Unconverted| u.line == n.line));
        let mut header = String::new();
        if !toml.is_empty() || !self.notes.is_empty() {
            header.push_str(&format!("# Converted from {kind} by `hastack import`.\n"));
            self.notes.sort_by_key(|n| n.line);
            for n in &self.notes {
                header.push_str(&format!("# line {}: {}\n", n.line, n.text.replace('\n', " ")));
            }
            if !toml.is_empty() {
                header.push('\n');
            }
        }
        Import { toml: header + &toml, unconverted, notes: self.notes }
    }

    fn remove_all(&mut self, reason: &str) {
        for (_, line) in std::mem::take(&mut self.origins) {
            self.removed.entry(line).or_insert_with(|| reason.to_string());
        }
    }

    /// Takes out whatever validation rejects, one problem at a time, until the config is valid.
    fn repair(&mut self, table: &mut toml::Table) -> Config {
        // Whether taking out a value of a given shape (`dhcp.host[].address`) leaves its section
        // loadable: a property of the types (required field or not), so it is tried once.
        let mut removable: BTreeMap<String, bool> = BTreeMap::new();
        // Every round removes something from a finite table, so this ends; the bound is a guard.
        for _ in 0..10_000 {
            let config = match config_from_table(table) {
                Ok(c) => c,
                Err((section, message)) => {
                    self.take_out(table, &[Segment::Key(section)], &message);
                    continue;
                }
            };
            let mut problems = Problems::new();
            config.validate(&mut problems);
            let mut problems = problems.into_vec();
            if problems.is_empty() {
                return config;
            }
            // Problems inside array elements are handled together (a big file with many bad
            // reservations takes a few rounds, not one per line), last path first: taking out an
            // element only moves the elements after it, whose problems are already handled. A
            // problem about a whole section or key may be a consequence of those, so it waits
            // until they are gone and is handled alone.
            let in_elements: Vec<Problem> = problems
                .iter()
                .filter(|p| p.path.segments().iter().any(|s| matches!(s, Segment::Index(_))))
                .cloned()
                .collect();
            if in_elements.is_empty() {
                problems.truncate(1);
            } else {
                problems = in_elements;
            }
            problems.sort_by(|a, b| b.path.cmp(&a.path));
            for problem in problems {
                let segs = problem.path.segments().to_vec();
                let Some(Segment::Key(section)) = segs.first().cloned() else {
                    let all: Vec<String> = table.keys().cloned().collect();
                    for k in all {
                        self.take_out(table, &[Segment::Key(k)], &problem.message);
                    }
                    break;
                };
                // The deepest part of the problem's path that can go while its section still loads.
                let mut done = false;
                for k in (1..=segs.len()).rev() {
                    let cand = &segs[..k];
                    if get_path(table, cand).is_none() {
                        continue;
                    }
                    let ok = k == 1
                        || *removable.entry(shape(cand)).or_insert_with(|| {
                            let mut trial = table.clone();
                            remove_path(&mut trial, cand);
                            section_from_table(&trial, &section).is_ok()
                        });
                    if ok {
                        remove_path(table, cand);
                        self.forget(cand, &problem.message);
                        done = true;
                        break;
                    }
                }
                if !done && table.contains_key(&section) {
                    self.take_out(table, &[Segment::Key(section)], &problem.message);
                }
            }
        }
        self.remove_all("the converted config could not be made valid");
        table.clear();
        Config::default()
    }

    fn take_out(&mut self, table: &mut toml::Table, path: &[Segment], reason: &str) {
        if let Some(Segment::Key(k)) = path.first()
            && path.len() == 1
            && table.remove(k).is_none()
            && !table.is_empty()
        {
            // Nothing by that name: make progress anyway.
            let first = table.keys().next().cloned().unwrap_or_default();
            table.remove(&first);
            self.forget(&[Segment::Key(first)], reason);
            return;
        }
        remove_path(table, path);
        self.forget(path, reason);
    }

    /// The lines that went to `path` lose that place; elements after it in its array move down.
    fn forget(&mut self, path: &[Segment], reason: &str) {
        let mut kept = Vec::with_capacity(self.origins.len());
        for (p, line) in std::mem::take(&mut self.origins) {
            if p.starts_with(path) {
                self.removed.entry(line).or_insert_with(|| reason.to_string());
                continue;
            }
            kept.push((p, line));
        }
        if let Some((Segment::Index(i), parent)) = path.split_last() {
            for (p, _) in &mut kept {
                if p.len() > parent.len()
                    && p.starts_with(parent)
                    && let Segment::Index(j) = &mut p[parent.len()]
                    && *j > *i
                {
                    *j -= 1;
                }
            }
        }
        self.origins = kept;
    }
}

/// The config as TOML with only the keys that differ from their defaults: what the source file
/// said, not every default hastack has (and new defaults in a section do not change the output).
///
/// A key's default depends only on where it is (serde defaults are per field), so it is found once
/// per key shape (`dhcp.host.lease_time`): remove the key from one element, load, write back, and
/// see what the key comes back as. This keeps the work linear in the size of the config (a
/// dnsmasq.conf with thousands of reservations). The result is checked to load back equal.
fn minimal_toml(config: &Config) -> String {
    let Ok(full) = config.to_toml() else {
        return String::new();
    };
    let Ok(mut doc) = full.parse::<toml_edit::DocumentMut>() else {
        return full;
    };
    let load = |doc: &toml_edit::DocumentMut| doc.to_string().parse::<toml::Table>().ok().and_then(|t| config_from_table(&t).ok());
    let same = |doc: &toml_edit::DocumentMut| load(doc).as_ref() == Some(config);

    let mut values = Vec::new();
    let mut tables = Vec::new();
    walk(doc.as_table(), &mut Vec::new(), &mut values, &mut tables);
    // Per shape: the value a missing key loads as (None: it has no default, or is required).
    let mut defaults: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut remove = Vec::new();
    for (path, key, text) in &values {
        let shape = format!("{}.{key}", shape_of(path));
        let default = defaults.entry(shape).or_insert_with(|| {
            let mut trial = doc.clone();
            if let Some(t) = table_at(&mut trial, path) {
                t.remove(key);
            }
            let back = load(&trial).and_then(|c| c.to_toml().ok()).and_then(|t| t.parse::<toml_edit::DocumentMut>().ok());
            back.and_then(|mut b| table_at(&mut b, path).and_then(|t| t.get(key)).and_then(|i| i.as_value()).map(value_text))
        });
        if default.as_deref() == Some(text.as_str()) {
            remove.push((path.clone(), key.clone()));
        }
    }
    for (path, key) in remove {
        if let Some(t) = table_at(&mut doc, &path) {
            t.remove(&key);
        }
    }
    // Tables left empty: an empty `[cluster.timing]` is the default, an empty `check` table is not
    // the same as none; decided once per shape, deepest first.
    let mut empty_ok: BTreeMap<String, bool> = BTreeMap::new();
    tables.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in tables {
        let Some((Step::Key(last), parent)) = path.split_last() else {
            continue;
        };
        if parent.is_empty() || table_at(&mut doc, &path).is_none_or(|t| !t.is_empty()) {
            continue;
        }
        let shape = shape_of(&path);
        let ok = *empty_ok.entry(shape).or_insert_with(|| {
            let mut trial = doc.clone();
            if let Some(t) = table_at(&mut trial, parent) {
                t.remove(last);
            }
            same(&trial)
        });
        if ok && let Some(t) = table_at(&mut doc, parent) {
            t.remove(last);
        }
    }
    tidy(doc.as_table_mut());
    if same(&doc) { doc.to_string().trim_start().to_string() } else { full }
}

/// The path without array indices: every element of an array has the same shape.
fn shape_of(path: &[Step]) -> String {
    path.iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A value as written, without the spaces around it.
fn value_text(v: &toml_edit::Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    v.to_string()
}

/// Every key with a plain value (path of its table, key, value text) and every table below the top.
fn walk(table: &toml_edit::Table, path: &mut Vec<Step>, values: &mut Vec<(Vec<Step>, String, String)>, tables: &mut Vec<Vec<Step>>) {
    for (key, item) in table.iter() {
        match item {
            toml_edit::Item::Value(v) if !path.is_empty() => values.push((path.clone(), key.to_string(), value_text(v))),
            toml_edit::Item::Table(t) => {
                path.push(Step::Key(key.to_string()));
                tables.push(path.clone());
                walk(t, path, values, tables);
                path.pop();
            }
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(Step::Key(key.to_string()));
                    path.push(Step::Index(i));
                    walk(t, path, values, tables);
                    path.pop();
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// A step to a table inside a TOML document.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn table_at<'a>(doc: &'a mut toml_edit::DocumentMut, path: &[Step]) -> Option<&'a mut toml_edit::Table> {
    let mut table = doc.as_table_mut();
    let mut i = 0;
    while i < path.len() {
        let Step::Key(k) = &path[i] else {
            return None;
        };
        table = match (table.get_mut(k)?, path.get(i + 1)) {
            (toml_edit::Item::Table(t), _) => t,
            (toml_edit::Item::ArrayOfTables(a), Some(Step::Index(j))) => {
                i += 1;
                a.get_mut(*j)?
            }
            _ => return None,
        };
        i += 1;
    }
    Some(table)
}

/// Tables left with only sub-tables need no header of their own.
fn tidy(table: &mut toml_edit::Table) {
    let mut has_values = false;
    let mut has_children = false;
    for (_, item) in table.iter_mut() {
        match item {
            toml_edit::Item::Table(t) => {
                has_children = true;
                tidy(t);
            }
            toml_edit::Item::ArrayOfTables(a) => {
                has_children = true;
                for t in a.iter_mut() {
                    tidy(t);
                }
            }
            _ => has_values = true,
        }
    }
    if !has_values && has_children {
        table.set_implicit(true);
    }
}

/// A key path without its array indices (`dhcp.host[].address`).
fn shape(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => format!(".{k}"),
            Segment::Index(_) => "[]".to_string(),
        })
        .collect()
}

fn get_path<'a>(table: &'a toml::Table, path: &[Segment]) -> Option<&'a toml::Value> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut v = table.get(first)?;
    for seg in rest {
        v = match (seg, v) {
            (Segment::Key(k), toml::Value::Table(t)) => t.get(k)?,
            (Segment::Index(i), toml::Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn remove_path(table: &mut toml::Table, path: &[Segment]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if parent.is_empty() {
        if let Segment::Key(k) = last {
            table.remove(k);
        }
        return;
    }
    let (Segment::Key(first), rest) = (&parent[0], &parent[1..]) else {
        return;
    };
    let Some(mut v) = table.get_mut(first) else {
        return;
    };
    for seg in rest {
        let next = match (seg, v) {
            (Segment::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Segment::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        let Some(n) = next else {
            return;
        };
        v = n;
    }
    match (last, v) {
        (Segment::Key(k), toml::Value::Table(t)) => {
            t.remove(k);
        }
        (Segment::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn typed<T: serde::de::DeserializeOwned>(table: &toml::Table, key: &str) -> Result<Option<T>, (String, String)> {
    match table.get(key) {
        None => Ok(None),
        Some(v) => v.clone().try_into::<T>().map(Some).map_err(|e| (key.to_string(), e.to_string())),
    }
}

fn section_from_table(table: &toml::Table, key: &str) -> Result<(), (String, String)> {
    use dhcp_dns::config::{DhcpConfig, DnsConfig};
    use ha_membership::config::{ClusterConfig, QuorumConfig};
    match key {
        "cluster" => typed::<ClusterConfig>(table, key).map(drop),
        "quorum" => typed::<QuorumConfig>(table, key).map(drop),
        "balancer" => typed::<tcp_balancer::config::BalancerConfig>(table, key).map(drop),
        "dhcp" => typed::<DhcpConfig>(table, key).map(drop),
        "dns" => typed::<DnsConfig>(table, key).map(drop),
        "control" => typed::<crate::config::ControlConfig>(table, key).map(drop),
        "logging" => typed::<crate::config::LoggingConfig>(table, key).map(drop),
        _ => Err((key.to_string(), format!("importers do not write [{key}]"))),
    }
}

/// The config an importer's table holds (importers write no resources or constraints).
fn config_from_table(table: &toml::Table) -> Result<Config, (String, String)> {
    if let Some(k) = table.keys().find(|k| section_from_table(&toml::Table::new(), k).is_err()) {
        return Err((k.clone(), format!("importers do not write [{k}]")));
    }
    Ok(Config {
        logging: typed(table, "logging")?,
        control: typed(table, "control")?,
        cluster: typed(table, "cluster")?,
        quorum: typed(table, "quorum")?,
        balancer: typed(table, "balancer")?,
        dhcp: typed(table, "dhcp")?,
        dns: typed(table, "dns")?,
        ..Config::default()
    })
}

/// True for a line that is only a comment (`#` first) or blank.
pub(crate) fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples without their resource sections (importers write none).
    fn example(name: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        let mut c = crate::config::load(&path).unwrap_or_else(|d| panic!("{d}"));
        c.resources.clear();
        c.constraints.clear();
        c.policy = None;
        c.resource_defaults = None;
        c
    }

    #[test]
    fn minimal_toml_loads_back_to_the_same_config() {
        for name in ["three-node.toml", "two-node.toml"] {
            let c = example(name);
            let full = c.to_toml().unwrap();
            let min = minimal_toml(&c);
            assert!(min.len() < full.len(), "{name}: nothing was left out");
            let back = Config::from_str_named(name, &min).unwrap_or_else(|d| panic!("{name}: {d}\n{min}"));
            assert_eq!(back, c, "{name}:\n{min}");
            assert!(!min.contains("heartbeat_interval = \"10ms\""), "{name}: a default was written:\n{min}");
        }
    }

    #[test]
    fn repair_takes_out_the_deepest_part_that_can_go_and_lists_its_lines() {
        let text = "a\nb\nc\nd\ne\n";
        let mut d = Draft::new(text, |l| !l.is_empty());
        let mut cluster = ha_membership::config::ClusterConfig::new("c");
        for (i, addr) in ["198.18.0.11/24", "198.18.0.12/24", "198.18.0.13/24", "198.18.0.11/24"].iter().enumerate() {
            let id = u32::try_from(i).unwrap() + 1;
            let links = vec![addr.parse().unwrap()];
            cluster.nodes.push(ha_membership::config::NodeConfig { id, name: format!("n{id}"), links, votes: 1 });
            d.origin(i + 1, &KeyPath::new("cluster.node").index(i));
        }
        d.origin(5, &KeyPath::new("cluster.name"));
        d.config.cluster = Some(cluster);
        let r = d.finish(Kind::Corosync);
        // The fourth node repeats the first one's address: it goes, with the checker's reason.
        assert_eq!(r.unconverted.len(), 1, "{:?}", r.unconverted);
        assert_eq!((r.unconverted[0].line, r.unconverted[0].text.as_str()), (4, "d"));
        assert!(r.unconverted[0].reason.contains("link address"), "{:?}", r.unconverted);
        let back = Config::from_str_named("t", &r.toml).unwrap();
        assert_eq!(back.cluster.unwrap().nodes.len(), 3);
    }

    #[test]
    fn the_kind_comes_from_the_name_then_the_contents() {
        let p = Path::new("/etc/gw.conf");
        assert_eq!(detect(Path::new("/etc/corosync/corosync.conf"), ""), Some(Kind::Corosync));
        assert_eq!(detect(p, "# cluster\ntotem {\n}\n"), Some(Kind::Corosync));
        assert_eq!(detect(p, "global\n maxconn 10\n"), Some(Kind::Haproxy));
        assert_eq!(detect(p, "# dhcp\ndhcp-range=198.18.0.10,198.18.0.20\n"), Some(Kind::Dnsmasq));
        assert_eq!(detect(p, "hello\n"), None);
    }

    #[test]
    fn a_line_no_importer_branch_handled_is_listed() {
        let d = Draft::new("x\n\ny\n", |l| !l.is_empty());
        let r = d.finish(Kind::Dnsmasq);
        assert_eq!(r.toml, "");
        assert_eq!(r.unconverted.iter().map(|u| u.line).collect::<Vec<_>>(), [1, 3]);
    }
}
