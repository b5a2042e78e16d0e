//! The HTTP surface: the OpenAPI operations, their spec and Swagger UI, and JSON errors for
//! everything else.
//!
//! Operations live in `#[OpenApi]` structs that hold the shared [`AppState`]; this module composes
//! them into one service and one route tree. It must not hold state of its own.

pub mod error;
pub mod leaks;
pub mod pprof;
pub mod status;

use std::sync::{Arc, OnceLock};

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
    let swagger = SwaggerPage::new(&state);
    Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .at("/openapi.yaml", api.spec_endpoint_yaml())
        .at("/swagger", swagger.endpoint())
        .at("/swagger/", swagger.endpoint())
        .at("/swagger/index.html", swagger.endpoint())
        .nest("/debug/pprof", pprof::routes())
        .nest("/", api.into_endpoint())
        .data(state)
        .catch_all_error(error::into_json)
}

/// Swagger UI with the spec embedded, so it needs no network. The page carries the whole
/// Swagger UI bundle (about 1.5 MB), so it is made on the first request, not at start-up: a
/// service nobody browses never holds it.
#[derive(Clone)]
struct SwaggerPage {
    state: Arc<AppState>,
    html: Arc<OnceLock<Arc<str>>>,
}

impl SwaggerPage {
    fn new(state: &Arc<AppState>) -> Self {
        Self {
            state: Arc::clone(state),
            html: Arc::default(),
        }
    }

    fn endpoint(&self) -> impl Endpoint + use<> {
        let page = self.clone();
        make_sync(move |_| {
            let html = page
                .html
                .get_or_init(|| openapi(&page.state).swagger_ui_html().into());
            Html(html.to_string())
        })
    }
}
