use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error in the OpenAI wire shape: `{"error": {"message", "type", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// For 429 and 503: when to try again (`Retry-After`, rounded up to whole seconds).
    pub retry_after_ms: Option<u64>,
}

/// `Retry-After` of a 429 or 503 that does not know better.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 1_000;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, code, message: message.into(), retry_after_ms: None }
    }
    /// A 429 for a per-key limit, retryable after `retry_ms`.
    pub fn rate_limited(message: impl Into<String>, retry_ms: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limited", message);
        e.retry_after_ms = Some(retry_ms);
        e
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "too_large", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", "conflict", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "unavailable", message)
    }
}

impl From<crate::GatewayError> for ApiError {
    fn from(e: crate::GatewayError) -> Self {
        match e {
            crate::GatewayError::ControlPlaneUnavailable(_) => Self::unavailable(
                "control plane unavailable: no coordinator answered, so nothing can be changed now (this gateway \
                 goes on serving from its cached view of the cluster); retry when the coordinators are back",
            ),
            crate::GatewayError::Coordinator(shoal_coordinator::CoordinatorError::Busy) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "server_error", "busy", e.to_string())
            }
            crate::GatewayError::Refused(why) if why.contains("proposal queue is full") => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "server_error", "busy", why)
            }
            _ => Self::unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.message.trim().is_empty() {
            // Never an empty reason, whatever went wrong below.
            format!("{} ({})", self.status.canonical_reason().unwrap_or("error"), self.code)
        } else {
            self.message
        };
        let body = json!({"error": {"message": message, "type": self.kind, "code": self.code}});
        let mut response = (self.status, Json(body)).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            let secs = self.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS).div_ceil(1000).max(1);
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Content types under which a JSON body is accepted: JSON itself, none given (handled
/// apart), and what clients send by default (`curl -d`: a form; some send text).
pub fn accepts_as_json(content_type: &str) -> bool {
    content_type == "application/json"
        || content_type.ends_with("+json")
        || matches!(content_type, "application/x-www-form-urlencoded" | "text/plain" | "")
}

/// A JSON request body whose rejections (malformed JSON, wrong types, an unsupported
/// content type, too large) answer in the OpenAI error shape instead of axum's plain text.
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // JSON is read whatever the content type says when it says nothing or what `curl -d`
        // sends (a form): the body is parsed as JSON either way, and a body that is not JSON
        // is a 400 that says so. Other declared types are a 415.
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        if let Some(t) = content_type.as_deref().filter(|t| !accepts_as_json(t)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
                format!("this endpoint takes a JSON body, not {t}: send Content-Type: application/json"),
            ));
        }
        let read = axum::body::Bytes::from_request(req, state);
        let bytes = match tokio::time::timeout(super::server::BODY_READ_TIMEOUT, read).await {
            Err(_) => return Err(body_timeout()),
            Ok(Err(rejection)) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_body" };
                return Err(ApiError::new(status, "invalid_request_error", code, rejection.body_text()));
            }
            Ok(Ok(b)) => b,
        };
        // No body at all reads as `{}`: fine where every field has a default.
        let json: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        match Json::<T>::from_bytes(json) {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "body_timeout",
        format!("the request body did not arrive within {} s", super::server::BODY_READ_TIMEOUT.as_secs()),
    )
}

/// A raw request body (an uploaded file), read within the body deadline and the route's
/// size limit.
pub struct RawBody(pub axum::body::Bytes);

impl<S> axum::extract::FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let read = axum::body::Bytes::from_request(req, state);
        match tokio::time::timeout(super::server::BODY_READ_TIMEOUT, read).await {
            Err(_) => Err(body_timeout()),
            Ok(Ok(bytes)) => Ok(RawBody(bytes)),
            Ok(Err(rejection)) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_body" };
                Err(ApiError::new(status, "invalid_request_error", code, rejection.body_text()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_under_the_content_types_clients_send_by_default() {
        for t in ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/merge-patch+json"]
        {
            assert!(accepts_as_json(t), "{t}");
        }
        for t in ["multipart/form-data", "application/pdf", "text/html"] {
            assert!(!accepts_as_json(t), "{t}");
        }
    }
}
