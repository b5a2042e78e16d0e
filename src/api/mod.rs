//! The HTTP surface: the OpenAPI operations, their spec and Swagger UI, and JSON errors for
//! everything else.
//!
//! Operations live in `#[OpenApi]` structs that hold the shared [`AppState`]; this module composes
//! them into one service and one route tree. It must not hold state of its own.

pub mod error;
pub mod leaks;
pub mod methods;
pub mod payload;
pub mod status;

use std::sync::{Arc, OnceLock};

use poem::endpoint::make_sync;
use poem::{Endpoint, EndpointExt, Response};
use poem_openapi::OpenApiService;

use self::methods::RouteTable;
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

/// Every route of the service, with JSON errors for unknown routes and bad methods, and each
/// route's methods in `Allow` on a 405 and on OPTIONS.
pub fn routes(state: Arc<AppState>) -> impl Endpoint + use<> {
    let api = openapi(&state);
    let json = Document::new(&state, "application/json", |api| api.spec());
    let yaml = Document::new(&state, "application/x-yaml", |api| api.spec_yaml());
    let swagger = Document::new(&state, "text/html; charset=utf-8", |api| {
        api.swagger_ui_html()
    });
    RouteTable::new()
        .get("/openapi.json", json.endpoint())
        .get("/openapi.yaml", yaml.endpoint())
        .get("/swagger", swagger.endpoint())
        .get("/swagger/", swagger.endpoint())
        .get("/swagger/index.html", swagger.endpoint())
        .nest_endpoint("/debug/pprof", state.pprof.clone().into_poem())
        .openapi(api)
        .into_endpoint()
        .data(state)
        .catch_all_error(error::into_json)
}

/// The spec (JSON, YAML) or Swagger UI with the spec embedded (so it needs no network), made on
/// the first request rather than at start-up: Swagger UI carries its whole bundle (about 1.5 MB)
/// and the spec takes milliseconds to render, which a service nobody browses never pays.
#[derive(Clone)]
struct Document {
    state: Arc<AppState>,
    content_type: &'static str,
    render: fn(&OpenApiService<(leaks::LeakApi, status::StatusApi), ()>) -> String,
    rendered: Arc<OnceLock<Arc<str>>>,
}

impl Document {
    fn new(
        state: &Arc<AppState>,
        content_type: &'static str,
        render: fn(&OpenApiService<(leaks::LeakApi, status::StatusApi), ()>) -> String,
    ) -> Self {
        Self {
            state: Arc::clone(state),
            content_type,
            render,
            rendered: Arc::default(),
        }
    }

    fn endpoint(&self) -> impl Endpoint + use<> {
        let document = self.clone();
        make_sync(move |_| {
            let body = document
                .rendered
                .get_or_init(|| (document.render)(&openapi(&document.state)).into());
            Response::builder()
                .content_type(document.content_type)
                .body(body.to_string())
        })
    }
}
