//! `hastack demo`: a local three-node cluster in network namespaces, its status, the VIP holder
//! killed, and the outage the client saw. `hastack bench failover` runs the same with many cycles
//! and every kind of fault, optionally side by side with keepalived in the same run, and reports
//! min / median / p99 / max per fault, double holders, stale VIPs after a daemon kill, ratios to
//! the peer, and a strip-plot SVG of every sample.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::failover::{summarize, Disturbance, Fault, LabCluster, Quiet, Sample, Stack, VIP};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes in the lab cluster.
    pub nodes: usize,
    /// Faults, each run `cycles` times, round robin.
    pub faults: Vec<Fault>,
    /// Cycles per fault.
    pub cycles: usize,
    /// Print status before and after (hastack only).
    pub show_status: bool,
    /// Stacks to measure, one lab each, in this order (hastack first for ratios).
    pub stacks: Vec<Stack>,
    /// After the faults, disturbances under which nothing may move, each for its duration.
    pub quiet: Vec<(Disturbance, Duration)>,
}

/// What one stack showed: its failover samples and its quiet windows.
#[derive(Debug, Clone)]
pub struct StackRun {
    /// The stack.
    pub stack: Stack,
    /// One per failover.
    pub samples: Vec<Sample>,
    /// One per disturbance.
    pub quiet: Vec<Quiet>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the plan and prints what happens; returns what each stack showed.
pub fn run(binary: &Path, plan: &Plan) -> anyhow::Result<Vec<StackRun>> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("this builds network namespaces and needs root (try: sudo scripts/demo.sh)");
    }
    let mut all = Vec::new();
    for stack in &plan.stacks {
        all.push(run_stack(binary, plan, *stack)?);
    }
    let pairs: Vec<(Stack, Vec<Sample>)> = all.iter().map(|r| (r.stack, r.samples.clone())).collect();
    println!("\n{}", report(&pairs));
    if all.iter().any(|r| !r.quiet.is_empty()) {
        println!("{}", quiet_report(&all));
    }
    Ok(all)
}

/// False failovers and double holders per stack and disturbance.
pub fn quiet_report(all: &[StackRun]) -> String {
    let mut out = String::from("stack                      disturbance  seconds  false failovers  two holders  failed probes\n");
    for r in all {
        for q in &r.quiet {
            let _ = writeln!(
                out,
                "{:<26} {:<12} {:<8} {:<16} {:<12} {}/{}",
                r.stack.label(),
                q.what.label(),
                q.duration.as_secs(),
                q.false_failovers,
                ms(q.double_holder),
                q.failed_probes.0,
                q.failed_probes.1
            );
        }
    }
    out
}

fn run_stack(binary: &Path, plan: &Plan, stack: Stack) -> anyhow::Result<StackRun> {
    println!("== {}: building a lab of {} LB nodes and a client in network namespaces (198.18.0.0/24)", stack.label(), plan.nodes);
    let mut c = LabCluster::start_stack(binary, plan.nodes, stack)?;
    let holder = match c.wait_for_holder(Duration::from_secs(15)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{}", c.daemon_log(1));
            return Err(e);
        }
    };
    println!(
        "VIP {VIP} held by lb{holder}; the client opens a connection to {VIP}:{} every {} ms",
        crate::failover::SERVICE_PORT,
        crate::failover::PROBE_EVERY.as_millis()
    );
    let show = plan.show_status && stack == Stack::Hastack;
    if show {
        println!("\n$ hastack status   (on lb1)\n{}", c.status_text(1));
    }
    let mut samples = Vec::new();
    for cycle in 0..plan.cycles {
        for &fault in &plan.faults {
            let s = match c.failover(fault, Duration::from_secs(20)) {
                Ok(s) => s,
                Err(e) => {
                    for i in 1..=plan.nodes {
                        eprintln!("--- lb{i} log ---\n{}", tail(&c.daemon_log(i), 40));
                    }
                    return Err(e);
                }
            };
            let mut line = format!("[{:>3}] {:<8} lb{} -> lb{}: VIP unreachable for {}", cycle + 1, fault.name(), s.from, s.to, ms(s.outage));
            if !s.double_holder.is_zero() {
                let _ = write!(line, "  TWO HOLDERS for {}", ms(s.double_holder));
            }
            if fault == Fault::Kill {
                match s.stale {
                    Some(d) => {
                        let _ = write!(line, "  (killed daemon's VIP gone after {})", ms(d));
                    }
                    None => line.push_str("  (killed daemon's VIP STILL HELD after 10 s)"),
                }
            }
            println!("{line}");
            if s.outage > Duration::from_secs(1) && std::env::var_os("HASTACK_BENCH_LOGS").is_some() {
                for i in 1..=plan.nodes {
                    eprintln!("--- lb{i} log (slow failover) ---\n{}", tail(&c.daemon_log(i), 200));
                }
            }
            samples.push(s);
        }
    }
    if show {
        println!("\n$ hastack status   (on lb1, after the failovers)\n{}", c.status_text(1));
    }
    let mut quiet = Vec::new();
    for (what, duration) in &plan.quiet {
        let q = c.quiet_window(*what, *duration)?;
        println!(
            "{} for {} s: {} false failover(s), two holders for {}, {} of {} probes failed",
            what.label(),
            duration.as_secs(),
            q.false_failovers,
            ms(q.double_holder),
            q.failed_probes.0,
            q.failed_probes.1
        );
        if q.false_failovers > 0 && std::env::var_os("HASTACK_BENCH_LOGS").is_some() {
            for i in 1..=plan.nodes {
                eprintln!("--- lb{i} log (false failover) ---\n{}", tail(&c.daemon_log(i), 200));
            }
        }
        quiet.push(q);
    }
    Ok(StackRun { stack, samples, quiet })
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn faults_of(samples: &[Sample]) -> Vec<Fault> {
    let mut f: Vec<Fault> = samples.iter().map(|s| s.fault).collect();
    f.sort();
    f.dedup();
    f
}

fn median(samples: &[Sample], fault: Fault) -> Option<Duration> {
    summarize(samples.iter().filter(|s| s.fault == fault).map(|s| s.outage).collect()).map(|x| x.1)
}

/// min / median / p99 / max per stack and fault, double holders, stale VIPs, and the ratio of each
/// peer's median to hastack's.
pub fn report(all: &[(Stack, Vec<Sample>)]) -> String {
    let mut out = String::from(
        "stack                      fault     runs  min        median     p99        max        two-holder runs  stale VIP after kill\n",
    );
    for (stack, samples) in all {
        for f in faults_of(samples) {
            let of: Vec<&Sample> = samples.iter().filter(|s| s.fault == f).collect();
            let Some((min, med, p99, max)) = summarize(of.iter().map(|s| s.outage).collect()) else { continue };
            let doubles = of.iter().filter(|s| !s.double_holder.is_zero()).count();
            let stale = if f == Fault::Kill {
                let held = of.iter().filter(|s| s.stale.is_none()).count();
                match summarize(of.iter().filter_map(|s| s.stale).collect()) {
                    _ if held > 0 => format!("held for good in {held}/{}", of.len()),
                    Some((_, m, _, mx)) => format!("median {} max {}", ms(m), ms(mx)),
                    None => "-".into(),
                }
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "{:<26} {:<9} {:<5} {:<10} {:<10} {:<10} {:<10} {:<16} {}",
                stack.label(),
                f.name(),
                of.len(),
                ms(min),
                ms(med),
                ms(p99),
                ms(max),
                doubles,
                stale
            );
        }
    }
    if let Some((_, ours)) = all.iter().find(|(s, _)| *s == Stack::Hastack) {
        for (stack, theirs) in all.iter().filter(|(s, _)| *s != Stack::Hastack) {
            let _ = write!(out, "\nmedian outage, {} / hastack:", stack.label());
            for f in faults_of(ours) {
                if let (Some(a), Some(b)) = (median(ours, f), median(theirs, f)) {
                    let _ = write!(out, "  {} {:.1}x", f.name(), b.as_secs_f64() / a.as_secs_f64().max(1e-6));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// A strip plot of every outage sample on a log axis (1 ms to 10 s), one row per stack and fault.
pub fn svg(all: &[StackRun]) -> String {
    let rows: Vec<(String, Vec<Duration>)> = all
        .iter()
        .flat_map(|StackRun { stack, samples, .. }| {
            faults_of(samples).into_iter().map(move |f| {
                (format!("{} / {}", stack.label(), f.name()), samples.iter().filter(|s| s.fault == f).map(|s| s.outage).collect())
            })
        })
        .collect();
    let (left, width, row_h) = (260.0, 640.0, 28.0);
    let height = 60.0 + row_h * rows.len() as f64;
    let x = |d: Duration| {
        let ms = (d.as_secs_f64() * 1000.0).clamp(1.0, 10_000.0);
        left + width * (ms.log10() / 4.0)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">Client-observed VIP outage per failover (log scale)</text>\n",
        left + width + 30.0
    );
    for (k, label) in [(1.0, "1 ms"), (10.0, "10 ms"), (100.0, "100 ms"), (1000.0, "1 s"), (10000.0, "10 s")] {
        let xx = x(Duration::from_secs_f64(k / 1000.0));
        let _ = writeln!(s, "<line x1=\"{xx}\" y1=\"30\" x2=\"{xx}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\">{label}</text>", height - 20.0, xx - 12.0, height - 5.0);
    }
    for (r, (label, values)) in rows.iter().enumerate() {
        let y = 45.0 + row_h * r as f64;
        let _ = writeln!(s, "<text x=\"10\" y=\"{}\">{label}</text>", y + 4.0);
        for v in values {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{y}\" r=\"3\" fill=\"#1f6feb\" fill-opacity=\"0.5\"/>", x(*v));
        }
        if let Some((_, med, _, _)) = summarize(values.clone()) {
            let _ = writeln!(s, "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#d1242f\" stroke-width=\"2\"/>", x(med), y - 9.0, y + 9.0);
        }
    }
    s.push_str("</svg>\n");
    s
}
