//! The HTTP surface: the OpenAPI operations, their spec and Swagger UI, and JSON errors for
//! everything else.
//!
//! Operations live in `#[OpenApi]` structs that hold the shared [`AppState`]; this module composes
//! them into one service and one route tree. It must not hold state of its own.

pub mod error;
pub mod leaks;
pub mod pprof;
pub mod status;

use std::sync::Arc;

use poem::endpoint::make_sync;
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoEndpoint, Route};
use poem_openapi::OpenApiService;

use crate::app::AppState;

/// The OpenAPI service over every operation.
pub fn openapi(state: &Arc<AppState>) -> OpenApiService<(leaks::LeakApi, status::StatusApi), ()> {
    OpenApiService::new(
        (
            leaks::LeakApi::new(Arc::clone(state)),
            status::StatusApi::new(Arc::clone(state)),
        ),
        "leakfinder",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A teaching service with three deliberate, bounded leaks (a global slice, tasks blocked on \
         a channel, a global mutex-guarded map), a safe counterpart, and pprof endpoints under \
         /debug/pprof/ to find them.",
    )
}

/// Every route of the service, with JSON errors for unknown routes and bad methods.
pub fn routes(state: Arc<AppState>) -> impl Endpoint + use<> {
    let api = openapi(&state);
    let swagger: Arc<str> = api.swagger_ui_html().into();
    Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .at("/openapi.yaml", api.spec_endpoint_yaml())
        .at("/swagger", page(&swagger))
        .at("/swagger/", page(&swagger))
        .at("/swagger/index.html", page(&swagger))
        .nest("/debug/pprof", pprof::routes())
        .nest("/", api.into_endpoint())
        .data(state)
        .catch_all_error(error::into_json)
}

/// A fixed HTML page (Swagger UI, with the spec embedded, so it needs no network).
fn page(html: &Arc<str>) -> impl Endpoint + use<> {
    let html = Arc::clone(html);
    make_sync(move |_| Html(html.to_string()))
}
