//! vip-manager

pub mod config;
