//! The gRPC face: GetServerKey, isHealthy, Login and Sync of NetBird's ManagementService. Every
//! Login and Sync body is sealed between the peer's and the server's WireGuard keys.

use std::{pin::Pin, sync::Arc, time::Duration};

use management_proto::{
    WgPublicKey,
    pb::{self, management_service_server::ManagementService},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    account::PeerMeta,
    activity::Initiator,
    model::now,
    netmap::{network_map, peer_config},
    service::Management,
};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Grpc {
    pub management: Arc<Management>,
}

fn meta_of(meta: &pb::PeerSystemMeta) -> PeerMeta {
    PeerMeta {
        hostname: meta.hostname.clone(),
        os: meta.go_os.clone(),
        kernel_version: meta.kernel_version.clone(),
        version: meta.netbird_version.clone(),
        supports_ipv6: meta
            .capabilities
            .contains(&(pb::PeerCapability::IPv6Overlay as i32))
            && !meta.flags.as_ref().is_some_and(|f| f.disable_i_pv6),
    }
}

impl Grpc {
    /// Opens a request body: the sender's key and the message sealed under it.
    fn open<M: prost::Message + Default>(
        &self,
        message: &pb::EncryptedMessage,
    ) -> Result<(WgPublicKey, M), Status> {
        let sender = message
            .sender()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let inner = self
            .management
            .key
            .open_message(&sender, message)
            .map_err(|e| Status::invalid_argument(format!("invalid request message: {e}")))?;
        Ok((sender, inner))
    }

    fn login(
        &self,
        sender: WgPublicKey,
        request: pb::LoginRequest,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<pb::LoginResponse, Status> {
        let Some(meta) = request.meta.as_ref() else {
            return Err(Status::failed_precondition(
                "peer system meta has to be provided to log in",
            ));
        };
        let meta = meta_of(meta);
        let key = sender.to_base64();
        let m = &self.management;
        let existing = m.read(|a| a.peer_by_key(&key).map(|p| p.id.clone()));
        let peer = match existing {
            Some(id) => {
                let at = now();
                // The expiry is checked here too: the sweeper may not have run yet.
                if m.read(|a| {
                    a.peers.get(&id).is_some_and(|p| {
                        p.login_expired
                            || (p.login_expiration_enabled
                                && p.login_expires_at != 0
                                && at >= p.login_expires_at)
                    })
                }) {
                    m.expire();
                    return Err(Status::permission_denied(
                        "peer login has expired, please log in once more",
                    ));
                }
                let name = m
                    .read(|a| a.peers.get(&id).map(|p| p.name.clone()))
                    .unwrap_or_default();
                m.change(
                    Initiator::Peer {
                        id: id.clone(),
                        name,
                    },
                    |a| a.login_peer(&id, &meta, at).map(|t| ((), t)),
                )?;
                m.read(|a| a.peers.get(&id).cloned())
                    .ok_or_else(|| Status::permission_denied("peer was deleted"))?
            }
            None if request.setup_key.trim().is_empty() => {
                return Err(Status::permission_denied(
                    "peer is not registered and no setup key was given",
                ));
            }
            None => {
                let network = m.settings.network;
                let peer = m.change(Initiator::System, |a| {
                    a.register_peer(&request.setup_key, &key, &meta, network, now())
                })?;
                tracing::info!(peer = %peer.id, ip = %peer.ip, "registered peer {}", peer.name);
                peer
            }
        };
        if let Some(addr) = remote {
            let ip = addr.ip().to_canonical().to_string();
            m.change(
                Initiator::Peer {
                    id: peer.id.clone(),
                    name: peer.name.clone(),
                },
                |a| Ok(((), a.set_connection_ip(&peer.id, &ip))),
            )?;
        }
        Ok(pb::LoginResponse {
            peer_config: Some(peer_config(&peer, &m.settings, m.read(|a| a.network_v6))),
            netbird_config: m.netbird_config(unix_now()),
            ..Default::default()
        })
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::EncryptedMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ManagementService for Grpc {
    async fn get_server_key(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::ServerKeyResponse>, Status> {
        let expires = std::time::SystemTime::now() + Duration::from_secs(24 * 3600);
        Ok(Response::new(pb::ServerKeyResponse {
            key: self.management.key.public().to_base64(),
            expires_at: Some(expires.into()),
            version: 0,
        }))
    }

    async fn is_healthy(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        Ok(Response::new(pb::Empty {}))
    }

    async fn login(
        &self,
        request: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::EncryptedMessage>, Status> {
        let (sender, login) = self.open::<pb::LoginRequest>(request.get_ref())?;
        let remote = request
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::tls::RemoteAddr>>()
            .map(|c| c.0.0);
        let response = self.login(sender, login, remote);
        let result = match &response {
            Ok(_) => "ok",
            Err(s) if s.code() == tonic::Code::PermissionDenied => "denied",
            Err(_) => "error",
        };
        self.management
            .metrics
            .logins
            .with_label_values(&[result])
            .inc();
        let response = response?;
        Ok(Response::new(
            self.management.key.seal_message(&sender, &response),
        ))
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<pb::EncryptedMessage>,
    ) -> Result<Response<SyncStream>, Status> {
        let (sender, _sync) = self.open::<pb::SyncRequest>(request.get_ref())?;
        let key = sender.to_base64();
        let m = self.management.clone();
        let Some(peer_id) = m.read(|a| a.peer_by_key(&key).map(|p| p.id.clone())) else {
            return Err(Status::permission_denied("peer is not registered"));
        };
        if m.read(|a| a.peers.get(&peer_id).is_some_and(|p| p.login_expired)) {
            return Err(Status::permission_denied(
                "peer login has expired, please log in once more",
            ));
        }
        // A client reconnecting in a loop must not pile up streams (each holds a task and maps).
        if !m.stream_opened(&peer_id) {
            return Err(Status::resource_exhausted(format!(
                "peer has {} Sync streams open already",
                crate::service::MAX_STREAMS_PER_PEER
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(push_maps(m, peer_id, sender, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the peer its map now and again whenever a change alters it, until the peer hangs up or
/// is deleted.
async fn push_maps(
    m: Arc<Management>,
    peer_id: String,
    peer_key: WgPublicKey,
    tx: mpsc::Sender<Result<pb::EncryptedMessage, Status>>,
) {
    let mut changes = m.subscribe();
    let mut last_sent: Option<pb::NetworkMap> = None;
    loop {
        changes.borrow_and_update();
        let map = m.read(|a| network_map(a, &peer_id, &m.settings));
        let expired = m.read(|a| a.peers.get(&peer_id).is_some_and(|p| p.login_expired));
        let Some(map) = map.filter(|_| !expired) else {
            // As NetBird: a last, empty map (deny everything), then the stream ends.
            let serial = m.read(|a| a.serial);
            let empty = pb::NetworkMap {
                serial,
                remote_peers_is_empty: true,
                firewall_rules_is_empty: true,
                routes_firewall_rules_is_empty: true,
                ..Default::default()
            };
            let _ = tx
                .send(Ok(m.key.seal_message(
                    &peer_key,
                    &pb::SyncResponse {
                        network_map: Some(empty),
                        ..Default::default()
                    },
                )))
                .await;
            let _ = tx
                .send(Err(Status::permission_denied(if expired {
                    "peer login has expired"
                } else {
                    "peer was deleted"
                })))
                .await;
            break;
        };
        // The serial alone does not make a new map (no copy of either map for the comparison).
        let unchanged = last_sent.as_mut().is_some_and(|prev| {
            prev.serial = map.serial;
            *prev == map
        });
        if !unchanged {
            // The first message carries the deployment's config (TURN credentials) too.
            let netbird_config = if last_sent.is_none() {
                m.netbird_config(unix_now())
            } else {
                None
            };
            let mut response = pb::SyncResponse {
                peer_config: map.peer_config.clone(),
                network_map: Some(map),
                netbird_config,
                ..Default::default()
            };
            if tx
                .send(Ok(m.key.seal_message(&peer_key, &response)))
                .await
                .is_err()
            {
                break;
            }
            m.metrics.map_pushes.inc();
            last_sent = response.network_map.take();
        }
        // TURN credentials and relay tokens expire: a message with the config alone renews them
        // at ¾ of their life.
        let refresh = m.credential_refresh();
        let renew = async {
            match refresh {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tx.closed() => break,
            _ = renew => {
                let response = pb::SyncResponse { netbird_config: m.netbird_config(unix_now()), ..Default::default() };
                if tx.send(Ok(m.key.seal_message(&peer_key, &response))).await.is_err() {
                    break;
                }
                changes.mark_changed();
            }
        }
    }
    m.stream_closed(&peer_id);
}
