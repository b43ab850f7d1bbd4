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
