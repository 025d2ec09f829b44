//! Checks for names an operator writes: object names (nodes, resources, backends), host names and
//! DNS domains. Each reports a [`Problem`](crate::Problem) instead of failing.

use crate::diag::{KeyPath, Problems};

/// Reports `name` unless it is 1-63 characters of letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit: safe in logs, file names, metrics labels and command lines.
pub fn check_name(problems: &mut Problems, path: KeyPath, name: &str, what: &str) {
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() {
        problems.add(path, format!("{what} is empty"));
    } else if name.len() > 63 || !ok_start || !ok_chars {
        problems.add(
            path,
            format!("{what} \"{name}\" must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        );
    }
}

/// True for a valid DNS label (RFC 1123: letters, digits and inner hyphens, 1-63 characters).
pub fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// True for a valid DNS name made of labels (a trailing dot is accepted).
pub fn is_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label)
}

/// Reports `name` unless it is a single DNS label, as a DHCP client's host name must be.
pub fn check_hostname(problems: &mut Problems, path: KeyPath, name: &str) {
    if !is_label(name) {
        problems.add(
            path,
            format!(
                "\"{name}\" is not a valid host name (letters, digits and inner '-', at most 63)"
            ),
        );
    }
}

/// Reports `name` unless it is a valid DNS domain name.
pub fn check_domain(problems: &mut Problems, path: KeyPath, name: &str) {
    if !is_domain(name) {
        problems.add(path, format!("\"{name}\" is not a valid domain name"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_domains() {
        let mut p = Problems::new();
        check_name(&mut p, KeyPath::new("a"), "api-vip", "resource name");
        check_name(&mut p, KeyPath::new("b"), "-bad", "resource name");
        check_name(&mut p, KeyPath::new("c"), "has space", "resource name");
        check_name(&mut p, KeyPath::new("d"), "", "resource name");
        assert_eq!(p.len(), 3);
        assert!(is_domain("lab.example."));
        assert!(!is_domain("lab..example"));
        assert!(!is_label("a_b"));
    }
}
