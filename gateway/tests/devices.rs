//! Devices in SQLite through sqlx: created and migrated on first open, edits visible after a
//! reload, and the cache keeps serving when the database goes away.

use gateway::devices::{DeviceCache, DeviceRecord, DeviceStore, Reload};

#[tokio::test]
async fn sqlite_created_migrated_reloaded_and_survives_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/dir/devices.db");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let url = format!("sqlite://{}", path.display());
    let store = DeviceStore::open(&url)
        .await
        .expect("open creates and migrates");
    assert!(path.exists(), "database file created");
    // Opening again is idempotent (migrations already applied).
    let again = DeviceStore::open(&url).await.expect("reopen");
    again.close().await;

    let mut alice = DeviceRecord::with_password("1000", "site-a", "s3cret");
    alice.extension = Some("1000".into());
    alice.site = "a".into();
    store.upsert(&alice).await.expect("insert");
    store
        .upsert(&DeviceRecord::with_password("1001", "site-a", "pw"))
        .await
        .expect("insert");

    let cache = DeviceCache::new();
    assert!(!cache.healthy());
    assert_eq!(
        cache.reload(&store).await,
        Reload::Loaded {
            added: 2,
            changed: 0,
            removed: 0
        }
    );
    assert!(cache.healthy());
    assert_eq!(cache.get("1000"), Some(alice.clone()));
    assert_eq!(
        cache.by_extension("1000").map(|d| d.username),
        Some("1000".into())
    );

    // A password changed in the database is visible after the next reload.
    let changed = DeviceRecord::with_password("1000", "site-a", "new-password");
    store
        .upsert(&DeviceRecord {
            extension: alice.extension.clone(),
            site: "a".into(),
            ..changed.clone()
        })
        .await
        .expect("update");
    assert_eq!(
        cache.reload(&store).await,
        Reload::Loaded {
            added: 0,
            changed: 1,
            removed: 0
        }
    );
    assert_eq!(
        cache.get("1000").map(|d| d.ha1_sha256),
        Some(changed.ha1_sha256.clone())
    );
    assert_ne!(changed.ha1_sha256, alice.ha1_sha256);

    // The database goes away: the reload fails, the cache keeps serving and says so.
    store.close().await;
    assert!(matches!(cache.reload(&store).await, Reload::Failed(_)));
    assert!(!cache.healthy());
    assert!(cache.last_error().is_some());
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.get("1000").map(|d| d.ha1_sha256),
        Some(changed.ha1_sha256)
    );

    // It comes back (a new pool on the same file): healthy again, nothing lost.
    let store = DeviceStore::open(&url).await.expect("reopen");
    assert_eq!(
        cache.reload(&store).await,
        Reload::Loaded {
            added: 0,
            changed: 0,
            removed: 0
        }
    );
    assert!(cache.healthy());
}

#[tokio::test]
async fn bad_urls_are_refused_clearly() {
    let e = DeviceStore::open("mysql://x")
        .await
        .expect_err("unsupported");
    assert!(e.to_string().contains("unsupported database URL"), "{e}");
    let e = DeviceStore::open("postgres://nobody@127.0.0.1:1/none")
        .await
        .expect_err("unreachable");
    assert!(e.to_string().starts_with("database"), "{e}");
}

#[tokio::test]
async fn reloader_picks_up_edits_within_its_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("d.db").display());
    let store = DeviceStore::open(&url).await.expect("open");
    let cache = DeviceCache::new();
    let task = cache.spawn_reloader(store.clone(), std::time::Duration::from_millis(50));
    store
        .upsert(&DeviceRecord::with_password("2000", "r", "x"))
        .await
        .expect("insert");
    let t0 = std::time::Instant::now();
    while cache.get("2000").is_none() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "edit not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
}
