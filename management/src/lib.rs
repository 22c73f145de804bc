//! Embedded management service: a NetBird-shaped account (peers, groups, policies, setup keys,
//! networks) kept in SQLite, a REST API to change it, and NetBird's gRPC ManagementService that
//! registers peers and streams each one its network map.
//!
//! REST (`/api/...`) and gRPC (`/management.ManagementService/...`) share one listener.

pub mod account;
pub mod backup;
pub mod error;
pub mod grpc;
pub mod model;
pub mod netmap;
pub mod rest;
pub mod service;
pub mod store;

use std::{future::Future, sync::Arc, time::Duration};

use management_proto::pb::management_service_server::ManagementServiceServer;
pub use service::{Management, Options, TurnOptions};

/// REST and gRPC in one router.
pub fn app(m: Arc<Management>) -> axum::Router {
    let service = ManagementServiceServer::new(grpc::Grpc { management: m.clone() })
        .max_decoding_message_size(management_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(management_proto::MAX_MESSAGE_SIZE);
    let grpc = tonic::service::Routes::new(service).prepare().into_axum_router();
    // tonic's router brings a fallback of its own; the merged router replaces it with the JSON 404.
    grpc.merge(rest::router(m)).fallback(rest::not_found_fallback)
}

/// Serves REST and gRPC on `listener` until `shutdown` completes; meanwhile deletes ephemeral
/// peers that have stayed offline past their timeout and applies expiries (peer logins, ACLs).
pub async fn serve(m: Arc<Management>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let app = app(m.clone());
    let sweeper = tokio::spawn({
        let m = m.clone();
        let period = (m.ephemeral_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                m.remove_expired_ephemeral();
                m.expire();
            }
        }
    });
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    sweeper.abort();
    result.map_err(Into::into)
}
