//! Shoal's wire protocol: every type that crosses a process boundary, the frame codec,
//! the QUIC endpoints, TLS identities (cluster CA, member certificates, CA pinning) and
//! join tokens.
//!
//! What this crate owns: the bytes on the wire and the trust between cluster members.
//! What it must not do: decide anything about the cluster. Message types and the codec are
//! pure (no clock, no sockets); only [`quic`] touches tokio and quinn.

pub mod address;
pub mod artifact;
pub mod error;
pub mod files;
pub mod frame;
pub mod messages;
pub mod metric_names;
pub mod pipeline;
pub mod pool;
pub mod quic;
pub mod recall;
pub mod serving;
pub mod tls;
pub mod token;

pub use error::ProtocolError;
pub use messages::*;
pub use pipeline::*;
pub use recall::*;
pub use serving::*;

/// The protocol version carried in every stream's `Hello`. A peer with another version is
/// refused with [`RefusalCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 6;

/// The ALPN identifier every Shoal QUIC connection negotiates.
pub const ALPN: &[u8] = b"shoal/1";

/// Installs rustls' ring crypto provider as the process default. Safe to call many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
