//! The whole hastack.toml: each crate's section, assembled and validated before anything is applied.
