//! Counts every answered request by route and status code (`shoal_gateway_http_responses_total`):
//! the "errors by route" of the dashboards and alerts. The route is the matched path
//! template, so the labels stay bounded whatever paths clients send; a path that matches
//! no route is not counted here (the 404 fallback).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use shoal_protocol::metric_names as m;

pub async fn layer(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let response = next.run(req).await;
    if let Some(route) = route {
        metrics::counter!(m::HTTP_RESPONSES, "route" => route, "code" => response.status().as_u16().to_string())
            .increment(1);
    }
    response
}
