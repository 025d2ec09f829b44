//! Where a chunked body ends, found without decoding it: the bytes are passed on verbatim, the
//! scanner only follows the chunk structure (sizes, data, CRLFs, trailers) so the balancer knows
//! where the next message starts. Memory is constant whatever the chunk sizes.
//!
//! Lifecycle: `Size` (hex digits) → `Ext` (extensions up to LF) → `Data` (n bytes) → `DataCr`
//! → `DataLf` → `Size` …; a zero size leads to `TrailerStart`, where an empty line means `Done`
//! and anything else is a trailer line skipped up to its LF.

use thiserror::Error;

/// Longest chunk-size line (size and extensions) or trailer section accepted.
pub const MAX_LINE: usize = 4096;

/// A chunked body that cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// A chunk size that is not hex or is absurdly large.
    #[error("bad chunk size")]
    Size,
    /// Chunk data not followed by CRLF.
    #[error("missing CRLF after chunk data")]
    DataEnd,
    /// An extension or trailer section longer than [`MAX_LINE`].
    #[error("chunk line too long")]
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8 },
    Ext,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

/// Follows the chunk structure of a body fed in arbitrary pieces.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    line: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    /// At the start of a body.
    pub fn new() -> Self {
        Self { state: State::Size { digits: 0 }, size: 0, line: 0 }
    }

    /// The last chunk and the trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the chunk being passed that are still to come (0 outside chunk data).
    pub fn data_left(&self) -> u64 {
        if self.state == State::Data { self.size } else { 0 }
    }

    /// Consumes body bytes from the start of `buf`; returns how many belong to the body (all of
    /// `buf` unless the body ends inside it).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        // 15 hex digits is over a petabyte: anything longer is an attack.
                        if digits >= 15 {
                            return Err(ChunkError::Size);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.line = 0;
                        if b == b'\n' { self.after_size_line() } else { State::Ext }
                    }
                },
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    if b == b'\n' { self.after_size_line() } else { State::Ext }
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size { digits: 0 },
                    _ => return Err(ChunkError::DataEnd),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { digits: 0 },
                    _ => return Err(ChunkError::DataEnd),
                },
                State::TrailerStart => match b {
                    b'\r' => State::TrailerEndLf,
                    b'\n' => State::Done,
                    _ => self.trailer_byte()?,
                },
                State::TrailerEndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkError::DataEnd),
                },
                State::TrailerLine => {
                    if b == b'\n' {
                        State::TrailerStart
                    } else {
                        self.trailer_byte()?
                    }
                }
                State::Data | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    fn after_size_line(&mut self) -> State {
        if self.size == 0 {
            self.line = 0;
            State::TrailerStart
        } else {
            State::Data
        }
    }

    fn trailer_byte(&mut self) -> Result<State, ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(State::TrailerLine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(parts: &[&[u8]]) -> Result<(usize, bool), ChunkError> {
        let mut s = ChunkedScanner::new();
        let mut total = 0;
        for p in parts {
            let n = s.feed(p)?;
            total += n;
            if s.is_done() {
                break;
            }
        }
        Ok((total, s.is_done()))
    }

    #[test]
    fn finds_the_end_with_extensions_and_trailers() {
        let body = b"5;name=val\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let (n, done) = scan_all(&[body]).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET /next");
        let (n, done) = scan_all(&[b"A\r\n0123456789\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((n, done), (20, true));
        assert_eq!(scan_all(&[b"3\r\nabc\r\n0\r\n"]).unwrap(), (11, false));
    }

    #[test]
    fn rejects_bad_structure() {
        assert_eq!(scan_all(&[b"zz\r\n"]), Err(ChunkError::Size));
        assert_eq!(scan_all(&[b"3\r\nabcX"]), Err(ChunkError::DataEnd));
        assert_eq!(scan_all(&[b"ffffffffffffffff\r\n"]), Err(ChunkError::Size));
        let long = format!("1;{}\r\n", "x".repeat(MAX_LINE + 1));
        assert_eq!(scan_all(&[long.as_bytes()]), Err(ChunkError::LineTooLong));
    }

    proptest! {
        /// Any chunking of any body, cut into any pieces, ends exactly at its last byte.
        #[test]
        fn ends_exactly_at_every_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            trailers in proptest::collection::vec("[A-Za-z-]{1,10}: [a-z0-9]{0,10}", 0..3),
            cuts in proptest::collection::vec(1usize..64, 1..40),
            upper in any::<bool>(),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                let size = if upper { format!("{:X}", c.len()) } else { format!("{:x}", c.len()) };
                body.extend_from_slice(size.as_bytes());
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for t in &trailers {
                body.extend_from_slice(t.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            body.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut s = ChunkedScanner::new();
            let mut pos = 0;
            let mut k = 0;
            while !s.is_done() && pos < body.len() {
                let step = cuts[k % cuts.len()];
                k += 1;
                let piece = &body[pos..(pos + step).min(body.len())];
                let n = s.feed(piece).unwrap();
                prop_assert!(n == piece.len() || s.is_done());
                pos += n;
            }
            prop_assert!(s.is_done());
            prop_assert_eq!(pos, end);
        }
    }
}
