//! The http-mode suite (`http_mode.rs`) again with every http and TLS session on two session
//! workers (current-thread runtimes on their own threads), as `hastack balancer` runs them:
//! accepted sockets move to a worker's reactor, idle server connections are pooled per worker,
//! upgrades, drains and kills cross threads.

#[path = "http_mode.rs"]
mod http_mode;

/// Two session workers, as on the 2-core machines the balancer is measured on.
const WORKERS: usize = 2;

/// Starts the workers once for the whole test binary (they live as long as the process).
fn setup() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        tcp_balancer::runtime::start_session_workers(WORKERS).expect("session workers");
    });
}
