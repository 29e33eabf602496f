//! The socket of a streaming response, lent to the hub so that a delivery writes a message
//! to an idle subscriber itself (the engine's `direct` module says how, and why).
//!
//! Only for frames that are the same for every subscriber and need no state of the stream's:
//! SSE's (cached on the message) and NDJSON's. A response that can take direct writes carries
//! an [`Offer`] in its extensions; the lean path (`server.rs`) takes it, moves its socket
//! into a [`Socket`] and attaches it, and its writer takes the socket back from the hub
//! before each of its own writes. On hyper's path the offer is ignored: nothing is attached,
//! and the stream never arms.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

use halley_engine::direct::{COALESCE, Offered, Sink, SinkSlot};
use halley_proto::Message;

use crate::metrics::{Kind, LATENCY, now_us};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Which frames a direct write sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frames {
    /// SSE's `id:` and `data:` lines ([`Message::sse_frame`]).
    Sse,
    /// The message's JSON object and a line end.
    Ndjson,
    /// The message's JSON object as a WebSocket text frame (the native WebSocket's).
    WsText,
}

/// What a streaming response offers the server that writes it (in its extensions).
#[derive(Clone)]
pub(crate) struct Offer {
    pub(crate) slot: SinkSlot,
    pub(crate) frames: Frames,
}

/// A response's socket, shared by its writer and the hub's deliveries (one at a time: the
/// engine's `direct::Writer`).
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    frames: Frames,
    /// Chunked transfer coding (HTTP/1.1); an HTTP/1.0 body is delimited by the close.
    chunked: bool,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream, frames: Frames, chunked: bool) -> Socket {
        Socket {
            stream,
            frames,
            chunked,
        }
    }

    /// The message's frame, and what follows it on the wire (a line end, the chunk's CRLF).
    fn frame<'m>(&self, m: &'m Message) -> (&'m Bytes, &'static [u8]) {
        match (self.frames, self.chunked) {
            (Frames::Sse, true) => (m.sse_frame(), b"\r\n"),
            (Frames::Sse, false) => (m.sse_frame(), b""),
            (Frames::Ndjson, true) => (m.json_object(), b"\n\r\n"),
            (Frames::Ndjson, false) => (m.json_object(), b"\n"),
            (Frames::WsText, _) => (m.json_object(), b""),
        }
    }

    /// What goes before a message's frame, at the end of `out`: a chunk's size line, a
    /// WebSocket frame's header. Returns its length.
    fn prefix(&self, frame: &[u8], out: &mut [u8; 18]) -> usize {
        match self.frames {
            Frames::WsText => {
                let head = crate::transport::ws_text_head(frame.len());
                let head = head.as_slice();
                out[18 - head.len()..].copy_from_slice(head);
                head.len()
            }
            _ if self.chunked => crate::server::chunk_size_line(frame.len() + self.line_end(), out),
            _ => 0,
        }
    }

    /// The bytes a message takes on the wire, framing included: what the writer sends the
    /// rest of when a delivery could write only part of it.
    pub(crate) fn encode(&self, m: &Message) -> BytesMut {
        let (frame, tail) = self.frame(m);
        let mut out = BytesMut::with_capacity(frame.len() + 24);
        let mut prefix = [0u8; 18];
        let n = self.prefix(frame, &mut prefix);
        out.put_slice(&prefix[18 - n..]);
        out.put_slice(frame);
        out.put_slice(tail);
        out
    }

    /// The line end that is part of the chunk's data (NDJSON's), not of its framing.
    fn line_end(&self) -> usize {
        match self.frames {
            Frames::Sse | Frames::WsText => 0,
            Frames::Ndjson => 1,
        }
    }
}

impl Sink for Socket {
    fn offer(&self, messages: &[Arc<Message>]) -> Offered {
        let messages = &messages[..messages.len().min(COALESCE)];
        let mut prefixes = [[0u8; 18]; COALESCE];
        let mut lens = [0usize; COALESCE];
        for (i, m) in messages.iter().enumerate() {
            let (frame, _) = self.frame(m);
            lens[i] = self.prefix(frame, &mut prefixes[i]);
        }
        // Only the slices with bytes in them: a close-delimited SSE frame is one, and one is
        // written with `send` rather than `writev` (the kernel's `vfs_writev` and its iovec
        // import were 7% of a 5,000-subscriber broadcast's server CPU in `perf`, `sendto` 4%).
        let mut slices = [IoSlice::new(&[]); 3 * COALESCE];
        let mut used = 0;
        let mut total = 0;
        for (i, m) in messages.iter().enumerate() {
            let (frame, tail) = self.frame(m);
            let prefix = &prefixes[i][18 - lens[i]..];
            for part in [prefix, frame, tail] {
                if !part.is_empty() {
                    total += part.len();
                    slices[used] = IoSlice::new(part);
                    used += 1;
                }
            }
        }
        let written = match &slices[..used] {
            [one] => self.stream.try_write(one),
            many => self.stream.try_write_vectored(many),
        };
        let offered = match written {
            Ok(written) if written >= total => Offered::All,
            Ok(0) | Err(_) => Offered::Nothing,
            Ok(written) => Offered::Part(written),
        };
        // The publish→write latency of what went whole (a delivery only writes live messages;
        // the rest is the transport's, which counts it when it writes it).
        let whole = match offered {
            Offered::All => messages.len(),
            Offered::Nothing => 0,
            Offered::Part(written) => {
                let mut end = 0;
                messages
                    .iter()
                    .take_while(|m| {
                        end += self.frame_len(m);
                        end <= written
                    })
                    .count()
            }
        };
        if whole > 0 {
            let kind = match self.frames {
                Frames::Sse => Kind::Sse,
                Frames::Ndjson => Kind::Stream,
                Frames::WsText => Kind::WebSocket,
            };
            let now = now_us();
            for m in &messages[..whole] {
                LATENCY.record(kind, m.published_us(), now);
            }
        }
        offered
    }

    fn frame_len(&self, m: &Message) -> usize {
        let (frame, tail) = self.frame(m);
        let mut prefix = [0u8; 18];
        self.prefix(frame, &mut prefix) + frame.len() + tail.len()
    }
}

/// Writes to a socket through a shared reference, as tokio's own halves do (wait for
/// writability, try, and on `WouldBlock` wait again: the try clears the readiness).
pub(crate) struct Shared<'a>(pub(crate) &'a TcpStream);

impl Shared<'_> {
    /// Waits for writability and tries `write`; a `WouldBlock` (which clears the readiness)
    /// waits again.
    fn poll_try(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncWrite for Shared<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_try(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_try(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halley_proto::{Channel, MessageId, Payload};

    /// A partial write is split into whole frames and the rest by these lengths: they must be
    /// what is written.
    #[tokio::test]
    async fn a_frame_is_as_long_as_its_encoding() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for frames in [Frames::Sse, Frames::Ndjson, Frames::WsText] {
            for chunked in [true, false] {
                let socket = Socket::new(TcpStream::connect(addr).await.unwrap(), frames, chunked);
                for len in [0, 1, 9, 10, 11, 250, 4093, 4094, 70_000] {
                    let text = format!("\"{}\"", "x".repeat(len));
                    let data = Payload::from_json(text.as_bytes()).unwrap();
                    let m = Message::new(Channel::parse("/a").unwrap(), MessageId::new(1, 7), data);
                    assert_eq!(
                        socket.frame_len(&m),
                        socket.encode(&m).len(),
                        "{frames:?}, chunked {chunked}, {len}"
                    );
                }
            }
        }
    }
}
