//! `hastack`: one binary, a subcommand per daemon (each its own systemd unit) plus the operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hastack::cluster::setup::{self, Role};
use hastack::control::{self, Request};
use vip_manager::engine::OperatorCmd;
use vip_manager::ResourceId;

/// The default config file, as systemd units and operators expect it.
const DEFAULT_CONFIG: &str = "/etc/hastack/hastack.toml";

#[derive(Parser)]
#[command(name = "hastack", version, about = "High-availability stack: membership, VIP, balancer, DHCP/DNS")]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "HASTACK_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Control socket of the cluster daemon (default: [control] socket of the config, else /run/hastack/cluster.sock).
    #[arg(long, global = true, env = "HASTACK_SOCKET")]
    socket: Option<PathBuf>,
    /// Where daemons keep their state (membership boot epoch).
    #[arg(long, global = true, env = "HASTACK_STATE_DIR", default_value = "/var/lib/hastack")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cluster daemon: membership, quorum, resource placement and the VIP.
    Cluster {
        /// This node's name in [cluster] (default: the node whose link address is on this host).
        #[arg(long, env = "HASTACK_NODE")]
        node: Option<String>,
    },
    /// Run the vote-only witness of a two-node cluster (the role of corosync-qnetd).
    Witness,
    /// Run the DHCP and DNS daemon ([dhcp] and [dns]).
    DhcpDns,
    /// List the DHCP leases (read from the lease log; safe while the daemon runs).
    Leases {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the TCP balancer daemon, or talk to a running one.
    Balancer {
        #[command(subcommand)]
        command: Option<BalancerCommand>,
    },
    /// Write a new random cluster key (mode 0600) to FILE.
    Keygen {
        /// Where to write it (default: the config's authkey path).
        file: Option<PathBuf>,
    },
    /// Show the cluster at a glance: members, quorum, where each resource runs.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Members of the cluster and their links (like corosync-cfgtool -s).
    Members {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Quorum state (like corosync-quorumtool -s).
    Quorum {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resource commands (like pcs resource / crm resource).
    Resource {
        #[command(subcommand)]
        command: ResourceCommand,
    },
    /// Node commands (like pcs node).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Maintenance mode: nothing is started or stopped while on.
    Maintenance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// A local demo cluster in network namespaces: status, the VIP holder killed, the outage seen.
    Demo {
        /// Failover cycles.
        #[arg(long, default_value_t = 1)]
        cycles: usize,
        /// Faults to inject on the holder, comma separated: crash, kill, stop, graceful.
        #[arg(long, default_value = "crash,graceful")]
        faults: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Convert a corosync.conf, haproxy.cfg or dnsmasq.conf into hastack TOML (printed, or written
    /// with -o); lines that could not be converted are listed on stderr as FILE:LINE: reason.
    Import {
        /// The file to convert.
        file: PathBuf,
        /// What the file is (default: guessed from its name, then its contents).
        #[arg(long, value_enum)]
        from: Option<hastack::import::Kind>,
        /// Write the TOML here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Exit 3 if any line could not be converted.
        #[arg(long)]
        strict: bool,
    },
    /// Config file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum BalancerCommand {
    /// A runtime API command, as HAProxy's stats socket takes it: `show stat`, `show sess`,
    /// `show servers state`, `set server BACKEND/SERVER state ready|drain|maint`, ...
    Ctl {
        /// The command words.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// Hitless reload: check the config (a bad one changes nothing), then a new balancer process
    /// takes over the listeners and every established tcp-mode session; the old one exits.
    Reload,
}

#[derive(Subcommand)]
enum ResourceCommand {
    /// Move a resource to a node (+INFINITY there until `clear`).
    Move { name: String, node: String },
    /// Keep a resource off a node (-INFINITY there until `clear`).
    Ban { name: String, node: String },
    /// Drop the move/ban constraints of a resource (on one node, or all).
    Clear { name: String, node: Option<String> },
    /// Forget a resource's failures (on one node, or all).
    Cleanup { name: String, node: Option<String> },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Put a node in standby: it runs nothing.
    Standby { node: String },
    /// Bring a standby node back.
    Online { node: String },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Client-observed VIP outage per fault over many cycles (min / median / p99 / max).
    Failover {
        /// Cycles per fault.
        #[arg(long, default_value_t = 20)]
        cycles: usize,
        /// Faults, comma separated: crash, kill, stop, graceful.
        #[arg(long, default_value = "crash,kill,stop,graceful")]
        faults: String,
        /// Also run keepalived (Debian package) in the same lab, once per advert interval given in
        /// seconds, comma separated (e.g. `1,0.05`), and report ratios.
        #[arg(long)]
        keepalived: Option<String>,
        /// Write a strip plot of every sample to this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// After the faults, seconds of 5% packet loss between every pair of nodes, counting false
        /// failovers and double holders (0: skip).
        #[arg(long, default_value_t = 10)]
        loss_secs: u64,
        /// After the faults, seconds of every core fully loaded, counting false failovers and double
        /// holders (0: skip).
        #[arg(long, default_value_t = 10)]
        hog_secs: u64,
    },
    /// Membership: detection time after kill -9 and false view changes under 5% / 10% loss and a
    /// CPU hog, hastack vs Corosync 3 (defaults and its lowest stable token) in one lab.
    Membership {
        /// kill -9 runs per stack.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Seconds of each loss window (5% and 10%).
        #[arg(long, default_value_t = 20)]
        loss_secs: u64,
        /// Seconds of the CPU hog window.
        #[arg(long, default_value_t = 20)]
        hog_secs: u64,
        /// Corosync tokens (ms) tried, descending, for the lowest stable token at 5% loss.
        #[arg(long, default_value = "3000,2000,1000,500,300,200,100")]
        tokens: String,
        /// Measure hastack only.
        #[arg(long)]
        no_corosync: bool,
        /// Measure corosync only (e.g. to repeat the token search).
        #[arg(long)]
        no_hastack: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate config files completely; print every problem as file:line:column: reason.
    Check {
        /// Files to check (default: the --config file).
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config { command: ConfigCommand::Check { files } } => {
            let files = if files.is_empty() { vec![cli.config] } else { files };
            return exit(hastack::config::check_files(&files));
        }
        Command::Import { file, from, output, strict } => return import(&file, from, output, strict),
        Command::Cluster { node } => run_cluster(&cli.config, cli.socket, &cli.state_dir, Role::Node(node)),
        Command::Witness => run_cluster(&cli.config, cli.socket, &cli.state_dir, Role::Witness),
        Command::Keygen { file } => keygen(&cli.config, file),
        Command::Balancer { command } => balancer(&cli.config, command),
        Command::DhcpDns => run_dhcp_dns(&cli.config),
        Command::Leases { json } => leases(&cli.config, json),
        Command::Status { json } => status(&cli.config, cli.socket, json),
        Command::Members { json } => text_query(&cli.config, cli.socket, Request::Members, json),
        Command::Quorum { json } => text_query(&cli.config, cli.socket, Request::Quorum, json),
        Command::Resource { command } => resource(&cli.config, cli.socket, command),
        Command::Node { command } => node(&cli.config, cli.socket, command),
        Command::Maintenance { state } => operator(&cli.config, cli.socket, OperatorCmd::Maintenance(state == "on")),
        Command::Demo { cycles, faults } => failover(cycles, &faults, true, None, None, 0, 0),
        Command::Bench { command: BenchCommand::Failover { cycles, faults, keepalived, svg, loss_secs, hog_secs } } => {
            failover(cycles, &faults, false, keepalived.as_deref(), svg, loss_secs, hog_secs)
        }
        Command::Bench { command: BenchCommand::Membership { runs, loss_secs, hog_secs, tokens, no_corosync, no_hastack } } => {
            bench_membership(runs, loss_secs, hog_secs, &tokens, no_corosync, no_hastack)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hastack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `hastack import`: 0 converted, 2 unreadable or unknown kind, 1 the result failed validation,
/// 3 with `--strict` when some lines were not converted.
fn import(file: &std::path::Path, from: Option<hastack::import::Kind>, output: Option<PathBuf>, strict: bool) -> ExitCode {
    use hastack::import;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hastack: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let Some(kind) = from.or_else(|| import::detect(file, &text)) else {
        eprintln!("hastack: cannot tell what {} is; say --from corosync|haproxy|dnsmasq", file.display());
        return ExitCode::from(2);
    };
    let result = import::convert(kind, &text);
    for u in &result.unconverted {
        eprintln!("{}:{}: not converted: {} ({})", file.display(), u.line, u.text, u.reason);
    }
    if let Err(d) = import::validate(&result.toml) {
        eprintln!("hastack: the {kind} conversion of {} does not validate:\n{d}", file.display());
        return ExitCode::from(1);
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, &result.toml) {
                eprintln!("hastack: cannot write {}: {e}", path.display());
                return ExitCode::from(2);
            }
            eprintln!("wrote {} ({} line(s) not converted)", path.display(), result.unconverted.len());
        }
        None => print!("{}", result.toml),
    }
    if strict && !result.unconverted.is_empty() { ExitCode::from(3) } else { ExitCode::SUCCESS }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Loads and fully validates the config, printing every problem, before anything is applied.
fn load(path: &std::path::Path) -> anyhow::Result<hastack::config::Config> {
    hastack::config::load(path).map_err(|d| anyhow::anyhow!("{d}\nconfig rejected; nothing was changed"))
}

fn socket_path(cfg: Option<&hastack::config::Config>, flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| cfg.and_then(|c| c.control_socket()))
        .unwrap_or_else(|| PathBuf::from(control::DEFAULT_CLUSTER_SOCKET))
}

fn run_cluster(path: &std::path::Path, socket: Option<PathBuf>, state_dir: &std::path::Path, role: Role) -> anyhow::Result<()> {
    let cfg = load(path)?;
    hastack::logging::init_with(cfg.log_level(), cfg.log_format());
    let cluster = cfg.cluster.as_ref().context("the config has no [cluster] section")?;
    let quorum = cfg.quorum.clone().unwrap_or_default();
    let sock = socket_path(Some(&cfg), socket);
    let mut s = setup::build(cluster, &quorum, cfg.resources_config().as_ref(), &role, sock, Some(state_dir))?;
    s.metrics = cfg.control.as_ref().and_then(|c| c.metrics_cluster).map(|a| a.0);
    hastack::cluster::run(s)
}

fn keygen(path: &std::path::Path, file: Option<PathBuf>) -> anyhow::Result<()> {
    let file = match file {
        Some(f) => f,
        None => load(path)?.cluster.context("no [cluster] section to take the authkey path from")?.authkey,
    };
    ha_membership::auth::keygen(&file).with_context(|| format!("writing {}", file.display()))?;
    println!("wrote a new cluster key to {} (mode 0600); copy it to every node", file.display());
    Ok(())
}

/// Asks the cluster daemon; an answer carrying `error` becomes the command's error.
fn query_daemon(cfg: Option<&hastack::config::Config>, socket: Option<PathBuf>, req: &Request) -> anyhow::Result<serde_json::Value> {
    let v = control::query(&socket_path(cfg, socket), req)?;
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

fn status(path: &std::path::Path, socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let cfg = hastack::config::load(path).ok();
    let v = query_daemon(cfg.as_ref(), socket, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", hastack::cluster::status_text(&v));
    }
    Ok(())
}

fn failover(
    cycles: usize,
    faults: &str,
    show_status: bool,
    keepalived: Option<&str>,
    svg: Option<PathBuf>,
    loss_secs: u64,
    hog_secs: u64,
) -> anyhow::Result<()> {
    use hastack::failover::{Disturbance, Fault, Stack};
    use std::time::Duration;
    let quiet: Vec<(Disturbance, Duration)> = [(Disturbance::Loss(5), loss_secs), (Disturbance::CpuHog, hog_secs)]
        .into_iter()
        .filter(|(_, secs)| *secs > 0)
        .map(|(d, secs)| (d, Duration::from_secs(secs.min(600))))
        .collect();
    let faults = faults.split(',').map(|f| Fault::parse(f.trim())).collect::<anyhow::Result<Vec<_>>>()?;
    let mut stacks = vec![Stack::Hastack];
    for a in keepalived.into_iter().flat_map(|k| k.split(',')) {
        let secs: f64 = a.trim().parse().with_context(|| format!("keepalived advert \"{a}\" is not a number of seconds"))?;
        if !(0.01..=255.0).contains(&secs) {
            anyhow::bail!("keepalived advert {secs}s is outside 0.01..=255");
        }
        stacks.push(Stack::Keepalived { advert: std::time::Duration::from_secs_f64(secs) });
    }
    let binary = std::env::current_exe().context("locating the hastack binary")?;
    let plan = hastack::demo::Plan { nodes: 3, faults, cycles: cycles.clamp(1, 1000), show_status, stacks, quiet };
    let all = hastack::demo::run(&binary, &plan)?;
    if let Some(path) = svg {
        std::fs::write(&path, hastack::demo::svg(&all)).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn bench_membership(runs: usize, loss_secs: u64, hog_secs: u64, tokens: &str, no_corosync: bool, no_hastack: bool) -> anyhow::Result<()> {
    let tokens = tokens
        .split(',')
        .map(|t| t.trim().parse::<u32>().with_context(|| format!("token \"{t}\" is not a number of ms")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = hastack::bench_membership::Options {
        runs: runs.clamp(1, 100),
        loss_secs: loss_secs.clamp(1, 300),
        hog_secs: hog_secs.clamp(1, 300),
        corosync: !no_corosync,
        hastack: !no_hastack,
        tokens,
    };
    let binary = std::env::current_exe().context("locating the hastack binary")?;
    let report = hastack::bench_membership::run(&binary, &opts)?;
    print!("{}", hastack::bench_membership::render(&report));
    Ok(())
}

fn text_query(path: &std::path::Path, socket: Option<PathBuf>, req: Request, json: bool) -> anyhow::Result<()> {
    let cfg = hastack::config::load(path).ok();
    let v = query_daemon(cfg.as_ref(), socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", v["text"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// Node name (or numeric id) to id, through the config's node list.
fn node_id(cfg: &hastack::config::Config, name: &str) -> anyhow::Result<vip_manager::NodeId> {
    let cluster = cfg.cluster.as_ref().context("the config has no [cluster] section")?;
    cluster
        .nodes
        .iter()
        .find(|n| n.name == name || n.id.to_string() == name)
        .map(|n| vip_manager::NodeId(n.id))
        .with_context(|| format!("no node \"{name}\" in [cluster]"))
}

fn resource_id(cfg: &hastack::config::Config, name: &str) -> anyhow::Result<ResourceId> {
    if cfg.resources.iter().any(|r| r.name == name) {
        Ok(ResourceId::new(name))
    } else {
        anyhow::bail!("no resource \"{name}\" in the config")
    }
}

fn resource(path: &std::path::Path, socket: Option<PathBuf>, cmd: ResourceCommand) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let op = match cmd {
        ResourceCommand::Move { name, node } => OperatorCmd::Move { rsc: resource_id(&cfg, &name)?, node: node_id(&cfg, &node)? },
        ResourceCommand::Ban { name, node } => OperatorCmd::Ban { rsc: resource_id(&cfg, &name)?, node: node_id(&cfg, &node)? },
        ResourceCommand::Clear { name, node } => OperatorCmd::Clear {
            rsc: resource_id(&cfg, &name)?,
            node: node.map(|n| node_id(&cfg, &n)).transpose()?,
        },
        ResourceCommand::Cleanup { name, node } => OperatorCmd::Cleanup {
            rsc: resource_id(&cfg, &name)?,
            node: node.map(|n| node_id(&cfg, &n)).transpose()?,
        },
    };
    send_operator(&cfg, socket, op)
}

fn node(path: &std::path::Path, socket: Option<PathBuf>, cmd: NodeCommand) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let op = match cmd {
        NodeCommand::Standby { node } => OperatorCmd::Standby(node_id(&cfg, &node)?),
        NodeCommand::Online { node } => OperatorCmd::Online(node_id(&cfg, &node)?),
    };
    send_operator(&cfg, socket, op)
}

fn operator(path: &std::path::Path, socket: Option<PathBuf>, op: OperatorCmd) -> anyhow::Result<()> {
    let cfg = load(path)?;
    send_operator(&cfg, socket, op)
}

fn send_operator(cfg: &hastack::config::Config, socket: Option<PathBuf>, op: OperatorCmd) -> anyhow::Result<()> {
    query_daemon(Some(cfg), socket, &Request::Operator { op })?;
    println!("done: the command is replicated to every node; see `hastack status`");
    Ok(())
}

fn balancer_socket(cfg: Option<&hastack::config::Config>) -> PathBuf {
    cfg.and_then(|c| c.control.as_ref().map(|c| c.balancer_socket.clone()))
        .unwrap_or_else(|| PathBuf::from("/run/hastack/balancer.sock"))
}

fn balancer(path: &std::path::Path, command: Option<BalancerCommand>) -> anyhow::Result<()> {
    match command {
        None => {
            let cfg = load(path)?;
            hastack::logging::init_with(cfg.log_level(), cfg.log_format());
            let bal = cfg.balancer.as_ref().context("the config has no [balancer] section")?;
            hastack::balancer::run(path, bal, balancer_socket(Some(&cfg)), cfg.control.as_ref().and_then(|c| c.metrics_balancer).map(|a| a.0))
        }
        Some(BalancerCommand::Reload) => {
            // Checked here too, so the reasons print even when the daemon is not running.
            let cfg = load(path)?;
            let answer = hastack::balancer::query(&balancer_socket(Some(&cfg)), "reload")?;
            print!("{answer}");
            if answer.starts_with("reload failed") {
                anyhow::bail!("reload failed");
            }
            Ok(())
        }
        Some(BalancerCommand::Ctl { words }) => {
            let cfg = hastack::config::load(path).ok();
            print!("{}", hastack::balancer::query(&balancer_socket(cfg.as_ref()), &words.join(" "))?);
            Ok(())
        }
    }
}

fn run_dhcp_dns(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = load(path)?;
    hastack::logging::init_with(cfg.log_level(), cfg.log_format());
    hastack::dhcp_dns::run_with_cluster_socket(
        cfg.dhcp.as_ref(),
        cfg.dns.as_ref(),
        cfg.control_socket().as_deref(),
        cfg.control.as_ref().and_then(|c| c.metrics_dhcp_dns).map(|a| a.0),
    )
}

fn leases(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let cfg = load(path)?;
    let file = cfg.dhcp.as_ref().map(|d| d.lease_file.clone()).context("the config has no [dhcp] section")?;
    let leases = dhcp_dns::runtime::read_leases(&file).with_context(|| format!("reading {}", file.display()))?;
    if json {
        let rows: Vec<serde_json::Value> = leases
            .iter()
            .map(|l| {
                serde_json::json!({
                    "address": l.addr.to_string(),
                    "hwaddr": l.hwaddr.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                    "hostname": l.hostname,
                    "fqdn": l.fqdn,
                    "start": l.start,
                    "expiry": l.expiry,
                    "state": format!("{:?}", l.state),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", dhcp_dns::leases::render_table(&leases, dhcp_dns::server::unix_now()));
    }
    Ok(())
}
