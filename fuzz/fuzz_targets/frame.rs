//! The frame decoder on arbitrary bytes: a stream of length-prefixed rkyv frames, split and
//! validated exactly as a QUIC stream's reader does (`payload_len`, then `decode_aligned` on
//! a 16-byte-aligned buffer), for each frame type a stream carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::frame::{self, FrameBuf, HEADER_BYTES, MAX_FRAME_BYTES};
use shoal_protocol::{Hello, Request, Response};

/// Reads frames off `bytes` as `quic::read_frame` does: header, limit check, aligned payload.
fn read_frames<T>(mut bytes: &[u8])
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    while let Some(header) = bytes.get(..HEADER_BYTES) {
        let mut h = [0u8; HEADER_BYTES];
        h.copy_from_slice(header);
        let Ok(len) = frame::payload_len(h, MAX_FRAME_BYTES) else { return };
        let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else { return };
        let mut buf = FrameBuf::with_capacity(len);
        buf.extend_from_slice(payload);
        if frame::decode_aligned::<T>(&buf).is_err() {
            return;
        }
        bytes = &bytes[HEADER_BYTES + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    // The whole-frame splitter (`decode_frame`, which copies to align) for each type.
    if let Ok(Some((req, used))) = frame::decode_frame::<Request>(data, MAX_FRAME_BYTES) {
        assert!(used <= data.len());
        // A frame that decodes must encode again, to a frame that decodes.
        let again = frame::encode(&req).expect("re-encode a decoded request");
        assert!(frame::decode_frame::<Request>(&again, MAX_FRAME_BYTES).is_ok_and(|f| f.is_some()));
    }
    let _ = frame::decode_frame::<Response>(data, MAX_FRAME_BYTES);
    let _ = frame::decode_frame::<Hello>(data, MAX_FRAME_BYTES);
    // A stream: a Hello, then requests (server side) or responses (client side).
    read_frames::<Hello>(data);
    read_frames::<Request>(data);
    read_frames::<Response>(data);
    // A smaller limit, as a caller with a tighter budget passes.
    let _ = frame::decode_frame::<Request>(data, 64);
});
