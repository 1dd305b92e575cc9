//! The gateway's HTTP/1 server: a cap on open connections, and a deadline for every
//! request's headers that also closes idle keep-alive connections (hyper's header-read
//! timeout runs from the moment a connection waits for its next request). Bodies have their
//! own deadline in the extractors (`Body`, `RawBody`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use shoal_protocol::metric_names as m;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// The most a client may take to send a request's headers, and the longest a
    /// keep-alive connection may sit idle.
    pub header_read: Duration,
    /// Connections open at once; beyond this, new ones are closed at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { header_read: HEADER_READ_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// See [`HttpLimits::header_read`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`HttpLimits::max_connections`].
pub const MAX_CONNECTIONS: usize = 1024;
/// The most a client may take to send a request body once its headers arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read).keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::HTTP_CONNECTIONS_REFUSED).increment(1);
            debug!(%peer, "connection cap reached; closing a new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(super::audit::PeerAddr(peer));
                req
            },
        ));
        let builder = builder.clone();
        tokio::spawn(async move {
            metrics::gauge!(m::HTTP_CONNECTIONS).increment(1.0);
            if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            metrics::gauge!(m::HTTP_CONNECTIONS).decrement(1.0);
            drop(slot);
        });
    }
}
