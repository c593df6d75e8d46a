//! The contract's JSON error: `{"error": "<machine_code>", "message": "<human sentence>"}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
    /// Where in `where` a refused filter goes wrong (1-based character), for `bad_where`.
    pub position: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            position: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 for a malformed parameter; the message names it.
    pub fn bad_parameter(name: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("invalid {name}: {message}"),
        )
    }

    /// 400 for a refused `where`: what is wrong and where.
    pub fn bad_where(error: &crate::shape::ShapeError) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_where",
            format!("invalid where {error}"),
        );
        e.position = Some(error.position);
        e
    }

    pub fn unknown_collection(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_collection",
            format!("unknown collection {name:?}: see GET /v1/collections for the collections you can read"),
        )
    }

    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "cursor_expired", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "HTTP request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the relay could not read its log; see its logs",
        )
    }

    pub fn body(&self) -> String {
        match self.position {
            None => serde_json::json!({"error": self.code, "message": self.message}),
            Some(position) => serde_json::json!({
                "error": self.code, "message": self.message, "position": position
            }),
        }
        .to_string()
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(e: crate::log::LogError) -> ApiError {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}
