//! Embedded management service: a NetBird-shaped account (peers, groups, policies, setup keys,
//! networks) kept in SQLite, a REST API to change it, and NetBird's gRPC ManagementService that
//! registers peers and streams each one its network map.
//!
//! REST (`/api/...`) and gRPC (`/management.ManagementService/...`) share one listener.

pub mod account;
pub mod activity;
pub mod backup;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod netmap;
pub mod rest;
pub mod service;
pub mod store;
pub mod tls;

use std::{future::Future, sync::Arc, time::Duration};

use management_proto::pb::management_service_server::ManagementServiceServer;
pub use service::{Ipv6Overlay, Management, Options, RelayOptions, TurnOptions};

/// REST and gRPC in one router.
pub fn app(m: Arc<Management>) -> axum::Router {
    let service = ManagementServiceServer::new(grpc::Grpc {
        management: m.clone(),
    })
    .max_decoding_message_size(management_proto::MAX_MESSAGE_SIZE)
    .max_encoding_message_size(management_proto::MAX_MESSAGE_SIZE);
    let grpc = tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router();
    // tonic's router brings a fallback of its own; the merged router replaces it with the JSON 404.
    let metrics = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(m): axum::extract::State<Arc<Management>>| async move {
                    metrics::render(&m)
                },
            ),
        )
        .with_state(m.clone());
    grpc.merge(rest::router(m.clone()))
        .merge(metrics)
        .fallback(rest::not_found_fallback)
        .layer(axum::middleware::from_fn_with_state(m, time_request))
}

/// Request latency by method, route (the matched pattern, or the gRPC method) and status.
async fn time_request(
    axum::extract::State(m): axum::extract::State<Arc<Management>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().to_string();
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(p) => p.as_str().to_string(),
        None if request.uri().path().starts_with("/management.") => {
            request.uri().path().to_string()
        }
        None => "unmatched".to_string(),
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    m.metrics
        .http_requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Serves REST and gRPC on `listener` until `shutdown` completes, over TLS with the certificate
/// from `tls` (plain HTTP with `None`); meanwhile deletes ephemeral peers that have stayed
/// offline past their timeout and applies expiries (peer logins, ACLs).
pub async fn serve(
    m: Arc<Management>,
    listener: tokio::net::TcpListener,
    tls: Option<tls::TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app(m.clone()).into_make_service_with_connect_info::<tls::RemoteAddr>();
    let sweeper = tokio::spawn({
        let m = m.clone();
        let period =
            (m.ephemeral_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                m.remove_expired_ephemeral();
                m.expire();
            }
        }
    });
    let result = match tls {
        // A certificate that does not load stops the start.
        Some(files) => {
            match tls::TlsListener::new(listener, &files, m.metrics.tls_handshakes.clone()) {
                Ok(l) => axum::serve(l, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(Into::into),
                Err(e) => Err(e),
            }
        }
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Into::into),
    };
    sweeper.abort();
    result
}
