//! The sync client against the real management service, in-process over loopback: events, not
//! kernel state (the namespace tests cover the data plane).

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("gateway-sync-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an event within 5 s").expect("sync task alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_follows_maps_and_stops_when_refused() {
    let data = dir("mgmt");
    let state = dir("state");
    let mut options = management::Options::new(&data.0);
    options.api_token = Some("token-for-tests".into());
    let m = Arc::new(management::Management::open(&options).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(management::serve(m.clone(), listener, std::future::pending()));

    let now = management::model::now();
    let secret = m
        .change(|a| {
            let key = management::model::SetupKey {
                id: "k".into(), key: "SECRET-KEY".into(), name: "k".into(), kind: management::model::SetupKeyType::OneOff,
                created_at: now, expires_at: 0, updated_at: now, last_used: 0, revoked: false, used_times: 0, usage_limit: 1,
                auto_groups: vec![], ephemeral: false,
            };
            a.put_setup_key(key).map(|t| ("SECRET-KEY".to_string(), t))
        })
        .unwrap();

    let (tx, mut rx) = mpsc::channel(8);
    let opts = SyncOptions { url: url.clone(), setup_key: Some(secret), state_dir: state.0.clone() };
    tokio::spawn(run(opts.clone(), Identity::load_or_create(&state.0).unwrap(), tx));
    assert!(matches!(next(&mut rx).await, Event::Connected(true)));
    let Event::Map(first, _) = next(&mut rx).await else { panic!("expected a map") };
    assert!(first.policy.policies.is_empty(), "nothing allowed yet");
    assert!(Identity::load_or_create(&state.0).unwrap().is_registered());

    // A change the peer cares about arrives as a newer map.
    let peer_id = m.read(|a| a.peers.keys().next().unwrap().clone());
    m.change(|a| {
        let mut p = a.peers[&peer_id].clone();
        p.ip = "100.64.0.1".parse().unwrap();
        a.update_peer(p).map(|t| ((), t))
    })
    .unwrap();
    let Event::Map(second, _) = next(&mut rx).await else { panic!("expected a map") };
    assert!(second.serial > first.serial);
    assert_eq!(second.own_address.to_string(), "100.64.0.1");

    // Deleted: the last empty map, then the end.
    m.change(|a| a.delete_peer(&peer_id).map(|t| ((), t))).unwrap();
    let mut fatal = None;
    for _ in 0..4 {
        match next(&mut rx).await {
            Event::Fatal(why) => {
                fatal = Some(why);
                break;
            }
            _ => continue,
        }
    }
    let why = fatal.expect("the client gives up");
    assert!(why.contains("PermissionDenied"), "{why}");
}
