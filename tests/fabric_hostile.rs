//! Hostile publishers on the fabric's nodes (issue 9, faults 1, 2, 4 and 7), through real Prosody
//! and ejabberd (stream management on): a corpus of hostile items published raw, a forged
//! heartbeat, and an Asterisk box sharing a key. Members (library buses and the real
//! `callfabric` binary) must stay online, stay correct, and never abort.

mod fabric_common;

use fabric_common::*;
use integration::raw_xmpp::RawXmpp;
use integration::{ServerKind, XmppServer};
use statebus::{Bus, DeviceState};
use std::time::Duration;

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
    hostile_corpus_leaves_members_online_and_correct,
    asterisk_keeps_its_shared_key
);

/// A raw client logged in and bound as `user`.
fn raw_login(s: &XmppServer, user: &str) -> RawXmpp {
    let mut c =
        RawXmpp::connect(s.c2s_addr(), s.domain(), Duration::from_secs(20)).expect("connect");
    assert!(
        c.sasl_plain(s.domain(), user, PASSWORD).expect("sasl"),
        "login {user}"
    );
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    c.iq(
        "set",
        None,
        &format!(
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>raw{n}</resource></bind>"
        ),
    )
    .expect("bind");
    c
}

fn publish_raw(c: &mut RawXmpp, s: &XmppServer, node: &str, item_id: &str, payload: &str) {
    let xml = format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item id='{item_id}'>{payload}</item></publish></pubsub>"
    );
    c.set_timeout(Duration::from_secs(20)); // a deadline, renewed per request
    c.iq("set", Some(s.pubsub_service()), &xml)
        .unwrap_or_else(|e| panic!("publishing {:.80}: {e:#}", item_id));
}

/// Publish one hostile item on its own connection. A server may refuse it or end that
/// stream; what matters is what it relays to the members. Returns whether it was accepted.
fn publish_hostile(s: &XmppServer, item_id: &str, payload: &str) -> bool {
    let mut c = raw_login(s, "asterisk");
    c.set_timeout(Duration::from_secs(10));
    let xml = format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='device_state'><item id='{item_id}'>{payload}</item></publish></pubsub>"
    );
    let ok = c.iq("set", Some(s.pubsub_service()), &xml).is_ok();
    eprintln!("hostile item {:.40}: accepted = {ok}", item_id);
    c.close();
    ok
}

fn state(eid: &str, body: &str) -> String {
    format!("<state xmlns='http://asterisk.org' eid='{eid}' cachable='1'>{body}</state>")
}

const AST: &str = "00:11:22:33:44:55";

/// Faults 1, 2 and 7 and the hostile corpus: deep nesting, 64 kB ids and attributes, odd
/// namespaces, many elements, thousands of items, a forged heartbeat, bad entities.
async fn hostile_corpus_leaves_members_online_and_correct(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = bus(&s, "watcher", eid(3)).await;
    let cfg = write_config(&s, dir.path(), "gw-b", "02:00:00:00:00:0b", "");
    let mut b = Member::publish(&cfg, &["PJSIP/b1=INUSE"]);
    until_state(&w, "PJSIP/b1", DeviceState::InUse).await;

    let mut m = raw_login(&s, "asterisk");
    // An Asterisk-like device that never heartbeats: it must never expire.
    publish_raw(
        &mut m,
        &s,
        "device_state",
        "PJSIP/1000",
        &state(AST, "INUSE"),
    );
    until_state(&w, "PJSIP/1000", DeviceState::InUse).await;
    // 1. The crash: ~1000 nested elements.
    let deep = format!("{}INUSE{}", "<a>".repeat(1000), "</a>".repeat(1000));
    let mut accepted = publish_hostile(&s, "PJSIP/deep", &state(AST, &deep));
    // 2. The wedge: a 64 kB item id, a 64 kB attribute.
    let long_id = "L".repeat(64 * 1024);
    accepted |= publish_hostile(&s, &long_id, &state(AST, "INUSE"));
    let big_attr = format!(
        "<state xmlns='http://asterisk.org' eid='{AST}' cachable='1' x='{}'>INUSE</state>",
        "v".repeat(64 * 1024)
    );
    accepted |= publish_hostile(&s, "PJSIP/bigattr", &big_attr);
    assert!(
        accepted,
        "the server refused every hostile item: nothing tested"
    );
    // Odd namespaces and shapes, harmless to the guard. The payload's namespace is not looked
    // at (as in res_xmpp: PJSIP/odd is a device state); a state without leading text is
    // ignored (res_xmpp would pass NULL to strcasecmp).
    publish_hostile(
        &s,
        "PJSIP/odd",
        &format!("<state xmlns='http://asterisk.org/evil' eid='{AST}'>ONHOLD</state>"),
    );
    publish_hostile(&s, "PJSIP/notext", &state(AST, "<x/>INUSE"));
    publish_hostile(&s, "PJSIP/many", &state(AST, &"<x/>".repeat(500)));
    // 7. Forgery: a heartbeat for the Asterisk EID, published on device_state, 10 minutes old.
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        - 600;
    publish_raw(
        &mut m,
        &s,
        "device_state",
        AST,
        &format!("<heartbeat xmlns='urn:callfabric:fabric:0' eid='{AST}' site='x' role='gateway' version='0' time='{old}'/>"),
    );
    // Thousands of items.
    for i in 0..900 {
        publish_raw(
            &mut m,
            &s,
            "device_state",
            &format!("Custom:flood{i}"),
            &state(AST, "NOT_INUSE"),
        );
    }
    publish_raw(
        &mut m,
        &s,
        "device_state",
        "Custom:last",
        &state(AST, "BUSY"),
    );
    m.close();
    // Bad entities: the server refuses them and ends the sender's stream, nobody else's.
    let mut bad = raw_login(&s, "asterisk");
    let _ = bad.send(&format!(
        "<iq type='set' id='bad' to='{}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='device_state'><item id='PJSIP/ent'>{}</item></publish></pubsub></iq>",
        s.pubsub_service(),
        state(AST, "IN&bogus;USE&#0;")
    ));

    // Live subscribers: still online, still correct, the hostile items dropped and counted.
    until_state(&w, "Custom:last", DeviceState::Busy).await;
    until("the watcher counted the dropped items", || {
        w.stats().items_dropped >= 3
    })
    .await;
    assert_eq!(
        w.stats().connects,
        1,
        "the watcher reconnected: {:?}",
        w.stats()
    );
    assert!(w.is_online());
    assert_eq!(w.device_state("PJSIP/deep"), None);
    assert_eq!(w.device_state("PJSIP/bigattr"), None);
    assert_eq!(w.device_state("PJSIP/odd"), Some(DeviceState::OnHold));
    assert_eq!(w.device_state("PJSIP/notext"), None);
    assert_eq!(w.device_state("PJSIP/many"), None);
    assert!(b.alive(), "the callfabric member died: {}", b.stderr());
    // The forged heartbeat did not make the Asterisk EID expirable: two TTLs later its device
    // still reads INUSE.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        w.device_state("PJSIP/1000"),
        Some(DeviceState::InUse),
        "forged heartbeat expired Asterisk's device"
    );
    assert!(
        !w.snapshot().peers.contains_key(&asterisk_eid()),
        "forged heartbeat taken as a member"
    );
    // Members keep working: a new state from B's replacement and from a library member flow.
    let a = bus(&s, "gw-a", eid(1)).await;
    a.publish_device_state("PJSIP/a1", DeviceState::Ringing);
    until_state(&w, "PJSIP/a1", DeviceState::Ringing).await;
    // Joiners and restarts fetch every hostile item stored on the server and survive it.
    assert!(
        a.stats().items_dropped >= 3,
        "the fetch path was not guarded: {:?}",
        a.stats()
    );
    assert_eq!(a.device_state("PJSIP/b1"), Some(DeviceState::InUse));
    assert_eq!(a.device_state("Custom:last"), Some(DeviceState::Busy));
    assert_eq!(
        a.device_state("Custom:flood899"),
        Some(DeviceState::NotInUse)
    );
    b.kill();
    let cfg2 = write_config(&s, dir.path(), "acd-1", "02:00:00:00:00:0c", "");
    let mut c = Member::publish(&cfg2, &["PJSIP/c1=ONHOLD"]);
    until_state(&w, "PJSIP/c1", DeviceState::OnHold).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        c.alive(),
        "a restarted member died on the stored items: {}",
        c.stderr()
    );
    assert_eq!(
        w.stats().connects,
        1,
        "the watcher reconnected: {:?}",
        w.stats()
    );
}

/// Fault 4: an Asterisk box and a member publish the same key. The member never retracts or
/// overwrites Asterisk's item (it takes its per-EID item id), Asterisk keeps publishing, and
/// everyone sees both contributions.
async fn asterisk_keeps_its_shared_key(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = bus(&s, "watcher", eid(3)).await;
    asterisk_publish(&s, &["Custom:shared=INUSE"]).expect("Asterisk publishes first");
    until_state(&w, "Custom:shared", DeviceState::InUse).await;
    let cfg = write_config(&s, dir.path(), "gw-b", "02:00:00:00:00:0b", "");
    let mut b = Member::publish(&cfg, &["Custom:shared=RINGING"]);
    let b_eid: statebus::Eid = "02:00:00:00:00:0b".parse().expect("eid");
    until("both contributions", || {
        let d = w.device_detail("Custom:shared");
        d.contains(&(asterisk_eid(), DeviceState::InUse))
            && d.contains(&(b_eid, DeviceState::Ringing))
    })
    .await;
    until_state(&w, "Custom:shared", DeviceState::RingInUse).await;
    // Asterisk keeps publishing its key (on ejabberd a taken-over item refused it).
    asterisk_publish(&s, &["Custom:shared=NOT_INUSE"]).expect("Asterisk publishes again");
    until_state(&w, "Custom:shared", DeviceState::Ringing).await;
    // The server holds both items: a late joiner sees both contributions.
    let late = bus(&s, "acd-1", eid(9)).await;
    until("late joiner sees both", || {
        let d = late.device_detail("Custom:shared");
        d.contains(&(asterisk_eid(), DeviceState::NotInUse))
            && d.contains(&(b_eid, DeviceState::Ringing))
    })
    .await;
    let out = asterisk_peer(&s, "fetch", &[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ITEM device_state Custom:shared ") && l.contains(AST)),
        "Asterisk's item was overwritten: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ITEM device_state Custom:shared;eid=02:00:00:00:00:0b ")),
        "the member's per-EID item is missing: {out}"
    );
    assert!(b.alive(), "{}", b.stderr());
}
