//! The client side of the wire, kept minimal: one `TcpStream` and one read buffer per
//! connection, a response-head parser (httparse), an incremental chunked decoder, a WebSocket
//! frame reader/writer, and a scanner that finds the publish timestamp in whatever bytes a
//! server sends.
//!
//! Invariant: nothing here understands the payload beyond the `"ts":<digits>` marker, so the
//! same code measures every server and transport (SSE `data:` lines, chunked lines, Bayeux JSON
//! batches, WebSocket frames) by the same rule: one marker seen = one delivery.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The largest response head we accept; servers send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// The largest bounded body (long-poll answer, Bayeux batch) or WebSocket frame we accept;
/// a benchmark run never produces more, so more means something is wrong.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Bytes reserved before each read: one read usually takes everything a delivery wrote.
const READ_CHUNK: usize = 4096;

/// The marker in front of the publish timestamp in every payload.
pub const MARK: &[u8] = b"\"ts\":";

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME), the clock every process on this machine
/// shares; publisher and subscribers may be different processes.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The source address of the `index`-th connection: spread over 127.0.x.y so that no single
/// source address runs out of ephemeral ports, whatever the number of connections.
pub fn source_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        1 + (index / 250 % 250) as u8,
        1 + (index % 250) as u8,
    )
}

pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

#[derive(Debug, Default)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub close: bool,
    /// Halley's `X-Halley-Last-Id`, the position a native long-poll resumes from.
    pub last_id: Option<String>,
}

impl Conn {
    /// Connects from `source` (bound before connecting, so the kernel picks a port of that
    /// address), within `timeout`.
    pub async fn connect(
        target: SocketAddr,
        source: Ipv4Addr,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
        let stream = tokio::time::timeout(timeout, socket.connect(target))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes into `buf`; end of stream is an error (every caller expects more).
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            _ => Ok(()),
        }
    }

    pub async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some((len, head)) = parse_head(&self.buf)? {
                self.buf.advance(len);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        }
    }

    /// Reads a bounded body (Content-Length or chunked) after `head`.
    pub async fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked {
            let mut body = Vec::new();
            let mut dechunk = Dechunk::default();
            loop {
                let (used, done) =
                    dechunk.feed(&self.buf, &mut |data| body.extend_from_slice(data))?;
                self.buf.advance(used);
                if done {
                    return Ok(body);
                }
                if body.len() > MAX_BODY {
                    return Err(invalid("body too large"));
                }
                self.fill().await?;
            }
        }
        let len = match head.content_length {
            Some(len) if len <= MAX_BODY => len,
            Some(_) => return Err(invalid("body too large")),
            None if head.status == 101 || head.status == 204 || head.status == 304 => 0,
            None => return Err(invalid("close-delimited bodies are not supported")),
        };
        while self.buf.len() < len {
            self.fill().await?;
        }
        Ok(self.buf.split_to(len).to_vec())
    }

    /// Reads one WebSocket frame sent by the server (unmasked): its opcode and payload.
    pub async fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((header, len)) = frame_len(&self.buf)? {
                if header + len <= self.buf.len() {
                    let opcode = self.buf[0] & 0x0f;
                    let masked = self.buf[1] & 0x80 != 0;
                    let mask_at = header - if masked { 4 } else { 0 };
                    let mask: [u8; 4] = if masked {
                        [
                            self.buf[mask_at],
                            self.buf[mask_at + 1],
                            self.buf[mask_at + 2],
                            self.buf[mask_at + 3],
                        ]
                    } else {
                        [0; 4]
                    };
                    self.buf.advance(header);
                    let mut payload = self.buf.split_to(len).to_vec();
                    if masked {
                        payload
                            .iter_mut()
                            .enumerate()
                            .for_each(|(i, b)| *b ^= mask[i % 4]);
                    }
                    return Ok((opcode, payload));
                }
                if len > MAX_BODY {
                    return Err(invalid("frame too large"));
                }
            }
            self.fill().await?;
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `Some((head length, head))` once `buf` holds a whole response head.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, Head)>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response
        .parse(buf)
        .map_err(|e| invalid(&format!("bad response head: {e}")))?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        ..Head::default()
    };
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("x-halley-last-id") {
            head.last_id = Some(value.to_string());
        }
    }
    if response.version == Some(0) && head.content_length.is_none() && !head.chunked {
        head.close = true;
    }
    Ok(Some((len, head)))
}

/// `Some((header length, payload length))` once `buf` holds a whole frame header.
fn frame_len(buf: &[u8]) -> io::Result<Option<(usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let (ext, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (2, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (
                8,
                usize::try_from(u64::from_be_bytes(b)).map_err(|_| invalid("frame too large"))?,
            )
        }
        126 | 127 => return Ok(None),
        n => (0, n as usize),
    };
    Ok(Some((2 + ext + mask, len)))
}

/// A client frame (FIN set, masked as RFC 6455 requires of clients).
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    // The key need not be unpredictable here: it guards proxies against cache poisoning by
    // scripts, and this client is no script. Servers only check that a key is present.
    const KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x2e];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}

/// The request head of a WebSocket upgrade of `path`.
pub fn ws_upgrade(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: aGFsbGV5LWJlbmNoLWtleQ==\r\n\r\n"
    )
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: ChunkState,
    size: usize,
}

#[derive(Debug, Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    SizeLine,
    Data,
    DataEnd,
    TrailerStart,
    TrailerLine,
    Done,
}

impl Dechunk {
    /// Feeds `input`, handing each run of body bytes to `out`. Returns how many bytes were
    /// used and whether the last chunk (and trailer) has been read; bytes after it are not used.
    pub fn feed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> io::Result<(usize, bool)> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as usize;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or_else(|| invalid("chunk size overflow"))?;
                    }
                    b'\n' => self.end_size_line(),
                    _ => self.state = ChunkState::SizeLine,
                },
                ChunkState::SizeLine => {
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data => {
                    let n = self.size.min(input.len() - i);
                    out(&input[i..i + n]);
                    self.size -= n;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    continue;
                }
                ChunkState::DataEnd => {
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok((i + 1, true));
                    }
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == ChunkState::Done))
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

/// Finds `"ts":<digits>` in a byte stream that may be split anywhere.
#[derive(Debug, Default)]
pub struct Scan {
    matched: usize,
    value: u64,
    digits: bool,
}

impl Scan {
    /// Calls `on(ts)` for each timestamp completed in `bytes`.
    pub fn feed(&mut self, bytes: &[u8], on: &mut impl FnMut(u64)) {
        for &b in bytes {
            if self.matched == MARK.len() {
                if b.is_ascii_digit() {
                    self.value = self
                        .value
                        .wrapping_mul(10)
                        .wrapping_add(u64::from(b - b'0'));
                    self.digits = true;
                    continue;
                }
                if self.digits {
                    on(self.value);
                }
                self.matched = 0;
            }
            if b == MARK[self.matched] {
                self.matched += 1;
                if self.matched == MARK.len() {
                    self.value = 0;
                    self.digits = false;
                }
            } else {
                self.matched = usize::from(b == MARK[0]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Vec<u64> {
        let mut scan = Scan::default();
        let mut seen = Vec::new();
        for piece in pieces {
            scan.feed(piece, &mut |ts| seen.push(ts));
        }
        seen
    }

    #[test]
    fn scan_finds_markers_across_any_split() {
        let text = b"data: {\"ts\":123,\"pad\":\"x\"}\n\ndata: {\"ts\":45}\n\"\"ts\":7,";
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(scan_all(&[a, b]), vec![123, 45, 7], "cut at {cut}");
        }
    }

    fn dechunk_all(pieces: &[&[u8]]) -> (Vec<u8>, bool, usize) {
        let mut d = Dechunk::default();
        let mut out = Vec::new();
        let (mut used, mut done) = (0, false);
        for piece in pieces {
            let (n, fin) = d.feed(piece, &mut |b| out.extend_from_slice(b)).unwrap();
            used += n;
            done = fin;
        }
        (out, done, used)
    }

    #[test]
    fn dechunk_handles_any_split_and_stops_after_the_trailer() {
        let text = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\nHTTP/1.1";
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            let (out, done, used) = dechunk_all(&[a, b]);
            assert_eq!(out, b"hello!", "cut at {cut}");
            assert!(done);
            assert_eq!(used, text.len() - b"HTTP/1.1".len(), "cut at {cut}");
        }
    }

    #[test]
    fn heads_are_parsed() {
        let text =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Halley-Last-Id: e-1\r\n\r\nrest";
        let (len, head) = parse_head(text).unwrap().unwrap();
        assert_eq!(len, text.len() - 4);
        assert!(head.chunked && head.status == 200 && !head.close);
        assert_eq!(head.last_id.as_deref(), Some("e-1"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }

    #[test]
    fn frames_round_trip_through_the_length_encoding() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = ws_frame(1, &vec![b'a'; len]);
            let (header, n) = frame_len(&frame).unwrap().unwrap();
            assert_eq!((header + n, n), (frame.len(), len));
        }
    }
}
