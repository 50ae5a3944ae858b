//! Accepting gRPC clients that send their Unix socket path as `:authority`.
//!
//! gRPC C-core (Python, Ruby, C++), grpc-java, grpc-swift and grpc-go
//! dialing a plain path send the socket path (e.g. `/tmp/elide-daemon.sock`,
//! or its %-encoding) as the HTTP/2 `:authority`. `h2`, the HTTP/2 layer
//! under tonic, parses every `:authority` as a URI authority and resets the
//! stream (`PROTOCOL_ERROR`) when that fails, before any service sees the
//! request; it has no option to relax this. On a Unix socket the authority
//! names nothing, so [`AuthorityRewrite`] sits between the accepted socket
//! and `h2` and, in the client-to-server bytes, replaces an `:authority`
//! that is not a valid URI authority with `localhost` (what grpc-go and
//! Kubernetes use for Unix sockets). Everything else passes unchanged.
//!
//! Headers are HPACK-compressed with a connection-wide dynamic table, so
//! one field cannot be edited in place. The rewriter decodes every header
//! block the client sends (tracking the client's dynamic table) and
//! re-encodes it as literals that never touch the dynamic table, so the
//! table `h2` keeps stays empty and can never disagree with ours. Header
//! blocks are small; DATA and every other frame are forwarded as they come.
//! Server-to-client bytes are not touched.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Payload size of the frames we write: HTTP/2's initial
/// SETTINGS_MAX_FRAME_SIZE, which every peer must accept.
const OUT_FRAME_PAYLOAD: usize = 16_384;
/// The HPACK dynamic table size the client may use: HTTP/2's initial
/// SETTINGS_HEADER_TABLE_SIZE, which the daemon's server never changes.
const HPACK_TABLE_SIZE: usize = 4_096;
/// Largest header block (HEADERS plus CONTINUATION fragments) accepted
/// from a client; a bigger one closes the connection. gRPC clients send a
/// few hundred bytes; their own metadata limits are 8 to 16 KiB.
pub const MAX_HEADER_BLOCK_BYTES: usize = 1024 * 1024;
/// What replaces an `:authority` that is not a valid URI authority.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A header block whose CONTINUATION frames are still to come.
struct PendingBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

enum Phase {
    /// Matching the connection preface (this many bytes matched so far).
    Preface(usize),
    /// Reading frames.
    Frames,
    /// Not HTTP/2: bytes go through untouched, for `h2` to refuse.
    Passthrough,
}

/// The client-to-server half of the rewrite, over bytes (no I/O).
pub struct Rewriter {
    phase: Phase,
    decoder: loona_hpack::Decoder<'static>,
    /// Payload bytes of a forwarded frame still to come.
    forwarding: usize,
    pending: Option<PendingBlock>,
    /// Authorities replaced so far on this connection.
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface(0),
            decoder,
            forwarding: 0,
            pending: None,
            rewritten: 0,
        }
    }
}

impl Rewriter {
    /// Consumes what it can of `input` and queues the bytes for the server
    /// on `out`. An incomplete frame stays in `input`. An error means the
    /// client broke the protocol; the connection must be closed.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut VecDeque<Bytes>) -> io::Result<()> {
        loop {
            match self.phase {
                Phase::Passthrough => {
                    if !input.is_empty() {
                        out.push_back(input.split().freeze());
                    }
                    return Ok(());
                }
                Phase::Preface(matched) => {
                    let n = input.len().min(PREFACE.len() - matched);
                    if n == 0 {
                        return Ok(());
                    }
                    if input[..n] != PREFACE[matched..matched + n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    out.push_back(input.split_to(n).freeze());
                    self.phase = if matched + n == PREFACE.len() {
                        Phase::Frames
                    } else {
                        Phase::Preface(matched + n)
                    };
                }
                Phase::Frames if self.forwarding > 0 => {
                    let n = input.len().min(self.forwarding);
                    if n == 0 {
                        return Ok(());
                    }
                    self.forwarding -= n;
                    out.push_back(input.split_to(n).freeze());
                }
                Phase::Frames => {
                    if input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
                    let kind = input[3];
                    if self.pending.is_some() && kind != FRAME_CONTINUATION {
                        return Err(invalid(
                            "HTTP/2: a header block was interrupted by another frame",
                        ));
                    }
                    if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION {
                        self.forwarding = len;
                        out.push_back(input.split_to(FRAME_HEADER_LEN).freeze());
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK_BYTES {
                        return Err(invalid(format!(
                            "HTTP/2: header frame of {len} bytes is over the limit of {MAX_HEADER_BLOCK_BYTES}"
                        )));
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        input.reserve(FRAME_HEADER_LEN + len - input.len());
                        return Ok(());
                    }
                    let frame = input.split_to(FRAME_HEADER_LEN + len);
                    self.header_frame(&frame, out)?;
                }
            }
        }
    }

    /// One complete HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, frame: &[u8], out: &mut VecDeque<Bytes>) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER_LEN..];
        let mut block = if kind == FRAME_HEADERS {
            if self.pending.is_some() {
                return Err(invalid("HTTP/2: HEADERS while a header block is open"));
            }
            let mut at = 0;
            let pad = if flags & FLAG_PADDED != 0 {
                at = 1;
                *payload
                    .first()
                    .ok_or_else(|| invalid("HTTP/2: padded HEADERS without a pad length"))?
                    as usize
            } else {
                0
            };
            let priority = if flags & FLAG_PRIORITY != 0 {
                let p: [u8; 5] = payload
                    .get(at..at + 5)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| invalid("HTTP/2: HEADERS too short for its priority"))?;
                at += 5;
                Some(p)
            } else {
                None
            };
            let end = payload
                .len()
                .checked_sub(pad)
                .filter(|end| *end >= at)
                .ok_or_else(|| invalid("HTTP/2: HEADERS padding longer than the frame"))?;
            PendingBlock {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: payload[at..end].to_vec(),
            }
        } else {
            let mut block = self
                .pending
                .take()
                .ok_or_else(|| invalid("HTTP/2: CONTINUATION without a header block"))?;
            if block.stream_id != stream_id {
                return Err(invalid("HTTP/2: CONTINUATION on another stream"));
            }
            if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK_BYTES {
                return Err(invalid(format!(
                    "HTTP/2: header block over the limit of {MAX_HEADER_BLOCK_BYTES} bytes"
                )));
            }
            block.fragment.extend_from_slice(payload);
            block
        };
        if flags & FLAG_END_HEADERS == 0 {
            self.pending = Some(block);
            return Ok(());
        }
        let encoded = self.rewrite_block(&block.fragment)?;
        block.fragment.clear();
        write_header_frames(&block, &encoded, out);
        Ok(())
    }

    /// Decodes a header block and re-encodes it, with an invalid
    /// `:authority` replaced.
    fn rewrite_block(&mut self, fragment: &[u8]) -> io::Result<Vec<u8>> {
        let mut encoded = Vec::with_capacity(fragment.len() * 2);
        let mut rewritten = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                let value: &[u8] = if &*name == b":authority"
                    && http::uri::Authority::try_from(&*value).is_err()
                {
                    rewritten = true;
                    REPLACEMENT_AUTHORITY
                } else {
                    &value
                };
                // Literal header field without indexing, new name (RFC 7541
                // 6.2.2): never enters a dynamic table.
                encoded.push(0x00);
                encode_string(&name, &mut encoded);
                encode_string(value, &mut encoded);
            })
            .map_err(|e| invalid(format!("HPACK: {e}")))?;
        if rewritten {
            self.rewritten += 1;
        }
        Ok(encoded)
    }
}

/// An HPACK string literal without Huffman coding (RFC 7541 5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1); `high` holds the
/// bits above the prefix in the first byte.
fn encode_integer(mut value: usize, n: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HEADERS (with the block's priority and END_STREAM) and as many
/// CONTINUATION frames as `encoded` needs.
fn write_header_frames(block: &PendingBlock, encoded: &[u8], out: &mut VecDeque<Bytes>) {
    let mut frames = BytesMut::with_capacity(encoded.len() + 2 * FRAME_HEADER_LEN + 5);
    let first_room = OUT_FRAME_PAYLOAD - if block.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| p);
    frame_header(
        &mut frames,
        priority.len() + first.len(),
        FRAME_HEADERS,
        flags,
        block.stream_id,
    );
    frames.extend_from_slice(priority);
    frames.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(OUT_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(
            &mut frames,
            chunk.len(),
            FRAME_CONTINUATION,
            flags,
            block.stream_id,
        );
        frames.extend_from_slice(chunk);
        rest = tail;
    }
    out.push_back(frames.freeze());
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: [u8; 4]) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id);
}

/// An accepted connection whose client-to-server bytes go through a
/// [`Rewriter`]; writes go straight to the socket.
pub struct AuthorityRewrite<S> {
    inner: S,
    input: BytesMut,
    out: VecDeque<Bytes>,
    rewriter: Rewriter,
    eof: bool,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityRewrite {
            inner,
            input: BytesMut::new(),
            out: VecDeque::new(),
            rewriter: Rewriter::default(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(front) = this.out.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    this.out.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let filled = this.input.len();
            this.input.resize(filled + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut this.input[filled..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let n = read.filled().len();
            this.input.truncate(filled + n);
            ready!(polled)?;
            if n == 0 {
                // An incomplete frame left in `input` is dropped: `h2` sees
                // the connection end mid-frame either way.
                this.eof = true;
                continue;
            }
            let before = this.rewriter.rewritten;
            this.rewriter.feed(&mut this.input, &mut this.out)?;
            if before == 0 && this.rewriter.rewritten > 0 {
                tracing::debug!(
                    "client sent an :authority that is not a URI authority (a socket path?); serving it as localhost"
                );
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's bytes: preface, SETTINGS, then each header list as one
    /// HEADERS frame (encoded with a dynamic table, as real clients do),
    /// each followed by a DATA frame.
    fn client_bytes(requests: &[Vec<(&[u8], &[u8])>]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        for (i, headers) in requests.iter().enumerate() {
            let stream = (2 * i as u32 + 1).to_be_bytes();
            let block = encoder.encode(headers.iter().copied());
            let mut out = BytesMut::new();
            frame_header(
                &mut out,
                block.len(),
                FRAME_HEADERS,
                FLAG_END_HEADERS,
                stream,
            );
            bytes.extend_from_slice(&out);
            bytes.extend_from_slice(&block);
            let mut data = BytesMut::new();
            frame_header(&mut data, 5, 0x0, FLAG_END_STREAM, stream);
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(b"hello");
        }
        bytes
    }

    /// One decoded header list.
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    /// Runs `bytes` through a rewriter in pieces of `step` bytes, then
    /// decodes what came out as `h2` would: the header lists, the DATA
    /// payloads and how many authorities were replaced.
    fn rewrite(bytes: &[u8], step: usize) -> (Vec<HeaderList>, Vec<Vec<u8>>, u64) {
        let mut rewriter = Rewriter::default();
        let mut input = BytesMut::new();
        let mut out = VecDeque::new();
        for piece in bytes.chunks(step) {
            input.extend_from_slice(piece);
            rewriter.feed(&mut input, &mut out).expect("valid input");
        }
        assert!(input.is_empty(), "everything consumed");
        let all: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(&all[..PREFACE.len()], PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut data) = (Vec::new(), Vec::new());
        let mut at = PREFACE.len();
        while at < all.len() {
            let len = u32::from_be_bytes([0, all[at], all[at + 1], all[at + 2]]) as usize;
            let payload = &all[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len];
            match all[at + 3] {
                FRAME_HEADERS => blocks.push(decoder.decode(payload).expect("decodable")),
                0x0 => data.push(payload.to_vec()),
                _ => {}
            }
            at += FRAME_HEADER_LEN + len;
        }
        (blocks, data, rewriter.rewritten)
    }

    fn request(authority: &[u8]) -> Vec<(&[u8], &[u8])> {
        vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/elide.daemon.v1.ElideDaemon/Health"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        // The second request reuses the dynamic-table entry the first added.
        let bytes = client_bytes(&[
            request(b"/tmp/elide-daemon.sock"),
            request(b"/tmp/elide-daemon.sock"),
        ]);
        for step in [1, 7, bytes.len()] {
            let (blocks, data, rewritten) = rewrite(&bytes, step);
            assert_eq!(rewritten, 2);
            assert_eq!(data, vec![b"hello".to_vec(), b"hello".to_vec()]);
            for block in &blocks {
                let expected: HeaderList = request(b"localhost")
                    .into_iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                assert_eq!(block, &expected);
            }
        }
    }

    #[test]
    fn a_valid_authority_is_left_alone() {
        let bytes = client_bytes(&[request(b"daemon.invalid:80")]);
        let (blocks, _, rewritten) = rewrite(&bytes, 3);
        assert_eq!(rewritten, 0);
        assert!(blocks[0].contains(&(b":authority".to_vec(), b"daemon.invalid:80".to_vec())));
    }

    #[test]
    fn a_percent_encoded_path_is_rewritten_too() {
        let bytes = client_bytes(&[request(b"%2Ftmp%2Fd.sock")]);
        let (blocks, _, rewritten) = rewrite(&bytes, 5);
        assert_eq!(rewritten, 1);
        assert!(blocks[0].contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[test]
    fn a_large_block_is_split_into_continuation_frames() {
        let big = vec![b'v'; 40_000];
        let mut headers = request(b"/tmp/x.sock");
        headers.push((b"x-big", &big));
        let bytes = client_bytes(&[headers]);
        let mut rewriter = Rewriter::default();
        let mut input = BytesMut::from(&bytes[..]);
        let mut out = VecDeque::new();
        rewriter.feed(&mut input, &mut out).unwrap();
        let all: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let (mut at, mut kinds, mut block) = (PREFACE.len(), Vec::new(), Vec::new());
        while at < all.len() {
            let len = u32::from_be_bytes([0, all[at], all[at + 1], all[at + 2]]) as usize;
            assert!(len <= OUT_FRAME_PAYLOAD);
            kinds.push((all[at + 3], all[at + 4] & FLAG_END_HEADERS != 0));
            if matches!(all[at + 3], FRAME_HEADERS | FRAME_CONTINUATION) {
                block.extend_from_slice(&all[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len]);
            }
            at += FRAME_HEADER_LEN + len;
        }
        assert_eq!(
            kinds,
            [
                (0x4, false),
                (FRAME_HEADERS, false),
                (FRAME_CONTINUATION, false),
                (FRAME_CONTINUATION, true),
                (0x0, false)
            ]
        );
        let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert!(decoded.contains(&(b"x-big".to_vec(), big)));
        assert!(decoded.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[test]
    fn bytes_that_are_not_http2_pass_through_untouched() {
        let mut rewriter = Rewriter::default();
        let mut input = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        let mut out = VecDeque::new();
        rewriter.feed(&mut input, &mut out).unwrap();
        let all: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn broken_hpack_closes_the_connection_with_a_reason() {
        let mut bytes = PREFACE.to_vec();
        let mut header = BytesMut::new();
        // Indexed field 126: not in any table.
        frame_header(
            &mut header,
            1,
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            [0, 0, 0, 1],
        );
        bytes.extend_from_slice(&header);
        bytes.push(0x80 | 126);
        let mut input = BytesMut::from(&bytes[..]);
        let err = Rewriter::default()
            .feed(&mut input, &mut VecDeque::new())
            .unwrap_err();
        assert!(err.to_string().starts_with("HPACK:"), "{err}");
    }

    #[test]
    fn integers_use_the_prefix_and_continuation_bytes() {
        let mut out = Vec::new();
        encode_integer(10, 5, 0, &mut out);
        encode_integer(1337, 5, 0, &mut out);
        // RFC 7541 C.1.1 and C.1.2.
        assert_eq!(out, [10, 31, 154, 10]);
    }
}
