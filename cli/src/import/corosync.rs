//! Importer for corosync config files (being written).

use super::{Import, Unconverted};

/// Converts a corosync config into hastack TOML.
pub fn convert(text: &str) -> Import {
    let unconverted = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| Unconverted { line: i + 1, text: l.trim().to_string(), reason: "importer not written yet".into() })
        .collect();
    Import { toml: String::new(), unconverted }
}
