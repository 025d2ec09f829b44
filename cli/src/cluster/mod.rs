//! `hastack cluster` (and `hastack witness`): the cluster daemon. It runs the membership engine on
//! its own thread (real-time priority where allowed, so other load cannot starve failure detection),
//! and, on every agreed view, places the resources and applies this node's part: VIPs added on a
//! kernel-enforced lease with a gratuitous ARP / unsolicited NA burst, or removed.
//!
//! Lifecycle of the daemon:
//! ```text
//!  start --remove stale VIPs--> joining --ViewInstalled + quorate--> serving
//!  serving --view change--> (re)place: release what moved away at once, add what came here
//!  serving --QuorumLost / alone--> release every VIP at once --> joining
//!  any --own loop ran late (SIGSTOP, starvation) > suspect_timeout--> fenced: release every VIP,
//!        hold nothing until a newer view is installed
//!  any --SIGTERM/SIGINT--> release VIPs, say Leave (peers commit the new view at once), exit
//! ```
//! Placement input: the agreed view (members with their boot epochs), the config's resources,
//! constraints and policy. Until resource state is replicated over the ordered cluster channel, the
//! incumbent holder of a resource is derived from the view alone — the longest-running eligible member
//! (earliest boot, then lowest id) — which every member computes identically and which gives
//! stickiness without history: a restarted node never steals a VIP from a running holder.

pub mod channel;
pub mod daemon;
pub mod groups;
pub mod setup;

pub use daemon::{run, Setup};

/// Renders the cluster daemon's status answer the way `crm_mon -1` and `corosync-quorumtool -s` do.
pub fn status_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let m = &v["membership"];
    let name = |id: &serde_json::Value| -> String {
        let key = id.to_string();
        v["names"][key.as_str()].as_str().map(|s| format!("{s} ({key})")).unwrap_or(key)
    };
    let q = &m["quorum"];
    let _ = writeln!(out, "Local node: {}", name(&m["local"]));
    match m["view"].as_object() {
        Some(view) => {
            let id = &view["id"];
            let _ = writeln!(out, "Ring ID:    {}.{}", id["coordinator"], id["epoch"]);
            let members: Vec<String> = view["members"].as_array().into_iter().flatten().map(|x| name(&x["node"])).collect();
            let _ = writeln!(out, "Members:    {}", members.join(", "));
        }
        None => {
            let _ = writeln!(out, "Ring ID:    (no view yet)");
        }
    }
    let flags: Vec<&str> = q["flags"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
    let _ = writeln!(
        out,
        "Quorum:     {} (votes {} of expected {}, quorum {}) flags: {}",
        if q["quorate"].as_bool() == Some(true) { "Quorate" } else { "NOT quorate" },
        q["total_votes"],
        q["expected_votes"],
        q["quorum"],
        flags.join(" ")
    );
    let _ = writeln!(out, "\nNodes:");
    for p in m["peers"].as_array().into_iter().flatten() {
        let links: Vec<&str> = p["links"].as_array().into_iter().flatten().map(|l| if l.as_bool() == Some(true) { "up" } else { "down" }).collect();
        let _ = writeln!(out, "  {:<20} {:<8} links: {}", name(&p["node"]), p["state"].as_str().unwrap_or("?"), links.join(" "));
    }
    if let Some(groups) = v["groups"].as_object().filter(|g| !g.is_empty()) {
        let _ = writeln!(out, "\nProcess groups:");
        for (g, ms) in groups {
            let ms: Vec<&str> = ms.as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
            let _ = writeln!(out, "  {g:<20} {}", ms.join(", "));
        }
    }
    if let Some(text) = v["resources_text"].as_str() {
        let _ = writeln!(out);
        out.push_str(text);
        return out;
    }
    let _ = writeln!(out, "\nResources:");
    match v["placement"].as_object() {
        Some(pl) if !pl.is_empty() => {
            for (r, n) in pl {
                let at = if n.is_null() { "Stopped".to_string() } else { format!("Started {}", name(n)) };
                let _ = writeln!(out, "  {r:<20} {at}");
            }
        }
        _ => {
            let _ = writeln!(out, "  (none placed)");
        }
    }
    out
}
