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

on_both_servers!(
    server_crash_converges,
    restart_shows_present_state,
    heal_restores_state_at_once,
    // Prosody runs on SQL storage (tigase-config/prosody.cfg.lua.in): with the internal file
    // store each publish rewrote the node's item archive (906 acks in 240 s).
    five_thousand_keys_reach_a_late_joiner,
    nearly_full_node_warns,
);

/// Fault 3: `kill -9` of the server and a restart on the same data. ejabberd refuses the
/// stream resumption ("Previous session not found"); the members must log in afresh, resync,
/// and the fabric must work again — and the member processes (the real binary) too. A has
/// XEP-0198 stream management on (off by default), so the refused resumption is exercised.
async fn server_crash_converges(kind: ServerKind) {
    let mut s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = bus_with(&s, "gw-a", eid(1), |c| c.stream_management = true).await;
    let w = bus(&s, "watcher", eid(3)).await;
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
    // A kill -9 loses what ejabberd wrote in its last 2 s (Mnesia's disk_log write cache):
    // the accounts too, registered a second earlier, and a member refused `not-authorized`
    // never comes back (W then shows A's devices UNAVAILABLE: CI, c9b47ce). That is the
    // server's durability, not this test's subject: the harness registers them again. The
    // PubSub nodes, affiliations, subscriptions and items lost with them stay lost: the
    // members' resync must rebuild those.
    s.restore_accounts()
        .expect("restore the accounts the crash lost");
    until(
        format!("A logs in afresh (connects {:?})", a.stats()),
        || a.stats().connects > connects && a.is_online(),
    )
    .await;
    // The fabric works again both ways, and the binary member came back by itself.
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

/// Fault 5: a member killed and restarted within a second, holding less than before. What it
/// no longer holds is withdrawn before it reports Online; the fabric shows exactly its present
/// state within seconds, and so does a late joiner.
async fn restart_shows_present_state(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = bus(&s, "watcher", eid(3)).await;
    let cfg = write_config(&s, dir.path(), "gw-b", "02:00:00:00:00:0b", "");
    let mut b = Member::publish(
        &cfg,
        &["PJSIP/r1=INUSE", "PJSIP/r2=RINGING", "PJSIP/r3=ONHOLD"],
    );
    until_state(&w, "PJSIP/r3", DeviceState::OnHold).await;
    until_state(&w, "PJSIP/r2", DeviceState::Ringing).await;
    b.kill();
    let restarted = tokio::time::Instant::now();
    let mut b = Member::publish(&cfg, &["PJSIP/r1=NOT_INUSE"]);
    until_state(&w, "PJSIP/r1", DeviceState::NotInUse).await;
    until_state(&w, "PJSIP/r2", DeviceState::Invalid).await;
    until_state(&w, "PJSIP/r3", DeviceState::Invalid).await;
    let took = restarted.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "converged only after {took:?}"
    );
    let late = bus(&s, "acd-1", eid(9)).await;
    assert_eq!(late.device_state("PJSIP/r1"), Some(DeviceState::NotInUse));
    for k in ["PJSIP/r2", "PJSIP/r3"] {
        assert!(
            matches!(late.device_state(k), None | Some(DeviceState::Invalid)),
            "{k} came back as {:?}",
            late.device_state(k)
        );
    }
    assert!(b.alive(), "{}", b.stderr());
}

/// Fault 6: more keys than the old 1,000-item default. With the default `max_items` (10,000)
/// a late joiner sees all 5,000 keys, the first ones included.
async fn five_thousand_keys_reach_a_late_joiner(kind: ServerKind) {
    let s = server(kind);
    // 5,000 publishes queue behind each other on a loaded machine: IQ timeouts and the TTL
    // (heartbeats wait in the same queue) sized for it; this test is about node size.
    let slow = |c: &mut statebus::XmppBusConfig| {
        c.iq_timeout = std::time::Duration::from_secs(120);
        c.liveness_ttl = std::time::Duration::from_secs(300);
    };
    let a = bus_with(&s, "gw-a", eid(1), slow).await;
    for i in 0..5000 {
        a.publish_device_state(&format!("PJSIP/{i}"), DeviceState::NotInUse);
    }
    let t0 = tokio::time::Instant::now();
    while a.stats().publish_acked < 5000 {
        // A loaded machine runs 5,000 publish round trips slowly: a generous bound.
        let waited = t0.elapsed();
        assert!(
            waited < std::time::Duration::from_secs(240),
            "5000 acks: {:?}",
            a.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("{kind}: 5000 publishes acked in {:?}", t0.elapsed());
    let late = bus_with(&s, "acd-1", eid(9), slow).await;
    let n = late.snapshot().devices.len();
    assert_eq!(n, 5000, "the late joiner saw {n} keys");
    assert_eq!(late.device_state("PJSIP/0"), Some(DeviceState::NotInUse));
    assert_eq!(late.device_state("PJSIP/4999"), Some(DeviceState::NotInUse));
}

/// Issue 9: a warning as the key count nears `max_items` (90 %), once, from the member that
/// fills the node and from a member that joins later (it learns the count from its fetch).
async fn nearly_full_node_warns(kind: ServerKind) {
    let s = server(kind);
    let small = |c: &mut statebus::XmppBusConfig| c.max_items = 20;
    let a = bus_with(&s, "gw-a", eid(1), small).await;
    for i in 0..17 {
        a.publish_device_state(&format!("PJSIP/{i}"), DeviceState::InUse);
    }
    until("17 publishes acked", || a.stats().publish_acked >= 17).await;
    assert_eq!(a.stats().nodes_nearly_full, 0, "warned at 17 of 20");
    a.publish_device_state("PJSIP/17", DeviceState::InUse);
    until("A warns at 18 of 20", || a.stats().nodes_nearly_full == 1).await;
    a.publish_device_state("PJSIP/18", DeviceState::InUse);
    a.publish_device_state("PJSIP/0", DeviceState::Busy);
    until("20 publishes acked", || a.stats().publish_acked >= 20).await;
    assert_eq!(a.stats().nodes_nearly_full, 1, "the warning repeats");
    let late = bus_with(&s, "acd-1", eid(9), small).await;
    until_state(&late, "PJSIP/18", DeviceState::InUse).await;
    until("the late joiner warns", || {
        late.stats().nodes_nearly_full == 1
    })
    .await;
    assert_eq!(late.snapshot().devices.len(), 19);
}

/// A member silent past the TTL (here: its process stopped with SIGSTOP) expires; when it is
/// heard again its devices get their state back at once (its items are fetched on its first
/// heartbeat), not when they next change.
async fn heal_restores_state_at_once(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = bus(&s, "watcher", eid(3)).await;
    let cfg = write_config(&s, dir.path(), "gw-b", "02:00:00:00:00:0b", "");
    let mut b = Member::publish(&cfg, &["PJSIP/h1=INUSE"]);
    until_state(&w, "PJSIP/h1", DeviceState::InUse).await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &b.0.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    until_state(&w, "PJSIP/h1", DeviceState::Unavailable).await;
    signal("-CONT");
    let healed = tokio::time::Instant::now();
    until_state(&w, "PJSIP/h1", DeviceState::InUse).await;
    let took = healed.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "state back only after {took:?}"
    );
    assert!(b.alive(), "{}", b.stderr());
}
