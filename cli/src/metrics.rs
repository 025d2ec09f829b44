//! The daemons' Prometheus endpoint: `GET /metrics` over HTTP/1.x on a `[control] metrics_*`
//! address, answered with the text a render function gives at that moment.
//!
//! Bounded like everything that faces a network: at most [`MAX_CONNECTIONS`] scrapes at once, a
//! request head of at most [`MAX_HEAD`] bytes read within [`READ_TIMEOUT`], one answer per
//! connection (`Connection: close`). The socket is bound with SO_REUSEPORT so a balancer's reload
//! successor can bind the same address while its predecessor still serves.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Most scrapes served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// A scraper must send its request head within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Renders the exposition text, or `None` when the daemon is going away (answered 503).
pub type Render = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Binds `addr` and serves scrapes on the current tokio runtime until the task is aborted.
/// Returns the bound address (useful with port 0) and the task.
pub fn serve(addr: SocketAddr, render: Render) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    let listener = tokio::net::TcpListener::from_std(sock.into())?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &render)).await;
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

/// Reads one request head and writes one answer.
async fn answer(mut stream: tokio::net::TcpStream, render: &Render) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let reply = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf[len..])).await {
            Ok(r) => r?,
            Err(_) => break response(408, "Request Timeout", "text/plain", "request head not received in time\n", false),
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        match route(&buf[..len], render) {
            Some(r) => break r,
            None if len == buf.len() => break response(431, "Request Header Fields Too Large", "text/plain", "request head too large\n", false),
            None => continue,
        }
    };
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// The answer to a complete request head, or `None` while the head is still partial.
fn route(head: &[u8], render: &Render) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(response(400, "Bad Request", "text/plain", "malformed request\n", false)),
        Ok(httparse::Status::Complete(_)) => {
            let head_only = req.method == Some("HEAD");
            let path = req.path.unwrap_or_default().split('?').next().unwrap_or_default();
            Some(match (req.method, path) {
                (Some("GET" | "HEAD"), "/metrics") => match render() {
                    Some(text) => response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &text, head_only),
                    None => response(503, "Service Unavailable", "text/plain", "stopping\n", head_only),
                },
                (Some("GET" | "HEAD"), _) => response(404, "Not Found", "text/plain", "only /metrics is served here\n", head_only),
                _ => response(405, "Method Not Allowed", "text/plain", "GET /metrics\n", false),
            })
        }
    }
}

fn response(code: u16, reason: &str, ctype: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = n.clone();
        let render: Render = Arc::new(move || {
            let v = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(format!("# TYPE x counter\nx {v}\n"))
        });
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), render).unwrap();
        let a = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.ends_with("x 0\n"), "{a}");
        // Rendered afresh per scrape.
        assert!(ask(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await.ends_with("x 1\n"));
        assert!(ask(addr, b"GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        assert!(ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405 "));
        assert!(ask(addr, b"\x00\x01garbage\r\n\r\n").await.starts_with("HTTP/1.1 400 "));
        let head = ask(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "{head}");
        // A head that never ends within MAX_HEAD is refused, not buffered without bound.
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert!(ask(addr, &big).await.starts_with("HTTP/1.1 431 "));
        task.abort();
    }

    #[tokio::test]
    async fn stopping_daemon_answers_503() {
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(|| None)).unwrap();
        assert!(ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 503 "));
        task.abort();
    }

    #[tokio::test]
    async fn a_successor_binds_the_same_address() {
        let (addr, t1) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(|| Some(String::new()))).unwrap();
        let (addr2, t2) = serve(addr, Arc::new(|| Some(String::new()))).unwrap();
        assert_eq!(addr, addr2);
        t1.abort();
        t2.abort();
    }
}
