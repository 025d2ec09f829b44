//! `hastack import`: converts the config of the stack hastack replaces (corosync.conf, haproxy.cfg,
//! dnsmasq.conf) into the matching sections of hastack.toml, and says which lines it could not convert.
//!
//! Each importer is a pure function of the input text: it never touches the system, so it is fuzzed
//! and property-tested like the wire parsers. The result is always checked by the same validation as
//! `hastack config check` before it is printed.

pub mod corosync;
pub mod dnsmasq;
pub mod haproxy;

use std::fmt;
use std::path::Path;

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
