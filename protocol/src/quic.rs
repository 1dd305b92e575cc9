//! QUIC endpoints and framed streams on top of quinn.
//!
//! Every stream carries length-prefixed rkyv frames ([`crate::frame`]). A client stream
//! starts by sending [`Hello`]; the server checks the protocol version and answers
//! `Welcome` or `Refused`. A frame that is oversized, truncated or fails validation closes
//! that stream (reset + stop with an error code from [`crate::frame::codes`]), is counted in
//! `shoal_protocol_frames_refused_total{reason}`, and never affects other streams.

use std::future::Future;
use std::net::SocketAddr;

use quinn::{Connection, Endpoint, ReadExactError, RecvStream, SendStream, VarInt};
use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use tracing::{debug, warn, Instrument};

use crate::frame::{self, codes, Encode, FrameBuf, HEADER_BYTES, MAX_FRAME_BYTES};
use crate::metric_names as m;
use crate::tls::MemberRole;
use crate::{Hello, ProtocolError, RefusalCode, Request, Response, PROTOCOL_VERSION};

async fn write_frame<T: Encode>(send: &mut SendStream, msg: &T) -> Result<(), ProtocolError> {
    let bytes = frame::encode(msg)?;
    send.write_all(&bytes).await.map_err(|e| ProtocolError::Stream(e.to_string()))
}

async fn read_frame<T>(recv: &mut RecvStream, max: usize) -> Result<Option<T>, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut header = [0u8; HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => return Err(ProtocolError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(ProtocolError::Stream(e.to_string())),
    }
    let len = frame::payload_len(header, max)?;
    let mut buf = FrameBuf::with_capacity(len);
    buf.resize(len, 0);
    match recv.read_exact(&mut buf[..]).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(_)) => return Err(ProtocolError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(ProtocolError::Stream(e.to_string())),
    }
    frame::decode_aligned(&buf).map(Some)
}

fn close_with(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}

/// The client half of a stream: sends requests, reads responses.
pub struct ClientStream {
    send: SendStream,
    recv: RecvStream,
    welcomed: bool,
}

impl ClientStream {
    /// Opens a stream on `conn` and sends `Hello`. The server's answer is read with the
    /// first response, so opening costs no extra round trip.
    pub async fn open(conn: &Connection) -> Result<Self, ProtocolError> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| ProtocolError::Connect(e.to_string()))?;
        let hello = Hello { version: PROTOCOL_VERSION, agent: format!("shoal/{}", env!("CARGO_PKG_VERSION")) };
        write_frame(&mut send, &hello).await?;
        Ok(Self { send, recv, welcomed: false })
    }

    /// Opens a stream that announces a chosen protocol version (for tests of refusal).
    pub async fn open_with_version(conn: &Connection, version: u32) -> Result<Self, ProtocolError> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| ProtocolError::Connect(e.to_string()))?;
        write_frame(&mut send, &Hello { version, agent: "test".into() }).await?;
        Ok(Self { send, recv, welcomed: false })
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ProtocolError> {
        write_frame(&mut self.send, req).await
    }

    /// Reads the next response. A `Refused` answer is returned as a response, except a
    /// refused `Hello`, which is an error.
    pub async fn recv(&mut self) -> Result<Response, ProtocolError> {
        if !self.welcomed {
            welcome(self.next().await?)?;
            self.welcomed = true;
        }
        self.next().await
    }

    async fn next(&mut self) -> Result<Response, ProtocolError> {
        match read_frame::<Response>(&mut self.recv, MAX_FRAME_BYTES).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ProtocolError::Closed),
            Err(e) => {
                close_with(&mut self.send, &mut self.recv, e.stream_code());
                Err(e)
            }
        }
    }

    /// Sends one request and waits for its response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ProtocolError> {
        self.send(req).await?;
        self.recv().await
    }

    /// Writes raw bytes (for tests that send garbage).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.send.write_all(bytes).await.map_err(|e| ProtocolError::Stream(e.to_string()))
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The stream's two directions, to send requests while reading responses (a byte
    /// relay, a pipeline link). The receiver checks the server's welcome first if it has not
    /// been read yet.
    pub fn split(self) -> (ClientSender, ClientReceiver) {
        (ClientSender { send: self.send }, ClientReceiver { recv: self.recv, welcomed: self.welcomed })
    }
}

/// The server's answer to `Hello`: `Welcome`, or the refusal as an error.
fn welcome(first: Response) -> Result<(), ProtocolError> {
    match first {
        Response::Welcome { .. } => Ok(()),
        Response::Refused { message, .. } => Err(ProtocolError::Refused(message)),
        _ => Err(ProtocolError::Unexpected { expected: "welcome" }),
    }
}

/// The sending direction of a [`ClientStream`]; dropping it resets the stream.
pub struct ClientSender {
    send: SendStream,
}

impl ClientSender {
    pub async fn send(&mut self, req: &Request) -> Result<(), ProtocolError> {
        write_frame(&mut self.send, req).await
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The reading direction of a [`ClientStream`].
pub struct ClientReceiver {
    recv: RecvStream,
    welcomed: bool,
}

impl ClientReceiver {
    /// The next response (after the server's welcome, checked first if not read yet); a bad
    /// frame stops the stream.
    pub async fn recv(&mut self) -> Result<Response, ProtocolError> {
        if !self.welcomed {
            welcome(self.next().await?)?;
            self.welcomed = true;
        }
        self.next().await
    }

    async fn next(&mut self) -> Result<Response, ProtocolError> {
        match read_frame::<Response>(&mut self.recv, MAX_FRAME_BYTES).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ProtocolError::Closed),
            Err(e) => {
                let _ = self.recv.stop(VarInt::from_u32(e.stream_code()));
                Err(e)
            }
        }
    }
}

/// The server half of a stream: reads requests, sends responses.
pub struct ServerStream {
    send: SendStream,
    recv: RecvStream,
}

impl ServerStream {
    /// Reads the peer's `Hello` and answers it.
    async fn accept(mut send: SendStream, mut recv: RecvStream) -> Result<Self, ProtocolError> {
        let hello = match read_frame::<Hello>(&mut recv, MAX_FRAME_BYTES).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ProtocolError::Closed),
            Err(e) => {
                refuse_frame(&mut send, &mut recv, &e);
                return Err(e);
            }
        };
        metrics::counter!(m::FRAMES_RECEIVED).increment(1);
        if hello.version != PROTOCOL_VERSION {
            let err = ProtocolError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: hello.version };
            let refusal = Response::refused(RefusalCode::VersionMismatch, err.to_string());
            let _ = write_frame(&mut send, &refusal).await;
            let _ = send.finish();
            let _ = recv.stop(VarInt::from_u32(codes::VERSION));
            metrics::counter!(m::FRAMES_REFUSED, "reason" => "version").increment(1);
            return Err(err);
        }
        write_frame(&mut send, &Response::Welcome { version: PROTOCOL_VERSION }).await?;
        Ok(Self { send, recv })
    }

    /// The next request, `None` when the peer finished the stream cleanly. A bad frame
    /// closes the stream with its error code and is counted.
    pub async fn recv(&mut self) -> Result<Option<Request>, ProtocolError> {
        match read_frame::<Request>(&mut self.recv, MAX_FRAME_BYTES).await {
            Ok(r) => {
                if r.is_some() {
                    metrics::counter!(m::FRAMES_RECEIVED).increment(1);
                }
                Ok(r)
            }
            Err(e) => {
                refuse_frame(&mut self.send, &mut self.recv, &e);
                Err(e)
            }
        }
    }

    pub async fn send(&mut self, resp: &Response) -> Result<(), ProtocolError> {
        write_frame(&mut self.send, resp).await
    }

    /// Resolves when the peer abandons the stream: it stopped reading the answers (dropped or
    /// stopped its half) or the connection was lost. It borrows nothing, so it can race the
    /// work a request started, which is dropped when the peer is gone.
    pub fn abandoned(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = self.send.stopped();
        async move {
            let _ = stopped.await;
        }
    }

    /// Sends a refusal and finishes the stream.
    pub async fn refuse(&mut self, code: RefusalCode, message: impl Into<String>) {
        let _ = write_frame(&mut self.send, &Response::refused(code, message)).await;
        let _ = self.send.finish();
        let _ = self.recv.stop(VarInt::from_u32(codes::REFUSED));
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The stream's two directions, to read requests while sending responses (a byte relay).
    pub fn split(self) -> (ServerSender, ServerReceiver) {
        (ServerSender { send: self.send }, ServerReceiver { recv: self.recv })
    }
}

/// The sending direction of a [`ServerStream`].
pub struct ServerSender {
    send: SendStream,
}

impl ServerSender {
    pub async fn send(&mut self, resp: &Response) -> Result<(), ProtocolError> {
        write_frame(&mut self.send, resp).await
    }

    /// Resolves when the peer stops reading (it dropped the stream) or the connection is lost.
    pub fn abandoned(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = self.send.stopped();
        async move {
            let _ = stopped.await;
        }
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The reading direction of a [`ServerStream`].
pub struct ServerReceiver {
    recv: RecvStream,
}

impl ServerReceiver {
    /// The next request, `None` when the peer finished its direction cleanly. A bad frame
    /// stops the stream and is counted.
    pub async fn recv(&mut self) -> Result<Option<Request>, ProtocolError> {
        match read_frame::<Request>(&mut self.recv, MAX_FRAME_BYTES).await {
            Ok(r) => {
                if r.is_some() {
                    metrics::counter!(m::FRAMES_RECEIVED).increment(1);
                }
                Ok(r)
            }
            Err(e) => {
                if matches!(e, ProtocolError::Oversized { .. } | ProtocolError::Truncated | ProtocolError::Malformed(_))
                {
                    metrics::counter!(m::FRAMES_REFUSED, "reason" => e.reason()).increment(1);
                    warn!(error = %e, "refused a frame; closing the stream");
                }
                let _ = self.recv.stop(VarInt::from_u32(e.stream_code()));
                Err(e)
            }
        }
    }
}

fn refuse_frame(send: &mut SendStream, recv: &mut RecvStream, e: &ProtocolError) {
    match e {
        ProtocolError::Oversized { .. } | ProtocolError::Truncated | ProtocolError::Malformed(_) => {
            metrics::counter!(m::FRAMES_REFUSED, "reason" => e.reason()).increment(1);
            warn!(error = %e, "refused a frame; closing the stream");
            close_with(send, recv, e.stream_code());
        }
        _ => debug!(error = %e, "stream ended"),
    }
}

/// Binds a server endpoint.
pub fn server_endpoint(addr: SocketAddr, config: quinn::ServerConfig) -> Result<Endpoint, ProtocolError> {
    Endpoint::server(config, addr).map_err(|e| ProtocolError::Connect(format!("cannot listen on {addr}: {e}")))
}

/// Binds a server endpoint whose stateless-reset key is derived from `reset_secret` (use
/// something stable and private to this member, such as [`crate::tls::Identity::reset_secret`]).
/// A restarted process then resets its peers' connections to its previous incarnation at
/// once, instead of leaving them to time out.
pub fn server_endpoint_keyed(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    reset_secret: &[u8],
) -> Result<Endpoint, ProtocolError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_config = quinn::EndpointConfig::new(std::sync::Arc::new(key.clone()));
    // quinn drops a packet whose connection id does not carry its generator's signature
    // instead of answering it with a reset, and by default that signature's key is new in
    // every process: a peer's packets on a connection to the previous run were dropped
    // silently, and the connection lived on until an election timeout or QUIC's idle timeout.
    // Connection ids signed with a key derived from the same secret stay recognisable.
    let tag = ring::hmac::sign(&key, b"shoal connection ids v1");
    let cid_key = u64::from_le_bytes(tag.as_ref()[..8].try_into().unwrap_or([0; 8]));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|e| ProtocolError::Connect(format!("cannot listen on {addr}: {e}")))?;
    Endpoint::new(endpoint_config, Some(config), socket, std::sync::Arc::new(quinn::TokioRuntime))
        .map_err(|e| ProtocolError::Connect(format!("cannot listen on {addr}: {e}")))
}

/// Binds a client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(for_peer: SocketAddr) -> Result<Endpoint, ProtocolError> {
    let bind: SocketAddr = if for_peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| ProtocolError::Connect("bad bind address".into()))?;
    Endpoint::client(bind).map_err(|e| ProtocolError::Connect(e.to_string()))
}

/// How long resolving a member's DNS name may take.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves a member address (`ip:port` at once, `name:port` through the system resolver,
/// at most [`RESOLVE_TIMEOUT`]); the first address wins.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ProtocolError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if crate::address::split_host_port(addr).is_none() {
        return Err(ProtocolError::Connect(format!("'{addr}' is not host:port")));
    }
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| ProtocolError::Connect(format!("resolving {addr} timed out")))?
        .map_err(|e| ProtocolError::Connect(format!("cannot resolve {addr}: {e}")))?;
    let mut found: Vec<SocketAddr> = found.collect();
    // IPv4 first: the client endpoint of a dual-stack name is then the common one.
    found.sort_by_key(|a| a.is_ipv6());
    found.into_iter().next().ok_or_else(|| ProtocolError::Connect(format!("{addr} resolves to no address")))
}

/// Connects to `addr`, expecting the peer to present `server_name`.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, ProtocolError> {
    let connecting =
        endpoint.connect_with(config, addr, server_name).map_err(|e| ProtocolError::Connect(format!("{addr}: {e}")))?;
    connecting.await.map_err(|e| ProtocolError::Connect(format!("{addr}: {e}")))
}

/// The verified cluster identity of the peer of `conn`, if it presented a certificate.
pub fn peer_member(conn: &Connection) -> Option<(MemberRole, String)> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    let cn = crate::tls::common_name(certs.first()?)?;
    MemberRole::parse_common_name(&cn)
}

/// Accepts connections on `endpoint` until it is closed. Each stream's `Hello` is checked,
/// then `handler` runs on its own task with the connection and the stream.
pub async fn serve<F, Fut>(endpoint: Endpoint, handler: F)
where
    F: Fn(Connection, ServerStream) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(%remote, error = %e, "handshake failed");
                    return;
                }
            };
            metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
            let span = tracing::debug_span!("conn", %remote);
            async move {
                loop {
                    let (send, recv) = match conn.accept_bi().await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(error = %e, "connection closed");
                            return;
                        }
                    };
                    metrics::counter!(m::STREAMS_OPENED).increment(1);
                    let handler = handler.clone();
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        match ServerStream::accept(send, recv).await {
                            Ok(stream) => handler(conn, stream).await,
                            Err(e) => debug!(error = %e, "stream refused at hello"),
                        }
                    });
                }
            }
            .instrument(span)
            .await
        });
    }
}
