//! A device database migrated before the queue_log table moved from the gateway's migrations to
//! the ACD's (version 20261127000002 created `cdr` and `queue_log`) still opens in the gateway
//! and in the ACD, and keeps its rows. No peer needed: SQLite in a temporary directory.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// The pre-split migration set: devices, records (cdr + queue_log), device digest, as
/// `_sqlx_migrations` recorded them.
fn pre_split() -> Migrator {
    let m = |version: i64, description: &'static str, sql: String| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        m(
            20261127000001,
            "devices",
            include_str!("../gateway/migrations/20261127000001_devices.sql").into(),
        ),
        m(
            20261127000002,
            "records",
            [
                include_str!("../gateway/migrations/20261206183000_cdr.sql"),
                include_str!("../acd/migrations/20261206000001_queue_log.sql"),
            ]
            .concat(),
        ),
        m(
            20261127000003,
            "device digest",
            include_str!("../gateway/migrations/20261127000003_device_digest.sql").into(),
        ),
    ])
}

#[tokio::test]
async fn pre_split_database_opens_in_gateway_and_acd_and_keeps_queue_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("site.db").display());
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("{url}?mode=rwc"))
            .await
            .expect("create the old database");
        pre_split().run(&pool).await.expect("old migrations");
        sqlx::query(
            "INSERT INTO queue_log (time, callid, queuename, agent, event, data1, data2, data3, data4, data5) \
             VALUES (100, 'acd-1', 'support', 'NONE', 'ENTERQUEUE', '', '1001', '1', '', '')",
        )
        .execute(&pool)
        .await
        .expect("an old queue_log row");
        pool.close().await;
    }

    let devices = gateway::devices::DeviceStore::open(&url)
        .await
        .expect("the gateway opens a pre-split database");
    assert!(devices.cdrs().await.expect("cdr table").is_empty());
    let queue_log = acd::queue_log::QueueLogStore::open(&url)
        .await
        .expect("the ACD opens a pre-split database");
    let rows = queue_log.rows().await.expect("queue_log table");
    assert_eq!(
        rows,
        vec![acd::queue_log::QueueLogRow {
            time: 100,
            callid: "acd-1".into(),
            queuename: "support".into(),
            agent: "NONE".into(),
            event: "ENTERQUEUE".into(),
            data: vec!["".into(), "1001".into(), "1".into()],
        }]
    );
    // Both again, in the other order: nothing is applied twice.
    acd::queue_log::QueueLogStore::open(&url)
        .await
        .expect("ACD again");
    gateway::devices::DeviceStore::open(&url)
        .await
        .expect("gateway again");
}

/// A fresh database gets `cdr` from the gateway and `queue_log` from the ACD, in either order.
#[tokio::test]
async fn fresh_database_gets_both_tables_in_either_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, acd_first) in [false, true].into_iter().enumerate() {
        let url = format!("sqlite://{}", dir.path().join(format!("{i}.db")).display());
        if acd_first {
            acd::queue_log::QueueLogStore::open(&url)
                .await
                .expect("acd");
        }
        let devices = gateway::devices::DeviceStore::open(&url)
            .await
            .expect("gateway");
        let queue_log = acd::queue_log::QueueLogStore::open(&url)
            .await
            .expect("acd");
        assert!(devices.cdrs().await.expect("cdr table").is_empty());
        assert!(queue_log.rows().await.expect("queue_log table").is_empty());
    }
}

/// The gateway's migration set as a database got it before durable registrations (`main` up to
/// the cdr linkedid), and as h5's branch made it (`registrations` numbered 20261206000001,
/// before the cdr table's own): both open, get or keep the `registrations` table, and store and
/// read back bindings.
#[tokio::test]
async fn databases_from_before_durable_registrations_get_the_registrations_table() {
    let m = |version: i64, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            AssertSqlSafe(sql.to_owned()).into_sql_str(),
            false,
        )
    };
    let base = || {
        vec![
            m(
                20261127000001,
                "devices",
                include_str!("../gateway/migrations/20261127000001_devices.sql"),
            ),
            m(
                20261127000003,
                "device digest",
                include_str!("../gateway/migrations/20261127000003_device_digest.sql"),
            ),
            m(
                20261206183000,
                "cdr",
                include_str!("../gateway/migrations/20261206183000_cdr.sql"),
            ),
            m(
                20261206190000,
                "cdr linkedid",
                include_str!("../gateway/migrations/20261206190000_cdr_linkedid.sql"),
            ),
        ]
    };
    let before = base();
    let mut h5 = base();
    h5.push(m(
        20261206000001,
        "registrations",
        include_str!("../gateway/migrations/20261206200000_registrations.sql"),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    sqlx::any::install_default_drivers();
    for (name, set) in [("before", before), ("h5", h5)] {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{name}.db")).display()
        );
        {
            let pool = sqlx::AnyPool::connect(&format!("{url}?mode=rwc"))
                .await
                .expect("create the old database");
            Migrator::with_migrations(set)
                .run(&pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: old migrations: {e}"));
            pool.close().await;
        }
        let store = gateway::devices::DeviceStore::open(&url)
            .await
            .unwrap_or_else(|e| panic!("{name}: the gateway opens it: {e}"));
        let now = std::time::SystemTime::now();
        let aor = "sip:1000@site.example";
        let b = gateway::registrar::store::StoredBinding {
            aor: aor.into(),
            uri: "sip:1000@127.0.0.1:5070".into(),
            params: String::new(),
            expires_at: now + std::time::Duration::from_secs(600),
            call_id: "c1".into(),
            cseq: 3,
            transport: "udp".into(),
            source: "127.0.0.1:5070".into(),
            local: "127.0.0.1:5060".into(),
        };
        store
            .save_bindings("gw", &vec![(aor.into(), vec![b.clone()])])
            .await
            .unwrap_or_else(|e| panic!("{name}: save: {e}"));
        let got = store.load_bindings("gw", now).await.expect("load");
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0].uri, b.uri, "{name}");
        // Opened again: nothing applied twice.
        gateway::devices::DeviceStore::open(&url)
            .await
            .unwrap_or_else(|e| panic!("{name}: again: {e}"));
    }
}
