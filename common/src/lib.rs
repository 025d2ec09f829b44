//! What every hastack crate shares: config diagnostics that end up as `file:line:column: reason`,
//! key paths, and the value types config sections are written with (durations, addresses).
//!
//! A section validator walks its typed config and records a [`Problem`] (a [`KeyPath`] and a
//! message) for everything wrong; [`SourceFile::locate`] turns each into a [`Located`] line.

pub mod diag;
pub mod names;
pub mod source;
pub mod types;

pub use diag::{Anchor, KeyPath, Problem, Problems, Segment, check_unique};
pub use source::{Diagnostics, Located, SourceFile};
pub use types::{Cidr, HexBytes, HostPort, HumanDuration, Ipv4Range, MacAddr, SockAddr};
