//! The node's own QUIC endpoint (mutual TLS under the cluster CA). Today it answers pings
//! from cluster members; model and index actors serve their streams here.

use shoal_protocol::quic::{self, ServerStream};
use shoal_protocol::{RefusalCode, Request, Response};

/// Serves one data-plane stream.
pub async fn handle(conn: quinn::Connection, mut stream: ServerStream) {
    if quic::peer_member(&conn).is_none() {
        return stream.refuse(RefusalCode::Unauthenticated, "data-plane streams need a member certificate").await;
    }
    loop {
        match stream.recv().await {
            Ok(Some(Request::Ping { seq, payload })) => {
                if stream.send(&Response::Pong { seq, payload }).await.is_err() {
                    return;
                }
            }
            Ok(Some(other)) => {
                let msg = format!("a node does not serve '{}' requests", other.kind());
                return stream.refuse(RefusalCode::BadRequest, msg).await;
            }
            Ok(None) | Err(_) => return stream.finish(),
        }
    }
}
