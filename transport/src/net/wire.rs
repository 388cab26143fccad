//! Messages to and from zenoh payloads without copying frames through the serialiser.
//!
//! A delivery goes out as its envelope head followed by its detached buffers
//! ([`vidmesh_protocol::encode_detached`]), appended to the zenoh payload by reference, so a
//! raw 1080p frame is not copied on its way into zenoh. On the way in, zenoh hands over a
//! payload that may be in pieces (a large message arrives as the fragments it was cut into):
//! the head is read out (small), and each buffer is either a view of the piece that holds it
//! or, when it spans pieces, gathered once into a recycled buffer. Before this, a raw frame
//! was copied three times into freshly allocated buffers, each faulted in page by page
//! (docs/BENCHMARKS.md, "Transport").

use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use vidmesh_protocol::envelope::HEADER_LEN;
use vidmesh_protocol::{
    attach_buffers, decode_body, decode_header, DataMessage, DecodeError, Detached, Envelope,
    Limits,
};
use zenoh::bytes::ZBytes;

/// The zenoh payload of an encoded message: the head, then its buffers by reference.
pub(crate) fn to_zbytes(message: Detached) -> ZBytes {
    if message.buffers.is_empty() {
        return ZBytes::from(message.head);
    }
    let mut writer = ZBytes::writer();
    writer.append(ZBytes::from(message.head));
    for buffer in message.buffers {
        writer.append(ZBytes::from(buffer));
    }
    writer.finish()
}

/// Decodes one message from a zenoh payload; see the module comment for what is copied.
pub(crate) fn from_zbytes(payload: &ZBytes, limits: &Limits) -> Result<Envelope, DecodeError> {
    let (mut envelope, tail) = head_from_zbytes(payload, limits)?;
    if let (Some(tail), Some(data)) = (tail, envelope.data_mut()) {
        tail.attach_to(data)?;
    }
    Ok(envelope)
}

/// The detached buffers of a received message, not yet cut out of its payload: a receiver
/// checks and sorts messages on zenoh's thread and leaves gathering a frame to the thread
/// that takes it, so that the network thread is never busy copying frames.
pub(crate) struct Tail {
    payload: ZBytes,
    offset: usize,
    lengths: Vec<u64>,
}

impl Tail {
    /// Puts the buffers into the data message they were detached from.
    pub(crate) fn attach_to(self, message: &mut DataMessage) -> Result<(), DecodeError> {
        let mut pieces = Pieces::after(&self.payload, self.offset);
        // Each length is within the payload: decode_body summed them against it.
        let buffers = self
            .lengths
            .iter()
            .map(|len| pieces.take(*len as usize))
            .collect();
        attach_buffers(message, buffers)
    }
}

/// Decodes the head of a message (everything but its detached buffers) and checks that the
/// buffers it lists are exactly what follows.
pub(crate) fn head_from_zbytes(
    payload: &ZBytes,
    limits: &Limits,
) -> Result<(Envelope, Option<Tail>), DecodeError> {
    let total = payload.len();
    let mut reader = payload.reader();
    let mut fixed = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut fixed)
        .map_err(|_| DecodeError::Truncated {
            needed: HEADER_LEN,
            got: total,
        })?;
    let header = decode_header(&fixed, limits)?;
    header.check_total(total)?;
    let head_len = HEADER_LEN + header.body_len;
    let mut body = vec![0u8; header.body_len];
    reader
        .read_exact(&mut body)
        .map_err(|_| DecodeError::Truncated {
            needed: head_len,
            got: total,
        })?;
    let (envelope, lengths) = decode_body(&header, &body, total - head_len)?;
    let tail = header.detached.then(|| Tail {
        payload: payload.clone(),
        offset: head_len,
        lengths,
    });
    Ok((envelope, tail))
}

/// Walks the pieces of a payload, cutting buffers out of it in order.
struct Pieces<'a> {
    payload: &'a ZBytes,
    slices: Vec<&'a [u8]>,
    /// The piece the next buffer starts in, and where in it.
    index: usize,
    offset: usize,
}

impl<'a> Pieces<'a> {
    /// Positioned `skip` bytes into the payload.
    fn after(payload: &'a ZBytes, skip: usize) -> Self {
        let mut pieces = Self {
            payload,
            slices: payload.slices().collect(),
            index: 0,
            offset: 0,
        };
        pieces.advance(skip);
        pieces
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(slice) = self.slices.get(self.index) {
            let left = slice.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.index += 1;
            self.offset = 0;
        }
    }

    /// The next `len` bytes: a view of the payload when one piece holds them, else gathered.
    fn take(&mut self, len: usize) -> Bytes {
        if len == 0 {
            return Bytes::new();
        }
        let start = (self.index, self.offset);
        let within = self
            .slices
            .get(self.index)
            .is_some_and(|slice| slice.len() - self.offset >= len);
        if within {
            self.advance(len);
            return Bytes::from_owner(PieceOf {
                payload: self.payload.clone(),
                index: start.0,
                range: start.1..start.1 + len,
            });
        }
        let mut gathered = GatherPool::global().take(len);
        let mut left = len;
        while left > 0 {
            let Some(slice) = self.slices.get(self.index) else {
                break;
            };
            let piece = &slice[self.offset..slice.len().min(self.offset + left)];
            gathered.buf.extend_from_slice(piece);
            left -= piece.len();
            self.advance(piece.len());
        }
        Bytes::from_owner(gathered)
    }
}

/// A range of one piece of a received payload; holding it keeps that piece alive.
struct PieceOf {
    payload: ZBytes,
    index: usize,
    range: Range<usize>,
}

impl AsRef<[u8]> for PieceOf {
    fn as_ref(&self) -> &[u8] {
        self.payload
            .slices()
            .nth(self.index)
            .and_then(|slice| slice.get(self.range.clone()))
            .unwrap_or(&[])
    }
}

/// Buffers that gathered frames reuse once the stage has dropped them, so that a frame
/// copied out of its fragments lands in memory that is already mapped.
struct GatherPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

/// How many bytes of idle buffers the pool keeps at most (a few 4K RGB frames).
const GATHER_POOL_BYTES: usize = 128 << 20;

impl GatherPool {
    fn global() -> &'static Arc<GatherPool> {
        static POOL: OnceLock<Arc<GatherPool>> = OnceLock::new();
        POOL.get_or_init(|| {
            Arc::new(GatherPool {
                idle: Mutex::default(),
            })
        })
    }

    /// An empty buffer with room for `len` bytes.
    fn take(self: &Arc<Self>, len: usize) -> Gathered {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter()
                .position(|b| b.capacity() >= len && b.capacity() <= len.saturating_mul(2))
                .map(|i| idle.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(len));
        buf.clear();
        Gathered {
            buf,
            pool: Arc::downgrade(self),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= GATHER_POOL_BYTES {
            idle.push(buf);
        } else if let Some(smallest) = idle
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
        {
            // Newer sizes win: a stream that changed resolution should not pin the old ones.
            if idle[smallest].capacity() < buf.capacity()
                && held - idle[smallest].capacity() + buf.capacity() <= GATHER_POOL_BYTES
            {
                idle[smallest] = buf;
            }
        }
    }
}

/// A gathered buffer, returned to its pool when the last `Bytes` over it is dropped.
struct Gathered {
    buf: Vec<u8>,
    pool: std::sync::Weak<GatherPool>,
}

impl AsRef<[u8]> for Gathered {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{
        encode, encode_detached, Batch, FrameMeta, ImageLayout, PayloadRef, PixelFormat,
    };

    fn frame_batch(bytes: usize) -> Envelope {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, (bytes / 3) as u32, 1);
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        Envelope::Data(DataMessage::Batch(Batch {
            frames: vec![FrameMeta {
                source_id: 1,
                frame_num: 9,
                payload: PayloadRef::Inline {
                    layout,
                    data: Bytes::from(data),
                },
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    /// The same payload as zenoh might deliver it, cut into pieces of `piece` bytes.
    fn in_pieces(wire: &[u8], piece: usize) -> ZBytes {
        let mut writer = ZBytes::writer();
        for chunk in wire.chunks(piece) {
            writer.append(ZBytes::from(chunk.to_vec()));
        }
        writer.finish()
    }

    fn contiguous(payload: &ZBytes) -> Vec<u8> {
        payload.to_bytes().into_owned()
    }

    #[test]
    fn a_frame_comes_back_whole_however_the_payload_is_cut() {
        let message = frame_batch(9_999);
        let wire = contiguous(&to_zbytes(encode_detached(message.clone()).unwrap()));
        for piece in [1, 7, 64, 4096, 9_999, 20_000] {
            let decoded = from_zbytes(&in_pieces(&wire, piece), &Limits::default()).unwrap();
            assert_eq!(decoded, message, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_buffer_inside_one_piece_is_not_copied() {
        let message = frame_batch(4095);
        let payload = to_zbytes(encode_detached(message).unwrap());
        let pixels = payload.slices().last().unwrap().as_ptr();
        let Envelope::Data(DataMessage::Batch(batch)) =
            from_zbytes(&payload, &Limits::default()).unwrap()
        else {
            panic!("not a batch");
        };
        let PayloadRef::Inline { data, .. } = &batch.frames[0].payload else {
            panic!("not inline");
        };
        assert_eq!(data.as_ptr(), pixels);
    }

    #[test]
    fn inline_messages_still_decode_and_damaged_ones_are_clean_errors() {
        let message = frame_batch(99);
        let inline = encode(&message).unwrap();
        assert_eq!(
            from_zbytes(&in_pieces(&inline, 13), &Limits::default()).unwrap(),
            message
        );
        let wire = contiguous(&to_zbytes(encode_detached(message).unwrap()));
        for cut in 0..wire.len() {
            assert!(from_zbytes(&in_pieces(&wire[..cut], 5), &Limits::default()).is_err());
        }
        let mut longer = wire.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            from_zbytes(&in_pieces(&longer, 50), &Limits::default()).unwrap_err(),
            DecodeError::DetachedMismatch { .. }
        ));
    }

    #[test]
    fn gathered_buffers_are_reused_once_dropped() {
        let pool = Arc::new(GatherPool {
            idle: Mutex::default(),
        });
        let first = pool.take(1000);
        let address = first.buf.as_ptr();
        drop(Bytes::from_owner(first));
        assert_eq!(pool.take(900).buf.as_ptr(), address);
        // Far smaller requests do not pin a large buffer.
        let large = pool.take(1 << 20);
        drop(large);
        assert!(pool.take(10).buf.capacity() < 1 << 20);
    }
}
