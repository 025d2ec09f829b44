//! The network-namespace lab and helpers shared by the end-to-end tests.
