//! The daemons' local control socket: one JSON request line in, one JSON answer line out. The
//! operator commands (`hastack status`, `members`, `quorum`) are clients of it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ha_membership::Status;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use vip_manager::engine::EngineStatus;

/// The default control socket of the cluster daemon.
pub const DEFAULT_CLUSTER_SOCKET: &str = "/run/hastack/cluster.sock";

/// What a client may ask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Everything: membership, quorum, resources.
    Status,
    /// What `corosync-cfgtool -s` shows: members and their links.
    Members,
    /// What `corosync-quorumtool -s` shows.
    Quorum,
    /// An operator command for the resource engine (replicated to every node over the channel).
    Operator {
        /// The command.
        op: vip_manager::engine::OperatorCmd,
    },
}

/// Starts accepting on `path` (replacing a stale socket file); requests go to the daemon's loop.
pub fn serve(path: PathBuf, to_loop: mpsc::Sender<(Request, oneshot::Sender<String>)>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_with_groups(path, to_loop, None)
}

/// [`serve`], and a `{"cmd":"group-join",...}` line hands the connection to the process-group
/// service (`groups`; without it the join is refused).
pub fn serve_with_groups(
    path: PathBuf,
    to_loop: mpsc::Sender<(Request, oneshot::Sender<String>)>,
    groups: Option<mpsc::UnboundedSender<crate::cluster::groups::GroupConn>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Root and the daemon's group only: the socket is an admin interface.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tx = to_loop.clone();
            let groups = groups.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(group) = crate::cluster::groups::JoinRequest::parse(&line) {
                        match &groups {
                            Some(g) => {
                                let reader = lines.into_inner();
                                let _ = g.send(crate::cluster::groups::GroupConn { group, reader, writer: w });
                            }
                            None => {
                                let _ = w.write_all(b"{\"error\":\"this daemon has no process groups\"}\n").await;
                            }
                        }
                        return;
                    }
                    let answer = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            orx.await.unwrap_or_else(|_| r#"{"error":"daemon stopping"}"#.into())
                        }
                        Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }).to_string(),
                    };
                    if w.write_all(answer.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}

/// The cluster daemon's answer to a read-only request, built inside its loop.
pub fn answer(req: &Request, status: &Status, resources: Option<&EngineStatus>, names: &BTreeMap<u32, String>) -> String {
    let ids: BTreeMap<ha_membership::NodeId, String> =
        names.iter().map(|(id, n)| (ha_membership::NodeId(*id), n.clone())).collect();
    match req {
        Request::Status => serde_json::json!({
            "membership": status,
            "names": names,
            "placement": resources.map(crate::cluster::daemon::placement_json),
            "resources_text": resources.map(|r| vip_manager::status::render(r, vip_manager::driver::wall_clock())),
        })
        .to_string(),
        Request::Members => serde_json::json!({
            "text": ha_membership::status::render_members(status, &ids),
            "membership": status,
        })
        .to_string(),
        Request::Quorum => serde_json::json!({
            "text": ha_membership::status::render_quorum(status, &ids),
            "quorum": status.quorum,
            "view": status.view,
        })
        .to_string(),
        Request::Operator { .. } => serde_json::json!({ "error": "not a read-only request" }).to_string(),
    }
}

/// Sends one request to a daemon's control socket and returns its JSON answer.
pub fn query(path: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e} (is it running?)", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
}
