//! The versioned binary envelope every message travels in between processes and hosts.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"VMSH"
//! 4       2     protocol version, little endian
//! 6       1     message kind
//! 7       1     flags: bit 0 = detached buffers follow the body; the other bits must be 0
//! 8       4     body length in bytes, little endian
//! 12      n     body: postcard encoding of the kind's message type
//! 12+n    ...   detached buffers, back to back (only with flag bit 0)
//! ```
//!
//! Detached buffers ([`encode_detached`]) keep frame pixels, tensors and encoded frames out of
//! the body: the body carries each of them empty, followed by the postcard list of their
//! lengths, and the buffers themselves follow untouched. A transport can then hand the
//! producer's buffers to the wire and the receiver's buffers to the stage without copying a
//! frame through a serialiser (issue 8: three 6 MB copies per 1080p frame before).
//!
//! The body format is postcard (see docs/DECISIONS.md): compact, stable, serde-based, and its
//! decoder reads lengths against the remaining input, so a forged length cannot make it allocate
//! more than the input holds. The envelope adds its own body limit on top of that.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::link::{Announce, Delivery, Feedback};
use crate::stage_to_stage::DataMessage;
use crate::PROTOCOL_VERSION;

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = *b"VMSH";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Header flag: the message's large buffers follow the body (see [`encode_detached`]).
pub const FLAG_DETACHED: u8 = 0x01;

/// Message kinds; the numeric value is part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// [`DataMessage`], stage to stage.
    Data = 1,
    /// [`Delivery`]: a numbered data message from one stage process to another.
    Delivery = 2,
    /// [`Feedback`]: credits, acknowledgements and slot releases back to a producer.
    Feedback = 3,
    /// [`Announce`]: heartbeats and lifecycle notices.
    Announce = 4,
}

impl MessageKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(MessageKind::Data),
            2 => Some(MessageKind::Delivery),
            3 => Some(MessageKind::Feedback),
            4 => Some(MessageKind::Announce),
            _ => None,
        }
    }
}

/// A decoded message of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    Data(DataMessage),
    Delivery(Delivery),
    Feedback(Feedback),
    Announce(Announce),
}

impl Envelope {
    /// The data message inside, for kinds that carry one.
    pub fn data_mut(&mut self) -> Option<&mut DataMessage> {
        match self {
            Envelope::Data(m) => Some(m),
            Envelope::Delivery(d) => Some(&mut d.message),
            Envelope::Feedback(_) | Envelope::Announce(_) => None,
        }
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            Envelope::Data(_) => MessageKind::Data,
            Envelope::Delivery(_) => MessageKind::Delivery,
            Envelope::Feedback(_) => MessageKind::Feedback,
            Envelope::Announce(_) => MessageKind::Announce,
        }
    }
}

/// Bounds applied while decoding untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body accepted. Raw 4K RGB frames inline are ~25 MB; the default leaves room for a
    /// batch of a few of them.
    pub max_body_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_len: 256 * 1024 * 1024,
        }
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated message: need at least {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error(
        "not a vidmesh message: magic bytes are {found:02x?}, expected {MAGIC:02x?} (\"VMSH\")"
    )]
    BadMagic { found: [u8; 4] },
    #[error("message uses protocol version {found}, this build speaks version {supported}: upgrade this side")]
    NewerVersion { found: u16, supported: u16 },
    #[error("message uses protocol version {found}, which this build (version {supported}) no longer reads")]
    OlderVersion { found: u16, supported: u16 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("reserved flag bits must be 0, found flags {0:#04x}")]
    BadFlags(u8),
    #[error("body length {len} exceeds the limit of {limit} bytes")]
    BodyTooLarge { len: usize, limit: usize },
    #[error("{extra} unexpected bytes after the body")]
    TrailingBytes { extra: usize },
    #[error("malformed {kind:?} body: {reason}")]
    MalformedBody { kind: MessageKind, reason: String },
    #[error("the message has {places} places for buffers but {buffers} were detached")]
    DetachedCount { places: usize, buffers: usize },
    #[error("the body lists {listed} detached buffers of {bytes} bytes in all, but {available} bytes follow it")]
    DetachedMismatch {
        listed: usize,
        bytes: u64,
        available: u64,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("body of {len} bytes does not fit the 32-bit length field")]
    TooLarge { len: usize },
    #[error("could not serialise body: {0}")]
    Serialize(#[from] postcard::Error),
}

/// Encodes a message into a fresh buffer, every byte inside the body.
pub fn encode(message: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    append_message(&mut out, message)?;
    write_header(&mut out, message.kind(), 0)?;
    Ok(out)
}

/// A message encoded with its large buffers detached: send `head`, then every buffer of
/// `buffers` in order, as one message.
#[derive(Debug, Clone)]
pub struct Detached {
    /// Header and body.
    pub head: Vec<u8>,
    /// The buffers the body lists, shared with the message they were taken from.
    pub buffers: Vec<Bytes>,
}

impl Detached {
    /// Length of the whole message on the wire.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.buffers.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Encodes a message with its frame pixels, tensors and encoded frames detached from the
/// body. Messages without such buffers (feedback, announcements, end-of-stream notices)
/// encode exactly as [`encode`] does.
pub fn encode_detached(mut message: Envelope) -> Result<Detached, EncodeError> {
    let buffers: Vec<Bytes> = message
        .data_mut()
        .map(|data| {
            let places = data.large_buffers_mut().into_iter();
            places.map(std::mem::take).collect()
        })
        .unwrap_or_default();
    if buffers.is_empty() {
        return Ok(Detached {
            head: encode(&message)?,
            buffers,
        });
    }
    let lengths: Vec<u64> = buffers.iter().map(|b| b.len() as u64).collect();
    let mut head = vec![0u8; HEADER_LEN];
    append_message(&mut head, &message)?;
    append_body(&mut head, &lengths)?;
    write_header(&mut head, message.kind(), FLAG_DETACHED)?;
    Ok(Detached { head, buffers })
}

fn write_header(out: &mut [u8], kind: MessageKind, flags: u8) -> Result<(), EncodeError> {
    let body_len = out.len() - HEADER_LEN;
    let body_len_u32 =
        u32::try_from(body_len).map_err(|_| EncodeError::TooLarge { len: body_len })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6] = kind as u8;
    out[7] = flags;
    out[8..12].copy_from_slice(&body_len_u32.to_le_bytes());
    Ok(())
}

fn append_message(out: &mut Vec<u8>, message: &Envelope) -> Result<(), EncodeError> {
    match message {
        Envelope::Data(m) => append_body(out, m),
        Envelope::Delivery(m) => append_body(out, m),
        Envelope::Feedback(m) => append_body(out, m),
        Envelope::Announce(m) => append_body(out, m),
    }
}

fn append_body<T: Serialize>(out: &mut Vec<u8>, body: &T) -> Result<(), EncodeError> {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(body, taken)?;
    Ok(())
}

/// What the fixed header of a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: MessageKind,
    /// Detached buffers follow the body.
    pub detached: bool,
    pub body_len: usize,
}

impl Header {
    /// Checks that a message of `total` bytes holds the body this header announces, followed
    /// by nothing unless its buffers are detached.
    pub fn check_total(&self, total: usize) -> Result<(), DecodeError> {
        let head_len = HEADER_LEN + self.body_len;
        if total < head_len {
            return Err(DecodeError::Truncated {
                needed: head_len,
                got: total,
            });
        }
        if total > head_len && !self.detached {
            return Err(DecodeError::TrailingBytes {
                extra: total - head_len,
            });
        }
        Ok(())
    }
}

/// Checks the fixed header at the start of `bytes` (at least [`HEADER_LEN`] of them).
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    }
    let magic: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > PROTOCOL_VERSION {
        return Err(DecodeError::NewerVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    if version < PROTOCOL_VERSION {
        return Err(DecodeError::OlderVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = MessageKind::from_u8(bytes[6]).ok_or(DecodeError::UnknownKind(bytes[6]))?;
    if bytes[7] & !FLAG_DETACHED != 0 {
        return Err(DecodeError::BadFlags(bytes[7]));
    }
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if body_len > limits.max_body_len {
        return Err(DecodeError::BodyTooLarge {
            len: body_len,
            limit: limits.max_body_len,
        });
    }
    Ok(Header {
        kind,
        detached: bytes[7] & FLAG_DETACHED != 0,
        body_len,
    })
}

/// Decodes the body that followed `header`, `after` being the number of bytes that follow
/// the body. The message comes back with its detached buffers empty, and their lengths in
/// order, checked to fill exactly those bytes: give the buffers to [`attach_buffers`].
pub fn decode_body(
    header: &Header,
    body: &[u8],
    after: usize,
) -> Result<(Envelope, Vec<u64>), DecodeError> {
    let kind = header.kind;
    let (mut envelope, rest) = match kind {
        MessageKind::Data => take_body(kind, body).map(|(m, r)| (Envelope::Data(m), r))?,
        MessageKind::Delivery => take_body(kind, body).map(|(m, r)| (Envelope::Delivery(m), r))?,
        MessageKind::Feedback => take_body(kind, body).map(|(m, r)| (Envelope::Feedback(m), r))?,
        MessageKind::Announce => take_body(kind, body).map(|(m, r)| (Envelope::Announce(m), r))?,
    };
    let (lengths, rest) = if header.detached {
        take_body::<Vec<u64>>(kind, rest)?
    } else {
        (Vec::new(), rest)
    };
    if !rest.is_empty() {
        return Err(DecodeError::MalformedBody {
            kind,
            reason: format!("{} bytes left over after the message", rest.len()),
        });
    }
    if header.detached {
        let places = envelope
            .data_mut()
            .map_or(0, |m| m.large_buffers_mut().len());
        if places != lengths.len() {
            return Err(DecodeError::DetachedCount {
                places,
                buffers: lengths.len(),
            });
        }
        check_detached_len(&lengths, after as u64)?;
    }
    Ok((envelope, lengths))
}

/// Puts the detached buffers back into the data message of an envelope from
/// [`decode_body`], in the order their lengths were listed.
pub fn attach_buffers(message: &mut DataMessage, buffers: Vec<Bytes>) -> Result<(), DecodeError> {
    let places = message.large_buffers_mut();
    if places.len() != buffers.len() {
        return Err(DecodeError::DetachedCount {
            places: places.len(),
            buffers: buffers.len(),
        });
    }
    for (place, buffer) in places.into_iter().zip(buffers) {
        *place = buffer;
    }
    Ok(())
}

/// Decodes one complete message held in one slice: `bytes` must hold exactly one envelope
/// and, when its buffers are detached, exactly those buffers after it (copied out).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    let header = decode_header(bytes, limits)?;
    header.check_total(bytes.len())?;
    let (body, mut rest) = bytes[HEADER_LEN..].split_at(header.body_len);
    let (mut envelope, lengths) = decode_body(&header, body, rest.len())?;
    // decode_body lets only a detached data message list buffers.
    let Some(data) = envelope.data_mut().filter(|_| header.detached) else {
        return Ok(envelope);
    };
    let mut buffers = Vec::with_capacity(lengths.len());
    for len in lengths {
        // Within `rest`: decode_body summed them against it.
        let (buffer, tail) = rest.split_at(len as usize);
        buffers.push(Bytes::copy_from_slice(buffer));
        rest = tail;
    }
    attach_buffers(data, buffers)?;
    Ok(envelope)
}

/// Checks that the listed buffer lengths add up to exactly the `available` bytes after the
/// body, so that cutting them never reads past the input nor leaves bytes over.
fn check_detached_len(lengths: &[u64], available: u64) -> Result<(), DecodeError> {
    let total = lengths
        .iter()
        .try_fold(0u64, |sum, len| sum.checked_add(*len))
        .unwrap_or(u64::MAX);
    if total != available {
        return Err(DecodeError::DetachedMismatch {
            listed: lengths.len(),
            bytes: total,
            available,
        });
    }
    Ok(())
}

fn take_body<T: DeserializeOwned>(
    kind: MessageKind,
    body: &[u8],
) -> Result<(T, &[u8]), DecodeError> {
    postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::MalformedBody {
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::*;
    use crate::payload::{ImageLayout, PayloadRef, PixelFormat};
    use bytes::Bytes;

    fn sample_batch() -> Batch {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 4, 2);
        let object = ObjectMeta {
            component_id: 1,
            class_id: 0,
            label: "person".into(),
            confidence: 0.87,
            bbox: BBox::from_corners(1.0, 2.0, 3.0, 4.0),
            track_id: Some(7),
            tracker_confidence: Some(0.5),
            parent: None,
            classifiers: vec![ClassifierMeta {
                component_id: 2,
                labels: vec![LabelInfo {
                    class_id: 3,
                    label: "red".into(),
                    probability: 0.9,
                }],
            }],
            mask: Some(Mask {
                width: 2,
                height: 1,
                threshold: 0.5,
                data: vec![0.1, 0.9],
            }),
            user: vec![UserMeta {
                kind: "test/json".into(),
                data: Bytes::from_static(b"{}"),
            }],
        };
        Batch {
            batch_id: 42,
            frames: vec![FrameMeta {
                source_id: 3,
                source_name: "cam3".into(),
                frame_num: 1000,
                pts_ns: 33_333_333,
                duration_ns: 33_333_333,
                ntp_ns: Some(1_700_000_000_000_000_000),
                ingest_ns: 5,
                width: 4,
                height: 2,
                payload: PayloadRef::Inline {
                    layout,
                    data: Bytes::from(vec![9u8; 24]),
                },
                objects: vec![object],
                display: DisplayMeta {
                    rects: vec![DisplayRect {
                        border_width: 2,
                        ..Default::default()
                    }],
                    texts: vec![DisplayText {
                        text: "hi".into(),
                        ..Default::default()
                    }],
                    lines: vec![DisplayLine::default()],
                    circles: vec![DisplayCircle::default()],
                },
                user: vec![],
            }],
            tensors: vec![TensorMeta {
                name: "image".into(),
                dtype: DataType::F32,
                shape: vec![1, 1],
                layout: Some(TensorLayout::Nhwc),
                data: Bytes::from(vec![0u8; 4]),
                rows: vec![TensorRow::default()],
            }],
        }
    }

    #[test]
    fn batch_round_trips() {
        let msg = Envelope::Data(DataMessage::Batch(sample_batch()));
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), msg);
    }

    #[test]
    fn end_of_stream_round_trips() {
        let msg = Envelope::Data(DataMessage::EndOfStream(crate::StreamEnd {
            source_id: 1,
            source_name: "a".into(),
            frames: 7,
        }));
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), msg);
    }

    #[test]
    fn coalesced_feedback_round_trips() {
        let msg = Envelope::Feedback(crate::Feedback {
            from: crate::Instance {
                stage: "track".into(),
                replica: 1,
                epoch: 0xdead_beef,
            },
            producer_epoch: 0x1234_5678_9abc_def1,
            consumed: 1_000_000,
            window: 64,
            acks: (999_968..1_000_000).collect(),
            releases: vec![crate::SlotRelease {
                segment: "vidmesh-p-detect-0-track-1-0".into(),
                slot: 3,
                generation: 77,
            }],
        });
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), msg);
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let bytes = encode(&Envelope::Data(DataMessage::Batch(sample_batch()))).unwrap();
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn wrong_magic_is_named() {
        let mut bytes = encode(&Envelope::Data(DataMessage::Batch(Batch::default()))).unwrap();
        bytes[0] = b'X';
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::BadMagic { .. }));
        assert!(err.to_string().contains("not a vidmesh message"));
    }

    #[test]
    fn newer_version_names_both_versions() {
        let mut bytes = encode(&Envelope::Data(DataMessage::Batch(Batch::default()))).unwrap();
        bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::NewerVersion {
                found: PROTOCOL_VERSION + 1,
                supported: PROTOCOL_VERSION
            }
        );
        let text = err.to_string();
        assert!(
            text.contains(&(PROTOCOL_VERSION + 1).to_string())
                && text.contains(&PROTOCOL_VERSION.to_string())
        );
    }

    #[test]
    fn huge_length_field_is_rejected_before_allocating() {
        let mut bytes = encode(&Envelope::Data(DataMessage::Batch(Batch::default()))).unwrap();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::BodyTooLarge { .. }));
        // Within the limit but beyond the input: truncated, not an allocation.
        bytes[8..12].copy_from_slice(&(1024u32 * 1024).to_le_bytes());
        assert!(matches!(
            decode(&bytes, &Limits::default()).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
    }

    #[test]
    fn huge_inner_vector_length_is_a_malformed_body_not_an_allocation() {
        // A Batch body whose frame count claims u32::MAX entries: varint 0xffffffff0f.
        let mut body = vec![0u8]; // enum variant Batch
        body.push(0); // batch_id = 0
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.push(MessageKind::Data as u8);
        bytes.push(0);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::MalformedBody { .. }), "{err}");
    }

    #[test]
    fn unknown_kind_and_flags_and_trailing_bytes_are_rejected() {
        let good = encode(&Envelope::Data(DataMessage::Batch(Batch::default()))).unwrap();
        let mut b = good.clone();
        b[6] = 200;
        assert_eq!(
            decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::UnknownKind(200)
        );
        let mut b = good.clone();
        b[7] = 2;
        assert_eq!(
            decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::BadFlags(2)
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::TrailingBytes { extra: 1 }
        );
    }

    fn detached_wire(message: Envelope) -> Vec<u8> {
        let detached = encode_detached(message).unwrap();
        let mut wire = detached.head.clone();
        for buffer in &detached.buffers {
            wire.extend_from_slice(buffer);
        }
        assert_eq!(wire.len(), detached.wire_len());
        wire
    }

    #[test]
    fn detached_buffers_travel_after_the_body_and_come_back_in_place() {
        let msg = Envelope::Data(DataMessage::Batch(sample_batch()));
        let detached = encode_detached(msg.clone()).unwrap();
        // The frame's pixels and the tensor, shared with the message rather than copied.
        assert_eq!(detached.buffers.len(), 2);
        assert_eq!(detached.buffers[0], Bytes::from(vec![9u8; 24]));
        assert_eq!(detached.head[7], FLAG_DETACHED);
        assert!(detached.head.len() < encode(&msg).unwrap().len() - 24);
        assert_eq!(
            decode(&detached_wire(msg.clone()), &Limits::default()).unwrap(),
            msg
        );
    }

    #[test]
    fn a_message_without_buffers_encodes_detached_as_it_does_inline() {
        let end = Envelope::Data(DataMessage::EndOfStream(crate::StreamEnd {
            source_id: 1,
            source_name: "a".into(),
            frames: 7,
        }));
        let detached = encode_detached(end.clone()).unwrap();
        assert!(detached.buffers.is_empty());
        assert_eq!(detached.head, encode(&end).unwrap());
    }

    #[test]
    fn detached_buffers_that_do_not_add_up_are_a_clean_error() {
        let wire = detached_wire(Envelope::Data(DataMessage::Batch(sample_batch())));
        for cut in 0..wire.len() {
            assert!(
                decode(&wire[..cut], &Limits::default()).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer, &Limits::default()).unwrap_err(),
            DecodeError::DetachedMismatch { listed: 2, .. }
        ));
        // A detached message whose body lists fewer buffers than it has places for.
        let header = decode_header(&wire, &Limits::default()).unwrap();
        let (mut envelope, lengths) =
            decode_body(&header, &wire[HEADER_LEN..HEADER_LEN + header.body_len], 28).unwrap();
        assert_eq!(lengths, vec![24, 4]);
        let data = envelope.data_mut().unwrap();
        let err = attach_buffers(data, vec![Bytes::new()]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::DetachedCount {
                places: 2,
                buffers: 1
            }
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic xorshift sweep complements the cargo-fuzz target in CI.
        let inline = encode(&Envelope::Data(DataMessage::Batch(sample_batch()))).unwrap();
        let detached = detached_wire(Envelope::Data(DataMessage::Batch(sample_batch())));
        let mut state = 0x9e3779b97f4a7c15u64;
        for good in [inline, detached] {
            for _ in 0..20_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut b = good.clone();
                let pos = HEADER_LEN + (state as usize % (b.len() - HEADER_LEN));
                b[pos] = (state >> 32) as u8;
                let _ = decode(&b, &Limits::default());
            }
        }
    }
}
