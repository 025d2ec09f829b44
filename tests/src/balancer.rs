//! What the `hastack balancer` end-to-end tests share: a builder for the config file they run the
//! daemon with (loopback frontends and backends, the runtime API socket), and free ports.
//!
//! ```
//! let toml = hastack_tests::balancer::BalancerToml::new(std::path::Path::new("/run/b.sock"))
//!     .global("hard_stop_after = \"10s\"")
//!     .frontend("web", 8080, "http", "webs")
//!     .backend("webs", &[("w1", 8081)])
//!     .render();
//! assert!(toml.contains("mode = \"http\""));
//! ```

use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A port free on 127.0.0.1 right now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// A process's RLIMIT_NOFILE (soft, hard), read from `/proc/<pid>/limits`.
pub fn max_open_files(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??))
}

/// Starts `cmd` with its soft RLIMIT_NOFILE lowered to `soft` (the hard limit unchanged), as a
/// service manager with a low default would.
pub fn lower_nofile_soft(cmd: &mut std::process::Command, soft: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only getrlimit/setrlimit run between fork and exec; both are async-signal-safe
    // and touch only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = (soft as libc::rlim_t).min(r.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A `[[balancer.frontend]]` on 127.0.0.1.
#[derive(Debug, Clone)]
struct Frontend {
    name: String,
    port: u16,
    mode: String,
    backend: String,
    extra: Vec<String>,
}

/// A `[[balancer.backend]]` of 127.0.0.1 servers.
#[derive(Debug, Clone)]
struct Backend {
    name: String,
    extra: Vec<String>,
    servers: Vec<(String, u16)>,
}

/// A hastack.toml with a `[control]` socket and a `[balancer]` section, built up and rendered.
#[derive(Debug, Clone)]
pub struct BalancerToml {
    socket: PathBuf,
    metrics: Option<u16>,
    globals: Vec<String>,
    timeouts: Vec<(String, String)>,
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
}

impl BalancerToml {
    /// An empty balancer whose runtime API listens on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_path_buf(), metrics: None, globals: Vec::new(), timeouts: Vec::new(), frontends: Vec::new(), backends: Vec::new() }
    }

    /// Serves Prometheus metrics on 127.0.0.1:`port` (`[control] metrics_balancer`).
    pub fn metrics(mut self, port: u16) -> Self {
        self.metrics = Some(port);
        self
    }

    /// A `[balancer]` line, e.g. `maxconn = 20000`.
    pub fn global(mut self, line: &str) -> Self {
        self.globals.push(line.to_string());
        self
    }

    /// A `[balancer.timeouts]` entry, e.g. `("client", "5m")`.
    pub fn timeout(mut self, name: &str, value: &str) -> Self {
        self.timeouts.push((name.to_string(), value.to_string()));
        self
    }

    /// A frontend on 127.0.0.1:`port` in `mode` ("tcp" or "http") with a default backend.
    pub fn frontend(self, name: &str, port: u16, mode: &str, backend: &str) -> Self {
        self.frontend_with(name, port, mode, backend, &[])
    }

    /// Like [`BalancerToml::frontend`], with further lines of its table (`forwarded_for = true`).
    pub fn frontend_with(mut self, name: &str, port: u16, mode: &str, backend: &str, extra: &[&str]) -> Self {
        self.frontends.push(Frontend {
            name: name.to_string(),
            port,
            mode: mode.to_string(),
            backend: backend.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// A backend of servers (name, port on 127.0.0.1).
    pub fn backend(self, name: &str, servers: &[(&str, u16)]) -> Self {
        self.backend_with(name, &[], servers)
    }

    /// Like [`BalancerToml::backend`], with further lines of its table (`balance = "source"`).
    pub fn backend_with(mut self, name: &str, extra: &[&str], servers: &[(&str, u16)]) -> Self {
        self.backends.push(Backend {
            name: name.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            servers: servers.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        });
        self
    }

    /// The config file text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[control]\nbalancer_socket = \"{}\"", self.socket.display());
        if let Some(m) = self.metrics {
            let _ = writeln!(s, "metrics_balancer = \"127.0.0.1:{m}\"");
        }
        let _ = writeln!(s, "\n[balancer]");
        for g in &self.globals {
            let _ = writeln!(s, "{g}");
        }
        if !self.timeouts.is_empty() {
            let _ = writeln!(s, "\n[balancer.timeouts]");
            for (k, v) in &self.timeouts {
                let _ = writeln!(s, "{k} = \"{v}\"");
            }
        }
        for f in &self.frontends {
            let _ = writeln!(
                s,
                "\n[[balancer.frontend]]\nname = \"{}\"\nbind = [\"127.0.0.1:{}\"]\nmode = \"{}\"\nbackend = \"{}\"",
                f.name, f.port, f.mode, f.backend
            );
            for l in &f.extra {
                let _ = writeln!(s, "{l}");
            }
        }
        for b in &self.backends {
            let _ = writeln!(s, "\n[[balancer.backend]]\nname = \"{}\"", b.name);
            for l in &b.extra {
                let _ = writeln!(s, "{l}");
            }
            for (n, p) in &b.servers {
                let _ = writeln!(s, "\n[[balancer.backend.server]]\nname = \"{n}\"\naddress = \"127.0.0.1:{p}\"");
            }
        }
        s
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_part_in_its_table() {
        let t = BalancerToml::new(Path::new("/tmp/b.sock"))
            .metrics(9100)
            .global("maxconn = 100")
            .timeout("client", "5m")
            .frontend_with("web", 8080, "http", "webs", &["forwarded_for = true"])
            .backend_with("webs", &["balance = \"source\""], &[("w1", 8081), ("w2", 8082)])
            .render();
        let want = "[control]\nbalancer_socket = \"/tmp/b.sock\"\nmetrics_balancer = \"127.0.0.1:9100\"\n\n[balancer]\nmaxconn = 100\n\n\
                    [balancer.timeouts]\nclient = \"5m\"\n\n[[balancer.frontend]]\nname = \"web\"\nbind = [\"127.0.0.1:8080\"]\n\
                    mode = \"http\"\nbackend = \"webs\"\nforwarded_for = true\n\n[[balancer.backend]]\nname = \"webs\"\n\
                    balance = \"source\"\n\n[[balancer.backend.server]]\nname = \"w1\"\naddress = \"127.0.0.1:8081\"\n\n\
                    [[balancer.backend.server]]\nname = \"w2\"\naddress = \"127.0.0.1:8082\"\n";
        assert_eq!(t, want);
    }
}
