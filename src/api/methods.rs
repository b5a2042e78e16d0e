//! Which methods each route serves, for the `Allow` header that RFC 9110 requires on every 405,
//! and for OPTIONS, which answers 204 with the same header on any route.
//!
//! [`RouteTable`] builds the routes and, from the same calls, a second router over the same paths
//! whose endpoints each answer with their path's `Allow` value. OpenAPI operations are read from the
//! metadata the spec is rendered from. The header cannot drift from the routes, and poem's own
//! router matches a path to its route (`/stop-leak/slice` to `/stop-leak/{kind}`). The values are
//! made once, when the routes are built; only a request that gets a 405 pays for a lookup. This
//! module must not decide what a route serves: the routes do.

use poem::endpoint::make_sync;
use poem::http::header::ALLOW;
use poem::http::{HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoEndpoint, IntoResponse, Request, Response, Result, Route};
use poem_openapi::{OpenApi, OpenApiService};

use super::error;

/// Routes, and beside them the methods each one serves.
#[derive(Default)]
pub struct RouteTable {
    routes: Route,
    allow: Route,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `path`, served by `endpoint` for GET (and so for HEAD, which poem answers from GET).
    pub fn get<E>(self, path: &str, endpoint: E) -> Self
    where
        E: IntoEndpoint,
        E::Endpoint: 'static,
    {
        Self {
            routes: self.routes.at(path, poem::get(endpoint)),
            allow: self.allow.at(path, allow_endpoint(&[Method::GET])),
        }
    }

    /// `endpoint` under `prefix`, answering every method itself (its own 405s and OPTIONS).
    pub fn nest_endpoint<E>(self, prefix: &str, endpoint: E) -> Self
    where
        E: IntoEndpoint,
        E::Endpoint: 'static,
    {
        Self {
            routes: self.routes.nest(prefix, endpoint),
            allow: self.allow,
        }
    }

    /// Another table's routes, under `prefix`.
    pub fn nest(self, prefix: &str, table: RouteTable) -> Self {
        Self {
            routes: self.routes.nest(prefix, table.routes),
            allow: self.allow.nest(prefix, table.allow),
        }
    }

    /// Every operation of an OpenAPI service, with the methods its spec declares for each path.
    pub fn openapi<T: OpenApi + 'static>(self, service: OpenApiService<T, ()>) -> Self {
        let mut allow = self.allow;
        for path in T::meta().into_iter().flat_map(|api| api.paths) {
            let methods: Vec<Method> = path.operations.into_iter().map(|op| op.method).collect();
            allow = allow.at(route_pattern(&path.path), allow_endpoint(&methods));
        }
        Self {
            routes: self.routes.nest("/", service),
            allow,
        }
    }

    /// The routes, answering a method a route does not serve with 405 and `Allow`, and OPTIONS
    /// with 204 and `Allow`.
    pub fn into_endpoint(self) -> WithAllow {
        WithAllow {
            routes: self.routes,
            allow: self.allow,
        }
    }
}

/// The routes of a [`RouteTable`], with `Allow` on their 405s and an answer to OPTIONS.
pub struct WithAllow {
    routes: Route,
    allow: Route,
}

impl WithAllow {
    /// The `Allow` value of the route `uri` matches, if any.
    async fn allowed(&self, uri: poem::http::Uri) -> Option<HeaderValue> {
        let answer = self.allow.call(Request::builder().uri(uri).finish()).await;
        answer.ok()?.headers().get(ALLOW).cloned()
    }
}

impl Endpoint for WithAllow {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        // Clones of a `Uri` and a standard `Method` share their bytes; nothing is copied.
        let uri = request.uri().clone();
        let method = request.method().clone();
        let error = match self.routes.call(request).await {
            Err(error) if error.status() == StatusCode::METHOD_NOT_ALLOWED => error,
            answer => return answer,
        };
        let Some(allow) = self.allowed(uri).await else {
            return Err(error);
        };
        let mut response = if method == Method::OPTIONS {
            StatusCode::NO_CONTENT.into_response()
        } else {
            error::method_not_allowed(&method, allow.to_str().unwrap_or_default())
        };
        response.headers_mut().insert(ALLOW, allow);
        Ok(response)
    }
}

/// An endpoint answering with the `Allow` value of a route that serves `methods`: those, HEAD
/// where GET is served (poem's method router answers HEAD with the GET handler), and OPTIONS.
fn allow_endpoint(methods: &[Method]) -> impl Endpoint<Output = Response> + 'static {
    let mut allowed: Vec<&str> = Vec::new();
    for method in methods {
        allowed.push(method.as_str());
        if *method == Method::GET {
            allowed.push(Method::HEAD.as_str());
        }
    }
    allowed.push(Method::OPTIONS.as_str());
    let mut unique = Vec::new();
    for method in allowed {
        if !unique.contains(&method) {
            unique.push(method);
        }
    }
    let value = HeaderValue::from_str(&unique.join(", "))
        .expect("method names are tokens, which are valid header values");
    make_sync(move |_| Response::builder().header(ALLOW, value.clone()).finish())
}

/// An OpenAPI path (`/stop-leak/{kind}`) as a poem route pattern (`/stop-leak/:kind`).
fn route_pattern(openapi_path: &str) -> String {
    openapi_path
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use poem_openapi::param::Path;
    use poem_openapi::payload::PlainText;

    use super::*;

    struct Api;

    #[poem_openapi::OpenApi]
    impl Api {
        #[oai(path = "/items/:id", method = "put", method = "delete")]
        async fn item(&self, id: Path<String>) -> PlainText<String> {
            PlainText(id.0)
        }
    }

    fn table() -> WithAllow {
        RouteTable::new()
            .get("/doc", make_sync(|_| "doc"))
            .nest(
                "/debug",
                RouteTable::new().get("/heap", make_sync(|_| "heap")),
            )
            .openapi(OpenApiService::new(Api, "test", "1"))
            .into_endpoint()
    }

    async fn send(endpoint: &WithAllow, method: Method, path: &str) -> Response {
        let request = Request::builder().method(method).uri_str(path).finish();
        endpoint.get_response(request).await
    }

    fn allow(response: &Response) -> Option<&str> {
        response.headers().get(ALLOW).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn openapi_paths_become_route_patterns() {
        assert_eq!(route_pattern("/stop-leak/{kind}"), "/stop-leak/:kind");
        assert_eq!(route_pattern("/a/{x}/b/{y}"), "/a/:x/b/:y");
        assert_eq!(route_pattern("/leak-test"), "/leak-test");
    }

    #[tokio::test]
    async fn a_405_names_what_its_route_serves() {
        let endpoint = table();
        for (method, path, expected) in [
            (Method::POST, "/doc", "GET, HEAD, OPTIONS"),
            (Method::TRACE, "/debug/heap", "GET, HEAD, OPTIONS"),
            (Method::GET, "/items/7", "PUT, DELETE, OPTIONS"),
            (Method::HEAD, "/items/7", "PUT, DELETE, OPTIONS"),
        ] {
            let response = send(&endpoint, method.clone(), path).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(allow(&response), Some(expected), "{method} {path}");
            let body = response.into_body().into_string().await.unwrap();
            assert!(body.contains(expected), "{method} {path}: {body}");
        }
    }

    #[tokio::test]
    async fn options_answers_204_with_allow_and_served_methods_pass_through() {
        let endpoint = table();
        let options = send(&endpoint, Method::OPTIONS, "/items/7").await;
        assert_eq!(options.status(), StatusCode::NO_CONTENT);
        assert_eq!(allow(&options), Some("PUT, DELETE, OPTIONS"));

        let head = send(&endpoint, Method::HEAD, "/debug/heap").await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(allow(&head), None);
        let put = send(&endpoint, Method::PUT, "/items/7").await;
        assert_eq!(put.into_body().into_string().await.unwrap(), "7");

        let missing = send(&endpoint, Method::OPTIONS, "/nowhere").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(allow(&missing), None);
    }
}
