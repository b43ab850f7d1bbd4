//! `save_bindings` with a batch larger than one statement of each kind (more AORs than one
//! `DELETE` names, more rows than one `INSERT` writes), several contacts per AOR, AORs emptied,
//! replaced and named twice: what `load_bindings` reads back is exactly what was written.
//! Included by the SQLite test (`gateway/tests/registrations_store.rs`) and the PostgreSQL one
//! (`tests/gateway_postgres.rs`).

use gateway::devices::DeviceStore;
use gateway::registrar::store::{unix_ms, BindingBatch, StoredBinding, DELETE_CHUNK, INSERT_CHUNK};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type ByAor = BTreeMap<String, Vec<StoredBinding>>;

/// AOR `i`'s set in `round`: 1 to 3 contacts, each differing in every column.
fn set(i: usize, round: u16, later: SystemTime) -> (String, Vec<StoredBinding>) {
    let aor = format!("sip:{}@site.example", 1000 + i);
    let rows = (0..1 + i % 3)
        .map(|c| {
            let port = 10_000 + u16::try_from(c).expect("port") * 1000 + round;
            StoredBinding {
                aor: aor.clone(),
                uri: format!("sip:{}@10.0.{}.{}:{port}", 1000 + i, i / 250, i % 250),
                params: format!(";+sip.instance=\"<urn:uuid:{i}-{c}>\""),
                expires_at: later + Duration::from_millis(u64::try_from(i * 10 + c).expect("ms")),
                call_id: format!("cid-{i}-{round}"),
                cseq: u32::try_from(i).expect("cseq") + u32::from(round),
                transport: if c == 1 { "tcp" } else { "udp" }.into(),
                source: format!("192.0.2.{}:{port}", i % 250),
                local: "127.0.0.1:5060".into(),
            }
        })
        .collect();
    (aor, rows)
}

/// `batch` applied to `m` in order: a set replaces, an empty set removes.
fn apply(m: &mut ByAor, batch: &BindingBatch) {
    for (aor, list) in batch {
        if list.is_empty() {
            m.remove(aor);
        } else {
            let mut v = list.clone();
            v.sort_by(|a, b| a.uri.cmp(&b.uri));
            m.insert(aor.clone(), v);
        }
    }
}

fn by_aor(got: Vec<StoredBinding>) -> ByAor {
    let mut m = ByAor::new();
    for b in got {
        m.entry(b.aor.clone()).or_default().push(b);
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.uri.cmp(&b.uri));
    }
    m
}

/// `got` is `want`; otherwise names the first AOR that differs.
fn same(got: &ByAor, want: &ByAor, what: &str) {
    if got == want {
        return;
    }
    let aor = want
        .keys()
        .chain(got.keys())
        .find(|a| got.get(*a) != want.get(*a))
        .expect("a difference");
    panic!(
        "{what} did not read back as written: {aor}: got {:?}, wrote {:?}",
        got.get(aor),
        want.get(aor)
    );
}

pub async fn round_trip(store: &DeviceStore) {
    let now = SystemTime::now();
    // Stored to the millisecond: a whole millisecond, so it reads back equal.
    let later = UNIX_EPOCH
        + Duration::from_millis(u64::try_from(unix_ms(now)).expect("ms"))
        + Duration::from_secs(3600);
    let aors = DELETE_CHUNK + 7;
    let first: BindingBatch = (0..aors).map(|i| set(i, 0, later)).collect();
    let rows: usize = first.iter().map(|(_, r)| r.len()).sum();
    assert!(rows > INSERT_CHUNK && aors > DELETE_CHUNK, "{rows} rows");
    store.save_bindings("gw-a", &first).await.expect("save");
    // Another node's rows for the same AOR stay apart.
    store
        .save_bindings("gw-b", &vec![set(0, 9, later)])
        .await
        .expect("other node");
    let mut want = ByAor::new();
    apply(&mut want, &first);
    let got = by_aor(store.load_bindings("gw-a", now).await.expect("load"));
    assert_eq!(got.len(), aors);
    same(&got, &want, "the first batch");

    // Second batch, again over one chunk: every third AOR emptied, the others given a new
    // set, AOR 1 named twice (its last set counts).
    let mut second: BindingBatch = (0..aors)
        .map(|i| {
            if i % 3 == 0 {
                (format!("sip:{}@site.example", 1000 + i), Vec::new())
            } else {
                set(i, 1, later)
            }
        })
        .collect();
    second.push(set(1, 2, later));
    store.save_bindings("gw-a", &second).await.expect("save");
    apply(&mut want, &second);
    let got = by_aor(store.load_bindings("gw-a", now).await.expect("load"));
    assert_eq!(got.len(), aors - aors.div_ceil(3), "emptied AORs are gone");
    same(&got, &want, "the second batch");
    assert_eq!(
        got["sip:1001@site.example"][0].call_id, "cid-1-2",
        "the AOR named twice has its last set"
    );
    let other = store.load_bindings("gw-b", now).await.expect("load");
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0].call_id, "cid-0-9");
}
