//! The `registrations` table (durable registrations) on SQLite: an AOR's set is replaced
//! whole, an empty set removes it, rows past their absolute expiry are dropped (and deleted)
//! on load, and each gateway node reads back only its own rows.

use std::time::{Duration, SystemTime};

use gateway::devices::DeviceStore;
use gateway::registrar::store::{unix_ms, StoredBinding};

fn binding(aor: &str, port: u16, expires_at: SystemTime) -> StoredBinding {
    StoredBinding {
        aor: aor.into(),
        uri: format!("sip:u@127.0.0.1:{port}"),
        params: ";+sip.instance=\"<urn:uuid:1>\"".into(),
        expires_at,
        call_id: format!("cid-{port}"),
        cseq: 7,
        transport: "udp".into(),
        source: format!("127.0.0.1:{port}"),
        local: "127.0.0.1:5060".into(),
    }
}

#[tokio::test]
async fn bindings_replaced_expired_dropped_per_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let store = DeviceStore::open(&url).await.expect("open");
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);
    let a = "sip:1000@site.example";
    let b = "sip:1001@site.example";

    store
        .save_bindings(
            "gw-a",
            &vec![
                (
                    a.into(),
                    vec![binding(a, 5001, later), binding(a, 5002, later)],
                ),
                (
                    b.into(),
                    vec![binding(b, 5003, now + Duration::from_millis(50))],
                ),
            ],
        )
        .await
        .expect("save");
    store
        .save_bindings("gw-b", &vec![(a.into(), vec![binding(a, 5009, later)])])
        .await
        .expect("save another node's");
    let got = store.load_bindings("gw-a", now).await.expect("load");
    assert_eq!(got.len(), 3, "{got:?}");
    let first = got
        .iter()
        .find(|g| g.source == "127.0.0.1:5001")
        .expect("5001");
    assert_eq!(first, &binding(a, 5001, first.expires_at));
    // Stored to the millisecond.
    assert_eq!(unix_ms(first.expires_at), unix_ms(later));

    // A new set for `a` replaces the old one; `b` lapses.
    store
        .save_bindings("gw-a", &vec![(a.into(), vec![binding(a, 5004, later)])])
        .await
        .expect("replace");
    let t = now + Duration::from_secs(1);
    let got = store.load_bindings("gw-a", t).await.expect("load");
    let sources: Vec<&str> = got.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(sources, ["127.0.0.1:5004"], "{got:?}");
    // The lapsed row was deleted, not just skipped: still gone when asked as of `now`.
    let got = store.load_bindings("gw-a", now).await.expect("load");
    assert!(got.iter().all(|g| g.aor != b), "{got:?}");

    // An empty set removes the AOR; the other node's rows are untouched.
    store
        .save_bindings("gw-a", &vec![(a.into(), Vec::new())])
        .await
        .expect("remove");
    assert!(store
        .load_bindings("gw-a", t)
        .await
        .expect("load")
        .is_empty());
    let other = store.load_bindings("gw-b", t).await.expect("load");
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].source, "127.0.0.1:5009");
}

#[path = "support/big_batch.rs"]
mod big_batch;

/// A batch larger than one statement of each kind on SQLite (`tests/gateway_postgres.rs` runs
/// the same on PostgreSQL).
#[tokio::test]
async fn a_batch_larger_than_one_chunk_reads_back_exactly() {
    let db = sqlstore::TempSqlite::new();
    let store = DeviceStore::open(db.url()).await.expect("open");
    big_batch::round_trip(&store).await;
}

/// A batch that fails half-way (two rows with one contact key: the primary key refuses the
/// second) changes nothing, and leaves no transaction open behind it: the next batches are
/// written at once (a connection returned to the pool inside a transaction would hold
/// SQLite's write lock, and the next write on another connection would wait 5 s and fail).
#[tokio::test]
async fn a_failed_batch_changes_nothing_and_the_next_ones_are_written() {
    let db = sqlstore::TempSqlite::new();
    let store = DeviceStore::open(db.url()).await.expect("open");
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);
    let a = "sip:1000@site.example";
    let b = "sip:1001@site.example";
    store
        .save_bindings("gw-a", &vec![(a.into(), vec![binding(a, 5001, later)])])
        .await
        .expect("save");
    for round in 0..6u16 {
        let bad = vec![
            (b.into(), vec![binding(b, 5100 + round, later)]),
            (
                a.into(),
                vec![binding(a, 5002, later), binding(a, 5002, later)],
            ),
        ];
        assert!(
            store.save_bindings("gw-a", &bad).await.is_err(),
            "a duplicate contact key must fail"
        );
        let got = store.load_bindings("gw-a", now).await.expect("load");
        let sources: Vec<&str> = got.iter().map(|g| g.source.as_str()).collect();
        assert_eq!(sources, ["127.0.0.1:5001"], "nothing of the failed batch");
        let t0 = std::time::Instant::now();
        store
            .save_bindings(
                "gw-a",
                &vec![(b.into(), vec![binding(b, 5200 + round, later)])],
            )
            .await
            .expect("the next batch");
        store
            .save_bindings("gw-a", &vec![(b.into(), Vec::new())])
            .await
            .expect("and the one after");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
}
