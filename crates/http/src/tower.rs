//! The surface as a `tower::Service`, for axum (`Router::nest_service`), tonic and hyper.
//!
//! The peer address is read from the request's extensions: axum's `ConnectInfo<SocketAddr>`
//! (feature `axum`; serve with `into_make_service_with_connect_info::<SocketAddr>()`), or a
//! plain `SocketAddr` a hyper server inserts. Without either the peer counts as remote.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;

use crate::{Pprof, Reply, Request};

/// The surface as a `tower::Service<http::Request<B>>`, from [`Pprof::into_tower`].
#[derive(Clone)]
pub struct PprofService {
    pprof: Pprof,
}

impl Pprof {
    /// This surface as a `tower::Service`; mount it under `/debug/pprof`.
    pub fn into_tower(self) -> PprofService {
        PprofService { pprof: self }
    }
}

fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(peer)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*peer);
    }
    extensions.get::<SocketAddr>().copied()
}

impl<B> tower_service::Service<http::Request<B>> for PprofService {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let pprof = self.pprof.clone();
        let (parts, _body) = request.into_parts();
        Box::pin(async move {
            let authorization = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let reply = pprof
                .respond(Request {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    query: parts.uri.query(),
                    peer: peer(&parts.extensions).map(|peer| peer.ip()),
                    authorization,
                })
                .await;
            Ok(into_response(reply))
        })
    }
}

fn into_response(reply: Reply) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
