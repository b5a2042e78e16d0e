//! Who may read profiles, through each adapter in-process, with the peer a server would report:
//! a non-loopback peer is refused by default (403), admitted with the configured bearer token,
//! refused with a wrong one (401); loopback is admitted; a peer the server did not report is
//! refused. Both adapters must agree, since they share one decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leakfinder_http::{Access, Pprof};
use leakfinder_profiling::Profilers;
use serde_json::Value;
use tower_service::Service;

const TOKEN: &str = "s3cret-token";
const REMOTE: &str = "10.1.2.3:50000";
const LOOPBACK: &str = "127.0.0.1:50000";
/// The routes each case is checked on: both cheap, neither needs jemalloc.
const PATHS: [&str; 2] = ["/debug/pprof/cmdline", "/debug/pprof/"];
/// No answer here takes more than a moment; a hang fails the test instead of wedging it.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One request as a server would hand it over: the peer (when the server knows it) and the
/// `Authorization` header.
#[derive(Debug, Clone, Copy)]
struct Case<'a> {
    peer: Option<&'a str>,
    authorization: Option<&'a str>,
}

/// A status and, for refusals, the JSON body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

fn profilers() -> Arc<Profilers> {
    Arc::new(Profilers::new())
}

/// Which peer reporting a tower request carries.
#[derive(Debug, Clone, Copy)]
enum TowerPeer {
    /// axum's `ConnectInfo<SocketAddr>`, from `into_make_service_with_connect_info`.
    ConnectInfo,
    /// A plain `SocketAddr` extension, as a hyper server inserts it.
    SocketAddr,
}

async fn via_tower(pprof: &Pprof, case: Case<'_>, path: &str, reported_as: TowerPeer) -> Answer {
    let mut request = http::Request::builder().uri(path);
    if let Some(authorization) = case.authorization {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    if let Some(peer) = case.peer {
        let peer: SocketAddr = peer.parse().unwrap();
        request = match reported_as {
            TowerPeer::ConnectInfo => request.extension(axum::extract::ConnectInfo(peer)),
            TowerPeer::SocketAddr => request.extension(peer),
        };
    }
    let request = request.body(()).unwrap();
    let mut service = pprof.clone().into_tower();
    let response = tokio::time::timeout(ANSWER_WITHIN, service.call(request))
        .await
        .expect("the tower service answers in time")
        .unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer { status, body }
}

/// Through a poem `Route` with the surface nested at `/debug/pprof`, as a service mounts it.
async fn via_poem(pprof: &Pprof, case: Case<'_>, path: &str) -> Answer {
    use poem::Endpoint;
    use poem::web::{LocalAddr, RemoteAddr};

    let mut request = poem::http::Request::builder().uri(path);
    if let Some(authorization) = case.authorization {
        request = request.header(poem::http::header::AUTHORIZATION, authorization);
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    // Unknown unless set: poem's default remote address is not a socket address.
    let remote = match case.peer {
        Some(peer) => RemoteAddr(poem::Addr::SocketAddr(peer.parse().unwrap())),
        None => RemoteAddr::default(),
    };
    let parts = poem::RequestParts::from((
        parts,
        LocalAddr::default(),
        remote,
        poem::http::uri::Scheme::HTTP,
    ));
    let request = poem::Request::from_parts(parts, poem::Body::empty());
    let route = poem::Route::new().nest("/debug/pprof", pprof.clone().into_poem());
    let response = tokio::time::timeout(ANSWER_WITHIN, route.get_response(request))
        .await
        .expect("the poem endpoint answers in time");
    let status = response.status().as_u16();
    let body = response.into_body().into_bytes().await.unwrap().to_vec();
    Answer { status, body }
}

/// `case` on every route, through every adapter: each answer's status is `status`; a refusal
/// carries Go-style JSON (`status`, `error`, `valid`).
async fn expect(pprof: &Pprof, case: Case<'_>, status: u16) {
    for path in PATHS {
        let answers = [
            (
                "tower+ConnectInfo",
                via_tower(pprof, case, path, TowerPeer::ConnectInfo).await,
            ),
            (
                "tower+SocketAddr",
                via_tower(pprof, case, path, TowerPeer::SocketAddr).await,
            ),
            ("poem", via_poem(pprof, case, path).await),
        ];
        for (adapter, answer) in answers {
            let what = format!("{adapter} {path} {case:?}");
            assert_eq!(answer.status, status, "{what}: {answer:?}");
            if status == 200 {
                assert!(!answer.body.is_empty(), "{what}: a body");
                continue;
            }
            let error: Value = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{what}: a JSON refusal ({e}): {answer:?}"));
            assert_eq!(error["status"], status, "{what}: {error}");
            assert!(
                error["error"].as_str().is_some_and(|text| !text.is_empty()),
                "{what}: {error}"
            );
            assert!(error["valid"].is_string(), "{what}: {error}");
        }
    }
}

#[tokio::test]
async fn a_remote_peer_is_refused_by_default_and_loopback_is_served() {
    let pprof = Pprof::new(profilers());
    let remote = Case {
        peer: Some(REMOTE),
        authorization: None,
    };
    expect(&pprof, remote, 403).await;
    // Without a configured token, presenting one does not help.
    expect(
        &pprof,
        Case {
            authorization: Some("Bearer anything"),
            ..remote
        },
        401,
    )
    .await;
    expect(
        &pprof,
        Case {
            peer: Some(LOOPBACK),
            authorization: None,
        },
        200,
    )
    .await;
    expect(
        &pprof,
        Case {
            peer: Some("[::1]:50000"),
            authorization: None,
        },
        200,
    )
    .await;
    // A server that does not say who the peer is: treated as remote.
    expect(
        &pprof,
        Case {
            peer: None,
            authorization: None,
        },
        403,
    )
    .await;
}

#[tokio::test]
async fn the_token_admits_a_remote_peer_and_a_wrong_token_is_refused() {
    let pprof = Pprof::with_access(profilers(), Access::loopback_only().token(TOKEN));
    let remote = Case {
        peer: Some(REMOTE),
        authorization: None,
    };
    let bearer = format!("Bearer {TOKEN}");
    expect(&pprof, remote, 403).await;
    expect(
        &pprof,
        Case {
            authorization: Some(&bearer),
            ..remote
        },
        200,
    )
    .await;
    expect(
        &pprof,
        Case {
            authorization: Some("Bearer s3cret-tokem"),
            ..remote
        },
        401,
    )
    .await;
    // A wrong token is refused even from loopback: it is a client misconfigured.
    expect(
        &pprof,
        Case {
            peer: Some(LOOPBACK),
            authorization: Some("Bearer wrong"),
        },
        401,
    )
    .await;
    expect(
        &pprof,
        Case {
            peer: None,
            authorization: Some(&bearer),
        },
        200,
    )
    .await;
}

#[tokio::test]
async fn a_refusal_says_what_would_have_been_admitted() {
    let remote = Case {
        peer: Some(REMOTE),
        authorization: None,
    };
    let default = via_tower(
        &Pprof::new(profilers()),
        remote,
        PATHS[0],
        TowerPeer::ConnectInfo,
    )
    .await;
    let error: Value = serde_json::from_slice(&default.body).unwrap();
    assert!(
        error["valid"].as_str().unwrap().contains("loopback"),
        "{error}"
    );
    let with_token = via_poem(
        &Pprof::with_access(profilers(), Access::loopback_only().token(TOKEN)),
        remote,
        PATHS[0],
    )
    .await;
    let error: Value = serde_json::from_slice(&with_token.body).unwrap();
    let valid = error["valid"].as_str().unwrap();
    assert!(valid.contains("Authorization: Bearer"), "{error}");
    assert!(!valid.contains(TOKEN), "the token is never shown: {error}");
}
