//! ha-membership

pub mod config;
