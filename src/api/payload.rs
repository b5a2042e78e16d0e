//! A JSON response payload serialised straight from the value with serde, for the operations a
//! user polls in a loop (`/leak-test`).
//!
//! poem-openapi's `Json<T>` builds a `serde_json::Value` tree of the value first (a `BTreeMap`
//! per object, each key allocated), then serialises the tree: on `/leak-test` under `wrk` that
//! was a tenth of the service's CPU. [`SerdeJson`] writes the same bytes directly, and declares
//! the same schema (the type's own), so the OpenAPI document does not change.

use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

/// A JSON body (200) written by serde; its schema is `T`'s.
pub struct SerdeJson<T>(pub T);

/// What poem-openapi's `Json` answers with.
const JSON_UTF8: &str = "application/json; charset=utf-8";

impl<T: Type> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = JSON_UTF8;

    fn check_content_type(content_type: &str) -> bool {
        content_type.starts_with("application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        // Sized for `/leak-test`'s answer (about 900 bytes), so the body is written in place.
        let mut body = Vec::with_capacity(1024);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => Response::builder().content_type(JSON_UTF8).body(body),
            // Only a map with non-string keys or a failing Serialize impl can fail: none here.
            Err(error) => Response::builder()
                .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                .body(error.to_string()),
        }
    }
}

impl<T: Type + Serialize + Send> ApiResponse for SerdeJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;
    use poem_openapi::types::ToJSON;

    use super::*;

    #[derive(Object, Serialize)]
    struct Inner {
        count: u64,
        on: bool,
    }

    #[derive(Object, Serialize)]
    struct Outer {
        inner: Inner,
        bytes: u64,
    }

    #[tokio::test]
    async fn writes_what_poem_openapi_json_writes() {
        let value = || Outer {
            inner: Inner { count: 7, on: true },
            bytes: u64::MAX,
        };
        let ours = SerdeJson(value()).into_response();
        assert_eq!(ours.content_type(), Some("application/json; charset=utf-8"));
        let ours: serde_json::Value =
            serde_json::from_slice(&ours.into_body().into_vec().await.unwrap()).unwrap();
        assert_eq!(ours, value().to_json().unwrap());
        assert_eq!(
            <SerdeJson<Outer> as Payload>::schema_ref(),
            <poem_openapi::payload::Json<Outer> as Payload>::schema_ref()
        );
    }
}
