//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of this API, `docs/openapi.yaml`.
//! That file is written in YAML's JSON form, so it is served as it is; a test checks that
//! it parses as JSON and lists exactly the routes the router serves.

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;

    #[test]
    fn is_json_openapi_3_1() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("docs/openapi.yaml is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }
}
