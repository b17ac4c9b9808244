//! Store semantics every store keeps, written once: each store's tests run these on its own
//! engine (the fleet-level ones run on both stores in tests/fleet_core).

use super::{BatchRow, ChildChange, NewBatch, Seen, Status, Store, TaskFilter, TaskRecord};

/// A change that moves a child to `status` (and says so), unless it is already there.
pub fn to(status: Status) -> ChildChange {
    Box::new(move |c| {
        if c.status == status {
            return false;
        }
        c.status = status;
        c.updated_ms += 1;
        true
    })
}

/// Batch `b-1` with `children` as `(InstanceId, TaskId)`.
pub fn new_batch(children: &[(&str, &str)]) -> NewBatch {
    NewBatch {
        task_id: "b-1".into(),
        request_id: "r-1".into(),
        client_token: None,
        request_hash: "h".into(),
        payload_json: "{}".into(),
        created_ms: 1,
        children: children
            .iter()
            .map(|(i, t)| (i.to_string(), t.to_string()))
            .collect(),
    }
}

/// Instances `acp-a`, `acp-b` and batch `b-1` with children `t-a`, `t-b`.
pub async fn two_phones_one_batch(store: &dyn Store) {
    for id in ["acp-a", "acp-b"] {
        assert!(store
            .put_instance(id.into(), "h".into(), "b".into(), false, 1)
            .await
            .unwrap());
    }
    let batch = new_batch(&[("acp-a", "t-a"), ("acp-b", "t-b")]);
    assert!(store.create_batch(batch).await.unwrap().is_none());
}

/// Batch `id` as DescribeTasks lists it (its status and counts).
pub async fn batch_row(store: &dyn Store, id: &str) -> BatchRow {
    let page = store
        .describe(TaskFilter {
            task_ids: vec![id.into()],
            level: Some(1),
            limit: 10,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    match page.rows.into_iter().next() {
        Some(TaskRecord::Batch(batch)) => batch,
        other => panic!("no batch row {id}: {other:?}"),
    }
}

/// A group of changes applies in order (a later change sees an earlier one), unknown TaskIds
/// answer `None`, and the batch's counts move once per transition.
pub async fn a_group_of_changes_applies_in_order_and_keeps_the_counts(store: &dyn Store) {
    two_phones_one_batch(store).await;
    // The second change of t-a sees the first: RUNNING, then FINISHED only from RUNNING.
    let after_running: ChildChange = Box::new(|c| {
        if c.status != Status::Running {
            return false;
        }
        c.status = Status::Finished;
        true
    });
    let got = store
        .update_children(vec![
            ("t-a".into(), to(Status::Running)),
            ("t-a".into(), after_running),
            ("t-unknown".into(), to(Status::Running)),
            ("t-b".into(), to(Status::Running)),
            ("t-b".into(), to(Status::Running)),
        ])
        .await
        .unwrap();
    let statuses: Vec<_> = got.iter().map(|c| c.as_ref().map(|c| c.status)).collect();
    assert_eq!(
        statuses,
        vec![
            Some(Status::Running),
            Some(Status::Finished),
            None,
            Some(Status::Running),
            Some(Status::Running),
        ]
    );
    assert_eq!(
        store.child("t-a".into()).await.unwrap().unwrap().status,
        Status::Finished
    );
    assert!(store.update_children(Vec::new()).await.unwrap().is_empty());
    let batch = batch_row(store, "b-1").await;
    assert_eq!(
        (
            batch.status,
            batch.counts.pending,
            batch.counts.running,
            batch.counts.finished,
            batch.counts.failed
        ),
        (Status::Running, 0, 1, 1, 0)
    );
}

/// A presence of an older agent connection than the newest seen (a dropped connection's
/// will published after the agent reconnected) leaves `online` alone; the newest
/// connection's own will, a presence without a connection and a Hello still apply.
pub async fn a_late_will_of_an_older_connection_is_ignored(store: &dyn Store) {
    two_phones_one_batch(store).await;
    let online = || async {
        let all = store.instances().await.unwrap();
        all.into_iter()
            .find(|i| i.instance_id == "acp-a")
            .unwrap()
            .online
    };
    let presence = |online, connection| Seen {
        now_ms: 10,
        online: Some(online),
        connection,
        agent_json: None,
    };
    assert!(store
        .touch_instance("acp-a".into(), presence(true, Some(200)))
        .await
        .unwrap());
    assert!(online().await);
    // The will of connection 100, noticed by the broker after connection 200 came online.
    assert!(store
        .touch_instance("acp-a".into(), presence(false, Some(100)))
        .await
        .unwrap());
    assert!(
        online().await,
        "a late will of an older connection marked the phone offline"
    );
    // Connection 200 drops: its own will applies.
    store
        .touch_instance("acp-a".into(), presence(false, Some(200)))
        .await
        .unwrap();
    assert!(!online().await);
    // An agent from before connections (none): applied as it comes, both ways.
    store
        .touch_instance("acp-a".into(), presence(true, None))
        .await
        .unwrap();
    assert!(online().await);
    store
        .touch_instance("acp-a".into(), presence(false, None))
        .await
        .unwrap();
    assert!(!online().await);
    // A newer connection comes online; the older one's online (a retransmission) is ignored
    // once a newer one went offline.
    store
        .touch_instance("acp-a".into(), presence(true, Some(300)))
        .await
        .unwrap();
    store
        .touch_instance("acp-a".into(), presence(false, Some(300)))
        .await
        .unwrap();
    store
        .touch_instance("acp-a".into(), presence(true, Some(250)))
        .await
        .unwrap();
    assert!(!online().await);
}
