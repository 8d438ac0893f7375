//! What a session sends, as WebSocket frames written straight into one outgoing buffer.
//!
//! A data frame is its header and the envelope around the shared body, written once into the
//! buffer the socket write takes (no intermediate message or frame per delivery). Server frames
//! are unmasked, so the header is two to ten bytes. Frames and bytes are counted per kind here
//! and added to the shared counters once per write.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use fanout::Item;
use protocol::MessageType;

/// Frame kinds counted per batch (`relay_downstream_messages_sent_total{type}` and bytes).
pub(crate) const KINDS: [&str; 10] = [
    "orderbook_snapshot",
    "orderbook_delta",
    "ticker",
    "trade",
    "fill",
    "user_order",
    "market_position",
    "lifecycle",
    "other",
    "reply",
];
const REPLY: usize = 9;

/// Record the relay latency of one frame in this many (the histogram is a distribution; every
/// frame would cost an atomic append each).
const LATENCY_SAMPLE: u64 = 8;

const OP_TEXT: u8 = 0x1;
const OP_PING: u8 = 0x9;

fn kind_index(kind: &MessageType) -> usize {
    match kind {
        MessageType::OrderbookSnapshot => 0,
        MessageType::OrderbookDelta => 1,
        MessageType::Ticker => 2,
        MessageType::Trade => 3,
        MessageType::Fill => 4,
        MessageType::UserOrder => 5,
        MessageType::MarketPosition => 6,
        MessageType::MarketLifecycleV2
        | MessageType::EventLifecycle
        | MessageType::EventFeeUpdate => 7,
        _ => 8,
    }
}

/// The frames a session has written and not yet handed to the socket.
#[derive(Default)]
pub(crate) struct Out {
    /// Released after each write ([`Out::take`]): an idle client keeps no buffer.
    buf: BytesMut,
    /// Frames and bytes written per kind since the counters were last taken.
    sent: [(u64, u64); KINDS.len()],
    frames: u64,
    /// The upstream arrival time of the sampled frame of the current batch.
    latency_sample: Option<Instant>,
}

/// Counts to add to the shared metrics after a write.
pub(crate) struct Written {
    pub sent: [(u64, u64); KINDS.len()],
    pub latency_sample: Option<Instant>,
}

impl Out {
    /// One data frame: `{"type":..,"sid":..,"seq":..,"msg":<body>}`.
    pub fn data(&mut self, item: &Item, sid: u64, seq: Option<u64>, yes: bool) {
        let len = item.envelope_len(sid, seq, yes);
        self.header(OP_TEXT, len);
        let start = self.buf.len();
        item.write_envelope(&mut self.buf, sid, seq, yes);
        debug_assert_eq!(self.buf.len() - start, len);
        self.count(kind_index(item.kind()), len);
        self.frames += 1;
        if self.frames % LATENCY_SAMPLE == 0 && self.latency_sample.is_none() {
            self.latency_sample = item.received_at();
        }
    }

    /// One private data frame with `"relay_position"` added to its envelope (low-rate channels:
    /// built aside, then copied).
    pub fn stamped(
        &mut self,
        kind: &MessageType,
        sid: u64,
        seq: Option<u64>,
        body: &[u8],
        position: &crate::resume::Position,
    ) {
        let mut frame = BytesMut::new();
        fanout::write_envelope(&mut frame, kind.as_str(), sid, seq, body);
        crate::resume::stamp(&mut frame, position);
        self.header(OP_TEXT, frame.len());
        self.buf.put_slice(&frame);
        self.count(kind_index(kind), frame.len());
        self.frames += 1;
    }

    /// One reply or event (valid JSON text already).
    pub fn text(&mut self, frame: &str) {
        self.header(OP_TEXT, frame.len());
        self.buf.put_slice(frame.as_bytes());
        self.count(REPLY, frame.len());
    }

    /// A server ping.
    pub fn ping(&mut self) {
        const PAYLOAD: &[u8] = b"relay";
        self.header(OP_PING, PAYLOAD.len());
        self.buf.put_slice(PAYLOAD);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes to write, leaving an empty buffer with no capacity.
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }

    /// The counts since the last call.
    pub fn written(&mut self) -> Written {
        Written {
            sent: std::mem::take(&mut self.sent),
            latency_sample: self.latency_sample.take(),
        }
    }

    fn count(&mut self, kind: usize, len: usize) {
        let counter = &mut self.sent[kind];
        counter.0 += 1;
        counter.1 += len as u64;
    }

    /// A final, unmasked frame header with the shortest length encoding (RFC 6455, 5.2).
    fn header(&mut self, opcode: u8, len: usize) {
        self.buf.reserve(10 + len);
        self.buf.put_u8(0x80 | opcode);
        if len < 126 {
            self.buf.put_u8(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            self.buf.put_u8(126);
            self.buf.put_u16(len);
        } else {
            self.buf.put_u8(127);
            self.buf.put_u64(len as u64);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Parses the frames of `bytes` as a client would: (opcode byte, payload).
    pub(crate) fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut cursor = std::io::Cursor::new(bytes);
        while (cursor.position() as usize) < bytes.len() {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            let at = cursor.position() as usize;
            out.push((
                u8::from(header.opcode),
                bytes[at..at + len as usize].to_vec(),
            ));
            cursor.set_position((at + len as usize) as u64);
        }
        out
    }

    #[test]
    fn frames_have_the_shortest_header_and_are_counted() {
        let mut out = Out::default();
        for len in [0, 125, 126, 65_535, 65_536] {
            out.text(&"x".repeat(len));
        }
        out.ping();
        let bytes = out.take();
        assert_eq!(&bytes[..2], [0x81, 0]);
        let got = frames(&bytes);
        let lens: Vec<usize> = got.iter().map(|f| f.1.len()).collect();
        assert_eq!(lens, [0, 125, 126, 65_535, 65_536, 5]);
        assert_eq!(got[5], (0x9, b"relay".to_vec()));
        // 2-byte headers up to 125, 4 up to 65,535, 10 beyond.
        assert_eq!(
            bytes.len(),
            2 + 2 + 125 + 4 + 126 + 4 + 65_535 + 10 + 65_536 + 2 + 5
        );
        let written = out.written();
        assert_eq!(written.sent[REPLY], (5, 125 + 126 + 65_535 + 65_536));
        assert!(out.is_empty() && out.buf.capacity() == 0);
    }
}
