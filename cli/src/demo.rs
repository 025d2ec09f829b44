//! `hastack demo`: a local three-node cluster in network namespaces, its status, the VIP holder
//! killed, and the outage the client saw. `hastack bench failover` runs the same with many cycles
//! and every kind of fault, and reports min / median / p99 / max per fault.

use std::path::Path;
use std::time::Duration;

use crate::failover::{summarize, Fault, LabCluster, Sample, VIP};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes in the lab cluster.
    pub nodes: usize,
    /// Faults, each run `cycles` times, round robin.
    pub faults: Vec<Fault>,
    /// Cycles per fault.
    pub cycles: usize,
    /// Print status before and after.
    pub show_status: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the plan and prints what happens; returns the samples.
pub fn run(binary: &Path, plan: &Plan) -> anyhow::Result<Vec<Sample>> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the demo builds network namespaces and needs root (try: sudo scripts/demo.sh)");
    }
    println!("building a lab: {} LB nodes and a client in network namespaces (198.18.0.0/24)…", plan.nodes);
    let mut c = LabCluster::start(binary, plan.nodes)?;
    let holder = match c.wait_for_holder(Duration::from_secs(15)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{}", c.daemon_log(1));
            return Err(e);
        }
    };
    println!("cluster up; VIP {VIP} held by lb{holder}; the client probes tcp://{VIP}:{} every 5 ms\n", crate::failover::SERVICE_PORT);
    if plan.show_status {
        println!("$ hastack status   (on lb1)\n{}", c.status_text(1));
    }
    let mut samples = Vec::new();
    for cycle in 0..plan.cycles {
        for &fault in &plan.faults {
            let s = match c.failover(fault, Duration::from_secs(10)) {
                Ok(s) => s,
                Err(e) => {
                    for i in 1..=plan.nodes {
                        eprintln!("--- lb{i} log ---\n{}", tail(&c.daemon_log(i), 40));
                    }
                    return Err(e);
                }
            };
            println!(
                "[{:>3}] {:<8} lb{} -> lb{}: VIP unreachable for {}{}",
                cycle + 1,
                fault.name(),
                s.from,
                s.to,
                ms(s.outage),
                if s.double_holder.is_zero() { String::new() } else { format!("  (TWO HOLDERS for {})", ms(s.double_holder)) }
            );
            samples.push(s);
        }
    }
    if plan.show_status {
        println!("\n$ hastack status   (on lb1, after the failovers)\n{}", c.status_text(1));
    }
    println!("\n{}", report(&samples));
    Ok(samples)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// min / median / p99 / max per fault, and double holders.
pub fn report(samples: &[Sample]) -> String {
    let mut out = String::from("fault     runs   min        median     p99        max        two holders\n");
    let mut faults: Vec<Fault> = samples.iter().map(|s| s.fault).collect();
    faults.sort();
    faults.dedup();
    for f in faults {
        let d: Vec<Duration> = samples.iter().filter(|s| s.fault == f).map(|s| s.outage).collect();
        let doubles = samples.iter().filter(|s| s.fault == f && !s.double_holder.is_zero()).count();
        if let Some((min, med, p99, max)) = summarize(d.clone()) {
            out += &format!(
                "{:<9} {:<6} {:<10} {:<10} {:<10} {:<10} {}\n",
                f.name(),
                d.len(),
                ms(min),
                ms(med),
                ms(p99),
                ms(max),
                doubles
            );
        }
    }
    out
}
