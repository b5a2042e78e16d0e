//! The one JSON error body every 4xx and 5xx of this service carries, and the catch-all that turns
//! routing errors (unknown route, wrong method) into it.

use poem::http::{Method, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::Object;

/// A client or server error, as JSON.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct ErrorBody {
    /// The HTTP status, as a number.
    pub status: u16,
    /// What went wrong.
    pub error: String,
    /// What would have been valid.
    pub valid: String,
}

impl ErrorBody {
    /// A 400 body for a request whose parameters did not parse.
    pub fn bad_request(error: impl ToString, valid: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST.as_u16(),
            error: error.to_string(),
            valid: valid.to_owned(),
        }
    }
}

/// What the kinds of leak are, for error bodies.
pub const VALID_KINDS: &str = "kind is one of: slice, channel, mutex";

/// The error of a leak operation whose only parameter, the kind, did not parse. (poem-openapi
/// names path parameters by position in its own message, which would only confuse a reader.)
pub fn bad_kind() -> ErrorBody {
    ErrorBody::bad_request("unknown leak kind in the path", VALID_KINDS)
}

/// The 405 for `method` on a route that serves only `allow` (the `Allow` header's value).
pub fn method_not_allowed(method: &Method, allow: &str) -> Response {
    let status = StatusCode::METHOD_NOT_ALLOWED;
    let body = ErrorBody {
        status: status.as_u16(),
        error: format!("{method} is not served at this route"),
        valid: format!("this route serves {allow} (see /openapi.json)"),
    };
    poem::web::Json(body).with_status(status).into_response()
}

/// Turns any error that reached the top of the router into a JSON body with its status.
pub async fn into_json(error: poem::Error) -> Response {
    let status = error.status();
    let valid = match status {
        StatusCode::NOT_FOUND => "see /openapi.json or /swagger/ for every route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "see /openapi.json for each route's methods".to_owned(),
        _ => String::new(),
    };
    let error = if status == StatusCode::NOT_FOUND {
        "no such route".to_owned()
    } else {
        error.to_string()
    };
    let body = ErrorBody {
        status: status.as_u16(),
        error,
        valid,
    };
    poem::web::Json(body).with_status(status).into_response()
}
