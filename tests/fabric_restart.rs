//! The fabric through server crashes and member restarts (issue 9, faults 3, 5 and 6), against
//! real Prosody and ejabberd (stream management on, as ejabberd ships). Every wait polls a
//! condition with a timeout.

mod fabric_common;

use fabric_common::*;
use integration::ServerKind;
use statebus::{Bus, DeviceState};

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prosody() {
                super::$name(integration::ServerKind::Prosody).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ejabberd() {
                super::$name(integration::ServerKind::Ejabberd).await
            }
        }
    )*};
}

on_both_servers!(server_crash_converges);

/// Fault 3: `kill -9` of the server and a restart on the same data. ejabberd refuses the
/// stream resumption ("Previous session not found"); the members must log in afresh, resync,
/// and the fabric must work again — and the member processes (the real binary) too.
async fn server_crash_converges(kind: ServerKind) {
    let mut s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = bus(&s, "gw-a", eid(1)).await;
    let cfg = write_config(&s, dir.path(), "gw-b", "02:00:00:00:00:0b", "");
    let mut b = Member::publish(&cfg, &["PJSIP/b1=INUSE"]);
    until_state(&a, "PJSIP/b1", DeviceState::InUse).await;
    a.publish_device_state("PJSIP/a1", DeviceState::Ringing);
    until("A's publish acked", || a.stats().publish_acked >= 1).await;
    let connects = a.stats().connects;
    s.kill().expect("kill -9 the server");
    a.publish_device_state("PJSIP/a1", DeviceState::OnHold);
    s.start_again()
        .expect("restart the server on the same data");
    until(
        format!("A logs in afresh (connects {:?})", a.stats()),
        || a.stats().connects > connects && a.is_online(),
    )
    .await;
    // The fabric works again both ways, and the binary member came back by itself.
    let w = bus(&s, "watcher", eid(3)).await;
    until_state(&w, "PJSIP/a1", DeviceState::OnHold).await;
    until_state(&w, "PJSIP/b1", DeviceState::InUse).await;
    a.publish_device_state("PJSIP/a1", DeviceState::NotInUse);
    until_state(&w, "PJSIP/a1", DeviceState::NotInUse).await;
    let b_eid: statebus::Eid = "02:00:00:00:00:0b".parse().expect("eid");
    until("B heartbeats again after the crash", || {
        w.snapshot().peers.get(&b_eid).map(|p| p.1) == Some(true)
    })
    .await;
    // Converged and quiet: no reconnect storm.
    let c0 = a.stats().connects;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(a.stats().connects, c0, "A keeps reconnecting");
    assert!(b.alive(), "the callfabric member died: {}", b.stderr());
}
