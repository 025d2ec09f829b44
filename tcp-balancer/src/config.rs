//! Serde types of this crate's config section (owned by the config work).
