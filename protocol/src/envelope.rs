//! The versioned binary envelope every message travels in between processes and hosts.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"VMSH"
//! 4       2     protocol version, little endian
//! 6       1     message kind
//! 7       1     flags (reserved, must be 0)
//! 8       4     body length in bytes, little endian
//! 12      n     body: postcard encoding of the kind's message type
//! ```
//!
//! The body format is postcard (see docs/DECISIONS.md): compact, stable, serde-based, and its
//! decoder reads lengths against the remaining input, so a forged length cannot make it allocate
//! more than the input holds. The envelope adds its own body limit on top of that.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::link::{Announce, Delivery, Feedback};
use crate::stage_to_stage::DataMessage;
use crate::PROTOCOL_VERSION;

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = *b"VMSH";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 12;

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
    #[error("reserved flags must be 0, found {0:#04x}")]
    BadFlags(u8),
    #[error("body length {len} exceeds the limit of {limit} bytes")]
    BodyTooLarge { len: usize, limit: usize },
    #[error("{extra} unexpected bytes after the body")]
    TrailingBytes { extra: usize },
    #[error("malformed {kind:?} body: {reason}")]
    MalformedBody { kind: MessageKind, reason: String },
}

/// Why a message could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("body of {len} bytes does not fit the 32-bit length field")]
    TooLarge { len: usize },
    #[error("could not serialise body: {0}")]
    Serialize(#[from] postcard::Error),
}

/// Encodes a message into a fresh buffer.
pub fn encode(message: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    match message {
        Envelope::Data(m) => append_body(&mut out, m)?,
        Envelope::Delivery(m) => append_body(&mut out, m)?,
        Envelope::Feedback(m) => append_body(&mut out, m)?,
        Envelope::Announce(m) => append_body(&mut out, m)?,
    }
    let body_len = out.len() - HEADER_LEN;
    let body_len_u32 =
        u32::try_from(body_len).map_err(|_| EncodeError::TooLarge { len: body_len })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6] = message.kind() as u8;
    out[7] = 0;
    out[8..12].copy_from_slice(&body_len_u32.to_le_bytes());
    Ok(out)
}

fn append_body<T: Serialize>(out: &mut Vec<u8>, body: &T) -> Result<(), EncodeError> {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(body, taken)?;
    Ok(())
}

/// Decodes one complete message. `bytes` must hold exactly one envelope.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
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
    if bytes[7] != 0 {
        return Err(DecodeError::BadFlags(bytes[7]));
    }
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if body_len > limits.max_body_len {
        return Err(DecodeError::BodyTooLarge {
            len: body_len,
            limit: limits.max_body_len,
        });
    }
    let available = bytes.len() - HEADER_LEN;
    if available < body_len {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN + body_len,
            got: bytes.len(),
        });
    }
    if available > body_len {
        return Err(DecodeError::TrailingBytes {
            extra: available - body_len,
        });
    }
    let body = &bytes[HEADER_LEN..];
    match kind {
        MessageKind::Data => decode_body(kind, body).map(Envelope::Data),
        MessageKind::Delivery => decode_body(kind, body).map(Envelope::Delivery),
        MessageKind::Feedback => decode_body(kind, body).map(Envelope::Feedback),
        MessageKind::Announce => decode_body(kind, body).map(Envelope::Announce),
    }
}

fn decode_body<T: DeserializeOwned>(kind: MessageKind, body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::MalformedBody {
            kind,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::MalformedBody {
            kind,
            reason: format!("{} bytes left over after the message", rest.len()),
        });
    }
    Ok(value)
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
        b[7] = 1;
        assert_eq!(
            decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::BadFlags(1)
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::TrailingBytes { extra: 1 }
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic xorshift sweep complements the cargo-fuzz target in CI.
        let good = encode(&Envelope::Data(DataMessage::Batch(sample_batch()))).unwrap();
        let mut state = 0x9e3779b97f4a7c15u64;
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
