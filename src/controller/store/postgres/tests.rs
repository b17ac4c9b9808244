//! The PostgreSQL store's own rules, on a real PostgreSQL 15 (tests/common/postgres.rs):
//! migrations under concurrent starts, a newer schema, secrets in errors, the final-state
//! trigger. The fleet semantics run on both stores in tests/fleet_core.

use super::test_cluster::{database, shared, PgCluster};
use super::*;
use crate::controller::store::contract_tests as contract;
use crate::controller::store::Status;
use crate::error::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(url) = database() else { return };
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url).await.map(drop) })
        })
        .collect();
    for open in opening {
        open.await.unwrap().unwrap();
    }
    let store = PgStore::open(&url).await.unwrap();
    let client = store.client().await.unwrap();
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    client
        .execute("INSERT INTO schema_version (version) VALUES (99)", &[])
        .await
        .unwrap();
    let Err(e) = PgStore::open(&url).await else {
        panic!("a newer schema was opened")
    };
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.message.contains("99"), "{e}");
}

#[tokio::test]
async fn the_database_password_never_shows_in_errors() {
    let Some(cluster) = shared() else { return };
    let db = cluster.create_database();
    let store = PgStore::open(&cluster.tcp_url(&db)).await.unwrap();
    assert!(
        !store.target().contains(&cluster.password),
        "{}",
        store.target()
    );
    let secret = "Sekr3t-not-this-one";
    let wrong = format!("postgres://ferry:{secret}@127.0.0.1:{}/{db}", cluster.port);
    let Err(e) = PgStore::open(&wrong).await else {
        panic!("a wrong password was accepted")
    };
    assert!(!e.message.contains(secret), "{e}");
    assert!(e.message.contains("127.0.0.1"), "{e}");
    let Err(e) = PgStore::open(&format!("postgres://ferry:{secret}@127.0.0.1:port/{db}")).await
    else {
        panic!("a malformed URL was accepted")
    };
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(!e.message.contains(secret), "{e}");
}

#[tokio::test]
async fn a_final_child_stays_final_even_when_a_change_tries_to_move_it() {
    let Some(url) = database() else { return };
    let store = PgStore::open(&url).await.unwrap();
    assert!(store
        .put_instance(
            "acp-1".into(),
            "$7$hash".into(),
            "$2a$hash".into(),
            false,
            1
        )
        .await
        .unwrap());
    let batch = NewBatch {
        task_id: "t-batch".into(),
        request_id: "req-1".into(),
        client_token: None,
        request_hash: "h".into(),
        payload_json: "{}".into(),
        created_ms: 1,
        children: vec![("acp-1".into(), "t-child".into())],
    };
    assert_eq!(store.create_batch(batch).await.unwrap(), None);
    let done = store
        .update_child(
            "t-child".into(),
            Box::new(|c| {
                c.status = Status::Finished;
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, Status::Finished);
    // A faulty rule that would move it back is refused by the database, and nothing changes.
    let refused = store
        .update_child(
            "t-child".into(),
            Box::new(|c| {
                c.status = Status::Running;
                true
            }),
        )
        .await;
    let Err(e) = refused else {
        panic!("a final child was moved: {refused:?}")
    };
    assert!(e.message.contains("FINISHED (final)"), "{e}");
    let child = store.child("t-child".into()).await.unwrap().unwrap();
    assert_eq!(child.status, Status::Finished);
    let page = store
        .describe(TaskFilter {
            level: Some(1),
            limit: 10,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    let Some(crate::controller::store::TaskRecord::Batch(row)) = page.rows.first() else {
        panic!("{page:?}")
    };
    assert_eq!((row.status, row.counts.finished), (Status::Finished, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reconnects_after_the_database_restarts() {
    // A cluster of its own: restarting the shared one would cut the other tests.
    let Some(mut cluster) = PgCluster::start() else {
        crate::testing::skip::skip("PostgreSQL is not installed (tests/common/postgres.rs)");
        return;
    };
    let db = cluster.create_database();
    let store = PgStore::open(&cluster.tcp_url(&db)).await.unwrap();
    store
        .add_access_key("ak-1".into(), "s-1".into(), 1)
        .await
        .unwrap();
    // Off the runtime's threads, which meanwhile see the pooled connection closed (as a
    // serving controller's do).
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    // The pooled connection died with the server; the next call opens a new one.
    assert_eq!(
        store.access_key_secret("ak-1".into()).await.unwrap(),
        Some("s-1".into())
    );
    store
        .add_access_key("ak-2".into(), "s-2".into(), 2)
        .await
        .unwrap();
    drop(cluster);
}

/// The group-commit semantics both stores keep (`store::contract_tests`), on PostgreSQL.
#[tokio::test]
async fn a_group_of_changes_applies_in_order_in_one_commit_and_keeps_the_counts() {
    let Some(url) = database() else { return };
    let store = PgStore::open(&url).await.unwrap();
    contract::a_group_of_changes_applies_in_order_and_keeps_the_counts(&store).await;
}

/// A late will of an older agent connection (`store::contract_tests`), on PostgreSQL.
#[tokio::test]
async fn a_late_will_of_an_older_connection_is_ignored() {
    let Some(url) = database() else { return };
    let store = PgStore::open(&url).await.unwrap();
    contract::a_late_will_of_an_older_connection_is_ignored(&store).await;
}

/// A group whose rule fails (the final-state trigger) commits none of its changes.
#[tokio::test]
async fn a_group_with_one_refused_change_commits_nothing() {
    let Some(url) = database() else { return };
    let store = PgStore::open(&url).await.unwrap();
    contract::two_phones_one_batch(&store).await;
    let moved_back: ChildChange = Box::new(|c| {
        c.status = Status::Running;
        true
    });
    let refused = store
        .update_children(vec![
            ("t-b".into(), contract::to(Status::Running)),
            ("t-a".into(), contract::to(Status::Finished)),
            ("t-a".into(), moved_back),
        ])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    for id in ["t-a", "t-b"] {
        let child = store.child(id.into()).await.unwrap().unwrap();
        assert_eq!(child.status, Status::Pending, "{id}");
    }
}
