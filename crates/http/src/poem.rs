//! The surface as a poem `Endpoint`: nest it under `/debug/pprof`. The peer is poem's remote
//! address.

use poem::http::StatusCode;
use poem::{Endpoint, Request, Response};

use crate::{Pprof, Reply};

/// The surface as a poem `Endpoint`, from [`Pprof::into_poem`].
#[derive(Clone)]
pub struct PprofEndpoint {
    pprof: Pprof,
}

impl Pprof {
    /// This surface as a poem `Endpoint`; nest it under `/debug/pprof`.
    pub fn into_poem(self) -> PprofEndpoint {
        PprofEndpoint { pprof: self }
    }
}

impl Endpoint for PprofEndpoint {
    type Output = Response;

    async fn call(&self, request: Request) -> poem::Result<Response> {
        let authorization = request
            .headers()
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let reply = self
            .pprof
            .respond(crate::Request {
                method: request.method().as_str(),
                path: request.uri().path(),
                query: request.uri().query(),
                peer: request.remote_addr().as_socket_addr().map(|peer| peer.ip()),
                authorization,
            })
            .await;
        Ok(into_response(reply))
    }
}

fn into_response(reply: Reply) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response.body(reply.body)
}
