//! The frame codec: a 4-byte little-endian length prefix, then an rkyv archive.
//!
//! Pure: no I/O. Decoding always validates the archive (bytecheck) before it is read;
//! there is no unchecked access anywhere in Shoal.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::ProtocolError;

/// Bytes in the length prefix.
pub const HEADER_BYTES: usize = 4;

/// The hard limit on one frame's payload. Anything larger is refused before it is read.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// QUIC application error codes a stream is reset or stopped with.
pub mod codes {
    pub const OK: u32 = 0;
    pub const OVERSIZED: u32 = 0x10;
    pub const MALFORMED: u32 = 0x11;
    pub const TRUNCATED: u32 = 0x12;
    pub const VERSION: u32 = 0x13;
    pub const PROTOCOL: u32 = 0x14;
    pub const REFUSED: u32 = 0x15;
}

/// A payload buffer aligned for rkyv.
pub type FrameBuf = AlignedVec<16>;

/// Types that can be written to the wire.
pub trait Encode: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}
impl<T> Encode for T where T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}

/// Serializes `msg` to its archived bytes (no length prefix).
pub fn to_payload<T: Encode>(msg: &T) -> Result<AlignedVec, ProtocolError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::Oversized { len: bytes.len(), max: MAX_FRAME_BYTES });
    }
    Ok(bytes)
}

/// Serializes `msg` to its archived bytes with no size limit: for what is stored (the
/// coordinator's state checkpoint, which grows with the cluster), never for a frame.
pub fn to_stored_bytes<T: Encode>(msg: &T) -> Result<AlignedVec, ProtocolError> {
    rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Serializes `msg` into a whole frame: length prefix followed by the archive.
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let payload = to_payload(msg)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the payload length from a frame header, refusing anything over `max`.
pub fn payload_len(header: [u8; HEADER_BYTES], max: usize) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(ProtocolError::Oversized { len, max });
    }
    if len == 0 {
        return Err(ProtocolError::Malformed("empty frame".into()));
    }
    Ok(len)
}

/// Validates and deserializes an archived payload that is already aligned.
pub fn decode_aligned<T>(payload: &[u8]) -> Result<T, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Validates and deserializes a payload from any byte slice (copies it to align it).
pub fn decode<T>(payload: &[u8]) -> Result<T, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut buf = FrameBuf::with_capacity(payload.len());
    buf.extend_from_slice(payload);
    decode_aligned(&buf)
}

/// Splits one whole frame off the front of `bytes` and decodes it. Returns the message and
/// the number of bytes consumed, `Ok(None)` if more bytes are needed.
pub fn decode_frame<T>(bytes: &[u8], max: usize) -> Result<Option<(T, usize)>, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_BYTES];
    h.copy_from_slice(header);
    let len = payload_len(h, max)?;
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Ok(None);
    };
    Ok(Some((decode(payload)?, HEADER_BYTES + len)))
}
