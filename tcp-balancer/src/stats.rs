//! Text renderings of [`Stats`] snapshots: HAProxy's `show stat` CSV (so operators' scripts and
//! hatop-like tools keep working) and the Prometheus exposition format.

use std::fmt::Write;

use crate::proxy::Stats;

/// `show stat` columns, in HAProxy's order (a subset: the ones this runtime has).
pub const SHOW_STAT_HEADER: &str =
    "# pxname,svname,qcur,qmax,scur,smax,stot,bin,bout,econ,wretr,wredis,status,weight,act,bck,killed,timeouts,req_tot,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other";

/// HTTP columns (`req_tot`, `hrsp_1xx` … `hrsp_other`) of one line.
fn http_cols(h: &crate::http::HttpSnapshot) -> String {
    let r = &h.responses;
    format!("{},{},{},{},{},{},{}", h.requests, r[0], r[1], r[2], r[3], r[4], r[5])
}

/// `show servers state`: one line per server of each backend (a backend used by several
/// frontends is listed once, its sessions summed over them: the state is the backend's, as its
/// health checks are).
pub fn servers_state(stats: &[Stats]) -> String {
    let mut out = String::from("# backend server status weight sessions\n");
    let mut seen: Vec<&str> = Vec::new();
    for (i, st) in stats.iter().enumerate() {
        if seen.contains(&st.backend.as_str()) {
            continue;
        }
        seen.push(&st.backend);
        let copies: Vec<&Stats> = stats[i..].iter().filter(|o| o.backend == st.backend).collect();
        for (k, sv) in st.servers.iter().enumerate() {
            let sessions: usize = copies.iter().filter_map(|c| c.servers.get(k)).map(|s| s.counters.current as usize).sum();
            let _ = writeln!(out, "{} {} {} {} {}", st.backend, sv.name, sv.status, sv.weight, sessions);
        }
    }
    out
}

/// HAProxy-style `show stat` CSV: a FRONTEND line, one line per server, a BACKEND line.
pub fn show_stat(stats: &[Stats]) -> String {
    let mut out = String::new();
    out.push_str(SHOW_STAT_HEADER);
    out.push('\n');
    for s in stats {
        let f = &s.frontend_counters;
        let _ = writeln!(
            out,
            "{},FRONTEND,,,{},{},{},{},{},,,,OPEN,,,,,,{}",
            s.frontend, f.current, f.max, f.total, f.bytes_in, f.bytes_out, http_cols(&f.http)
        );
        let b = &s.backend_counters;
        let (mut act, mut bck, mut weight) = (0, 0, 0);
        let (mut cur, mut tot, mut bin, mut bout, mut econ, mut retr, mut redis) = (0, 0, 0, 0, 0, 0, 0);
        let mut http = crate::http::HttpSnapshot::default();
        for sv in &s.servers {
            let c = &sv.counters;
            let _ = writeln!(
                out,
                "{},{},,,{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                s.backend,
                sv.name,
                c.current,
                c.max,
                c.total,
                c.bytes_in,
                c.bytes_out,
                c.connect_errors,
                c.retries,
                c.redispatches,
                sv.status,
                sv.weight,
                u8::from(!sv.backup),
                u8::from(sv.backup),
                c.killed,
                c.timeouts,
                http_cols(&c.http)
            );
            if sv.status == "UP" {
                if sv.backup {
                    bck += 1;
                } else {
                    act += 1;
                }
                weight += sv.weight;
            }
            cur += c.current;
            tot += c.total;
            bin += c.bytes_in;
            bout += c.bytes_out;
            econ += c.connect_errors;
            retr += c.retries;
            redis += c.redispatches;
            http.requests += c.http.requests;
            for (t, v) in http.responses.iter_mut().zip(c.http.responses) {
                *t += v;
            }
        }
        let status = if act + bck > 0 { "UP" } else { "DOWN" };
        let _ = writeln!(
            out,
            "{},BACKEND,{},{},{cur},,{tot},{bin},{bout},{econ},{retr},{redis},{status},{weight},{act},{bck},,,{}",
            s.backend, b.queue_current, b.queue_max, http_cols(&http)
        );
    }
    out
}

/// Prometheus text of http-mode frontends' own counters (requests, generated answers, upgrades,
/// reuse of idle server connections), one series per frontend name.
pub fn prometheus_http(frontends: &[(String, crate::http::HttpFrontendStats)], out: &mut String) {
    type Get = fn(&crate::http::HttpFrontendStats) -> u64;
    let counters: [(&str, &str, Get); 8] = [
        ("http_requests_total", "Request heads received by an http frontend.", |h| h.requests),
        ("http_bad_requests_total", "Malformed requests answered 400.", |h| h.bad_requests),
        ("http_request_timeouts_total", "Requests cut by timeout http-request (408).", |h| h.request_timeouts),
        ("http_no_route_total", "Requests no route matched (503).", |h| h.no_route),
        ("http_upgrades_total", "Connections upgraded to a tunnel (WebSocket, SPDY).", |h| h.upgrades),
        ("http_reused_server_connections_total", "Requests sent on a reused idle server connection.", |h| h.reused),
        ("http_tls_handshake_failures_total", "TLS handshakes that failed or timed out.", |h| h.tls_failed),
        ("http_monitor_requests_total", "monitor-uri requests answered.", |h| h.monitor),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP hastack_balancer_{name} {help}\n# TYPE hastack_balancer_{name} counter");
        for (fe, h) in frontends {
            let _ = writeln!(out, "hastack_balancer_{name}{{frontend=\"{}\"}} {}", esc(fe), get(h));
        }
    }
    let _ = writeln!(out, "# HELP hastack_balancer_http_generated_responses_total Answers written by the balancer itself.\n# TYPE hastack_balancer_http_generated_responses_total counter");
    for (fe, h) in frontends {
        for (code, n) in ["400", "408", "502", "503", "504"].iter().zip(h.generated) {
            let _ = writeln!(out, "hastack_balancer_http_generated_responses_total{{frontend=\"{}\",code=\"{code}\"}} {n}", esc(fe));
        }
    }
    let _ = writeln!(out, "# HELP hastack_balancer_http_idle_server_connections Idle keep-alive server connections kept.\n# TYPE hastack_balancer_http_idle_server_connections gauge");
    for (fe, h) in frontends {
        let _ = writeln!(out, "hastack_balancer_http_idle_server_connections{{frontend=\"{}\"}} {}", esc(fe), h.idle_server_connections);
    }
}

/// (name, help, getter) of a per-backend metric.
type BackendMetric = (&'static str, &'static str, fn(&Stats) -> u64);
/// (name, type, help, getter) of a per-server metric.
type ServerMetric = (&'static str, &'static str, &'static str, fn(&crate::proxy::CounterSnapshot) -> u64);

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition of the snapshots plus the relay's global gauges.
pub fn prometheus(stats: &[Stats], out: &mut String) {
    let metric = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP hastack_balancer_{name} {help}\n# TYPE hastack_balancer_{name} {kind}");
    };
    metric(out, "frontend_current_sessions", "gauge", "Current sessions on a frontend.");
    for s in stats {
        let _ = writeln!(out, "hastack_balancer_frontend_current_sessions{{frontend=\"{}\"}} {}", esc(&s.frontend), s.frontend_counters.current);
    }
    metric(out, "frontend_sessions_total", "counter", "Sessions accepted by a frontend.");
    for s in stats {
        let _ = writeln!(out, "hastack_balancer_frontend_sessions_total{{frontend=\"{}\"}} {}", esc(&s.frontend), s.frontend_counters.total);
    }
    metric(out, "frontend_bytes_in_total", "counter", "Bytes received from clients.");
    for s in stats {
        let _ = writeln!(out, "hastack_balancer_frontend_bytes_in_total{{frontend=\"{}\"}} {}", esc(&s.frontend), s.frontend_counters.bytes_in);
    }
    metric(out, "frontend_bytes_out_total", "counter", "Bytes sent to clients.");
    for s in stats {
        let _ = writeln!(out, "hastack_balancer_frontend_bytes_out_total{{frontend=\"{}\"}} {}", esc(&s.frontend), s.frontend_counters.bytes_out);
    }
    metric(out, "backend_queue_current", "gauge", "Sessions waiting for a free server slot.");
    for s in stats {
        let _ = writeln!(out, "hastack_balancer_backend_queue_current{{frontend=\"{}\",backend=\"{}\"}} {}", esc(&s.frontend), esc(&s.backend), s.backend_counters.queue_current);
    }
    let backend_counters: [BackendMetric; 4] = [
        ("backend_queue_timeouts_total", "Sessions closed after timeout queue.", |s| s.backend_counters.queue_timeouts),
        ("backend_queue_full_total", "Sessions refused on a full queue.", |s| s.backend_counters.queue_full),
        ("backend_no_server_total", "Sessions closed with no eligible server.", |s| s.backend_counters.no_server),
        ("backend_connect_failed_total", "Sessions closed after every connect attempt failed.", |s| s.backend_counters.connect_failed),
    ];
    for (name, help, get) in backend_counters {
        metric(out, name, "counter", help);
        for s in stats {
            let _ = writeln!(out, "hastack_balancer_{name}{{frontend=\"{}\",backend=\"{}\"}} {}", esc(&s.frontend), esc(&s.backend), get(s));
        }
    }
    metric(out, "server_up", "gauge", "1 when the server is up (and not in maintenance).");
    for s in stats {
        for sv in &s.servers {
            let up = u8::from(sv.status == "UP" || sv.status == "DRAIN");
            let _ = writeln!(out, "hastack_balancer_server_up{{backend=\"{}\",server=\"{}\"}} {up}", esc(&s.backend), esc(&sv.name));
        }
    }
    metric(out, "server_weight", "gauge", "Effective weight (slowstart applied).");
    for s in stats {
        for sv in &s.servers {
            let _ = writeln!(out, "hastack_balancer_server_weight{{backend=\"{}\",server=\"{}\"}} {}", esc(&s.backend), esc(&sv.name), sv.weight);
        }
    }
    let server_gauge: [ServerMetric; 8] = [
        ("server_current_sessions", "gauge", "Current sessions on a server.", |c| u64::from(c.current)),
        ("server_sessions_total", "counter", "Sessions sent to a server.", |c| c.total),
        ("server_bytes_in_total", "counter", "Bytes from clients relayed to a server.", |c| c.bytes_in),
        ("server_bytes_out_total", "counter", "Bytes from a server relayed to clients.", |c| c.bytes_out),
        ("server_connect_errors_total", "counter", "Failed connects to a server.", |c| c.connect_errors),
        ("server_retries_total", "counter", "Connect retries on a server.", |c| c.retries),
        ("server_redispatches_total", "counter", "Sessions redispatched to a server.", |c| c.redispatches),
        ("server_killed_sessions_total", "counter", "Sessions shut by the balancer.", |c| c.killed),
    ];
    for (name, kind, help, get) in server_gauge {
        metric(out, name, kind, help);
        for s in stats {
            for sv in &s.servers {
                let _ = writeln!(out, "hastack_balancer_{name}{{backend=\"{}\",server=\"{}\"}} {}", esc(&s.backend), esc(&sv.name), get(&sv.counters));
            }
        }
    }
    metric(out, "server_http_requests_total", "counter", "HTTP requests sent to a server (http mode).");
    for s in stats {
        for sv in &s.servers {
            let _ = writeln!(out, "hastack_balancer_server_http_requests_total{{backend=\"{}\",server=\"{}\"}} {}", esc(&s.backend), esc(&sv.name), sv.counters.http.requests);
        }
    }
    metric(out, "server_http_responses_total", "counter", "HTTP responses of a server by status class (http mode).");
    for s in stats {
        for sv in &s.servers {
            for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"].iter().zip(sv.counters.http.responses) {
                let _ = writeln!(out, "hastack_balancer_server_http_responses_total{{backend=\"{}\",server=\"{}\",code=\"{class}\"}} {n}", esc(&s.backend), esc(&sv.name));
            }
        }
    }
    metric(out, "spliced_bytes_total", "counter", "Bytes relayed with splice(2).");
    let _ = writeln!(out, "hastack_balancer_spliced_bytes_total {}", crate::relay::spliced_bytes());
    metric(out, "pipes_in_use", "gauge", "Splice pipes held by sessions.");
    let _ = writeln!(out, "hastack_balancer_pipes_in_use {}", crate::relay::pipes_in_use());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{BackendSnapshot, CounterSnapshot, ServerStats};

    fn sample() -> Vec<Stats> {
        let c = |cur, total| CounterSnapshot {
            current: cur,
            max: cur,
            total,
            bytes_in: 10,
            bytes_out: 20,
            http: crate::http::HttpSnapshot { requests: total, responses: [0, total, 0, 0, 1, 0] },
            ..Default::default()
        };
        vec![Stats {
            frontend: "api".into(),
            frontend_counters: c(3, 7),
            backend: "apiservers".into(),
            backend_counters: BackendSnapshot { queue_current: 1, queue_max: 2, ..Default::default() },
            servers: vec![
                ServerStats { name: "a".into(), addr: "198.18.0.21:6443".parse().unwrap(), status: "UP", weight: 1, backup: false, counters: c(2, 5) },
                ServerStats { name: "b\"x".into(), addr: "198.18.0.22:6443".parse().unwrap(), status: "DOWN", weight: 1, backup: true, counters: c(1, 2) },
            ],
        }]
    }

    #[test]
    fn show_stat_has_haproxy_layout() {
        let text = show_stat(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], SHOW_STAT_HEADER);
        let cols = SHOW_STAT_HEADER.split(',').count();
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), cols, "{l}");
        }
        assert!(lines[1].starts_with("api,FRONTEND,,,3,3,7,10,20"));
        assert!(lines[2].starts_with("apiservers,a,,,2,2,5,10,20,0,0,0,UP,1,1,0"));
        assert_eq!(lines[4], "apiservers,BACKEND,1,2,3,,7,20,40,0,0,0,UP,1,1,0,,,7,0,7,0,0,2,0");
        assert!(lines[2].ends_with(",5,0,5,0,0,1,0"), "{}", lines[2]);
    }

    #[test]
    fn prometheus_text_is_well_formed() {
        let mut out = String::new();
        prometheus(&sample(), &mut out);
        assert!(out.contains("hastack_balancer_server_up{backend=\"apiservers\",server=\"a\"} 1\n"));
        assert!(out.contains("server=\"b\\\"x\"} 0\n"), "label values are escaped");
        assert!(out.contains("hastack_balancer_frontend_sessions_total{frontend=\"api\"} 7\n"));
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn http_frontend_metrics() {
        let h = crate::http::HttpFrontendStats { requests: 9, generated: [1, 2, 0, 3, 0], idle_server_connections: 4, ..Default::default() };
        let mut out = String::new();
        prometheus_http(&[("web".into(), h)], &mut out);
        assert!(out.contains("hastack_balancer_http_requests_total{frontend=\"web\"} 9\n"));
        assert!(out.contains("hastack_balancer_http_generated_responses_total{frontend=\"web\",code=\"408\"} 2\n"));
        assert!(out.contains("hastack_balancer_http_idle_server_connections{frontend=\"web\"} 4\n"));
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{l}");
        }
    }
}
