//! Byte plumbing shared by http mode and TLS termination: the client stream (plain or TLS), a
//! bounded read buffer, streamed body forwarding, and a copying tunnel with an inactivity
//! timeout for streams splice(2) cannot serve (TLS on one leg).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use bytes::BufMut as _;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::chunked::{ChunkError, ChunkedScanner};
use super::head::Framing;

/// Bytes read per call while a head is awaited.
pub const CHUNK: usize = 16 * 1024;
/// Bytes read per call while a body streams; also the most body bytes held per direction.
pub const BODY_CHUNK: usize = 64 * 1024;

/// The client leg: plain TCP or TLS terminated here.
#[derive(Debug)]
pub enum Client {
    /// Plain TCP (splice(2) possible after an upgrade).
    Plain(TcpStream),
    /// TLS terminated by the balancer.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Client {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Client::Plain(s) => s,
            Client::Tls(s) => s.get_ref().0,
        }
    }

    /// The TLS server name (SNI) the client asked for, lowercased; `None` on plain TCP or
    /// without SNI.
    pub fn server_name(&self) -> Option<String> {
        match self {
            Client::Plain(_) => None,
            Client::Tls(s) => s.get_ref().1.server_name().map(str::to_ascii_lowercase),
        }
    }
}

/// Terminates TLS on an accepted connection within `limit`; a failed or timed-out handshake is
/// counted in `failed` (and logged at debug) and gives `None`.
pub(crate) async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    sock: TcpStream,
    limit: std::time::Duration,
    failed: &std::sync::atomic::AtomicU64,
    peer: std::net::SocketAddr,
) -> Option<Client> {
    match tokio::time::timeout(limit, acceptor.accept(sock)).await {
        Ok(Ok(s)) => Some(Client::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }
}

impl AsyncRead for Client {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Client::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Client::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_flush(cx),
            Client::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Client::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A read buffer: bytes received and not yet consumed. Reads add at most [`CHUNK`] at a time
/// and only when the caller needs more, so a session holds a bounded amount.
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Reads once from `r`, appending at most [`CHUNK`]; returns the bytes read (0 at end of stream).
    pub async fn fill<R: AsyncRead + Unpin + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        self.fill_up_to(r, CHUNK).await
    }

    /// Reads once from `r`, appending at most `max` bytes.
    pub async fn fill_up_to<R: AsyncRead + Unpin + ?Sized>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        // Into spare capacity: no zeroing, and the capacity stays bounded (2 × CHUNK at most
        // with the head limit) because the buffer is only filled when more is needed.
        self.data.reserve(max);
        let spare = self.data.capacity() - self.data.len();
        let mut limited = (&mut self.data).limit(spare.min(max));
        r.read_buf(&mut limited).await
    }
}

/// Why a body could not be passed on.
#[derive(Debug)]
pub enum BodyError {
    /// The sending side was silent past its timeout.
    ReadTimeout,
    /// The sending side closed or failed before the body's end.
    ReadClosed,
    /// The receiving side did not take the bytes in time or failed.
    Write,
    /// The chunked structure is broken.
    Chunked(ChunkError),
}

/// Passes one body from `buf` + `r` to `w` as it arrives: at most one [`BODY_CHUNK`] is held, each
/// piece is flushed at once (watch events must not wait in a buffer). Bytes past the body's end
/// stay in `buf` (a pipelined request). `count` sees every forwarded byte count.
#[allow(clippy::too_many_arguments)]
pub async fn forward_body<R, W>(
    r: &mut R,
    buf: &mut Buf,
    w: &mut W,
    framing: Framing,
    mut chunks: ChunkedScanner,
    read_timeout: Duration,
    write_timeout: Duration,
    count: &(dyn Fn(u64) + Sync),
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut left = match framing {
        Framing::Empty => return Ok(()),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    if framing == Framing::Chunked && chunks.is_done() {
        return Ok(());
    }
    loop {
        if buf.is_empty() {
            match tokio::time::timeout(read_timeout, buf.fill_up_to(r, BODY_CHUNK)).await {
                Err(_) => return Err(BodyError::ReadTimeout),
                Ok(Ok(0)) if framing == Framing::UntilClose => return Ok(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::ReadClosed),
                Ok(Ok(_)) => {}
            }
        }
        let data = buf.data();
        let take = match framing {
            Framing::Length(_) => usize::try_from(left).unwrap_or(usize::MAX).min(data.len()),
            Framing::Chunked => chunks.feed(data).map_err(BodyError::Chunked)?,
            _ => data.len(),
        };
        let piece = &data[..take];
        let wrote = tokio::time::timeout(write_timeout, async {
            w.write_all(piece).await?;
            w.flush().await
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            return Err(BodyError::Write);
        }
        count(take as u64);
        buf.consume(take);
        if let Framing::Length(_) = framing {
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
        }
        if framing == Framing::Chunked && chunks.is_done() {
            return Ok(());
        }
    }
}

/// Moves the part of a body already in `buf` onto `out` (so a head and a small body leave in
/// one write); returns the framing of what is left and the chunk scanner's state.
pub fn take_buffered(buf: &mut Buf, framing: Framing, out: &mut Vec<u8>) -> Result<(Framing, ChunkedScanner), ChunkError> {
    let mut chunks = ChunkedScanner::new();
    let data = buf.data();
    let (take, rest) = match framing {
        Framing::Length(n) => {
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
            (k, Framing::Length(n - k as u64))
        }
        Framing::Chunked => (chunks.feed(data)?, Framing::Chunked),
        Framing::Empty | Framing::UntilClose => (0, framing),
    };
    out.extend_from_slice(&data[..take]);
    buf.consume(take);
    let rest = if rest == Framing::Length(0) { Framing::Empty } else { rest };
    Ok((rest, chunks))
}

/// How a copying tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both directions finished.
    Closed,
    /// Neither direction moved a byte for the idle timeout.
    Timeout,
    /// Killed by the balancer.
    Killed,
    /// A read or write failed.
    Error,
}

/// Copies both ways between `a` and `b` until both directions end (each end's FIN is passed on
/// as a shutdown), nothing moves for `idle`, or `kill` resolves.
pub async fn copy_tunnel<A, B, K>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    a_to_b: &(dyn Fn(u64) + Sync),
    b_to_a: &(dyn Fn(u64) + Sync),
    kill: K,
) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
    K: std::future::Future<Output = ()>,
{
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        r: &mut R,
        w: &mut W,
        count: &(dyn Fn(u64) + Sync),
        touch: &(dyn Fn() + Sync),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return w.shutdown().await;
            }
            w.write_all(&buf[..n]).await?;
            w.flush().await?;
            count(n as u64);
            touch();
        }
    }
    let both = async {
        let (x, y) = tokio::join!(pump(&mut ar, &mut bw, a_to_b, &touch), pump(&mut br, &mut aw, b_to_a, &touch));
        if x.is_ok() && y.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Error }
    };
    let watchdog = async {
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = base.elapsed().saturating_sub(seen);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        e = both => e,
        _ = watchdog => TunnelEnd::Timeout,
        _ = kill => TunnelEnd::Killed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_stop_at_their_end_and_leave_the_rest() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut buf = Buf::new();
        tokio::spawn(async move {
            a.write_all(b"4\r\nwiki\r\n0\r\n\r\nGET /next").await.unwrap();
        });
        let mut out = Vec::new();
        let counted = AtomicU64::new(0);
        forward_body(&mut b, &mut buf, &mut out, Framing::Chunked, ChunkedScanner::new(), Duration::from_secs(5), Duration::from_secs(5), &|n| {
            counted.fetch_add(n, Ordering::Relaxed);
        })
        .await
        .unwrap();
        assert_eq!(out, b"4\r\nwiki\r\n0\r\n\r\n");
        assert_eq!(counted.load(Ordering::Relaxed), out.len() as u64);
        while buf.data().len() < 9 {
            buf.fill(&mut b).await.unwrap();
        }
        assert_eq!(buf.data(), b"GET /next");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_sender_times_out() {
        let (_a, mut b) = tokio::io::duplex(64);
        let mut buf = Buf::new();
        let r = forward_body(&mut b, &mut buf, &mut Vec::new(), Framing::Length(10), ChunkedScanner::new(), Duration::from_secs(3), Duration::from_secs(3), &|_| {}).await;
        assert!(matches!(r, Err(BodyError::ReadTimeout)));
    }
}
