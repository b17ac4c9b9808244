//! The controller's fleet logic ([`ferry::controller::service::Fleet`]) over a real SQLite
//! file in a temporary directory, with a recording [`Outbox`]: SendFile, ClientToken across
//! restarts, reports and aggregation, Hello resends, expiry, cancel, DescribeTasks paging,
//! and that no secret of a payload comes back out.

#[path = "../common/postgres.rs"]
mod postgres;
mod races;
#[path = "../common/skip.rs"]
mod skip;
mod support;

use ferry::controller::model::{DescribeTasksQuery, TaskRow};
use ferry::controller::ports::{Actions, Credentials, Inbox};
use ferry::controller::secrets;
use ferry::error::Code;
use ferry::fleet::wire::{HeldTask, Hello, Order, Presence, Report};
use ferry::task::record::Phase;
use races::*;
use std::time::Duration;
use support::*;

/// Each test once per store: `sqlite::NAME` on a SQLite file, `postgres::NAME` on a fresh
/// database of the test binary's PostgreSQL cluster (skipped loudly without PostgreSQL, a
/// failure under CI=true). `multi_thread` tests race on two worker threads.
macro_rules! on_both_stores {
    (current: $($name:ident),* ; multi_thread: $($race:ident),* $(;)?) => {
        mod sqlite {
            use super::Backend;
            $(#[tokio::test]
            async fn $name() {
                super::$name(Backend::Sqlite).await
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $race() {
                super::$race(Backend::Sqlite).await
            })*
        }
        mod postgres_store {
            use super::Backend;
            $(#[tokio::test]
            async fn $name() {
                if let Some(store) = Backend::postgres() {
                    super::$name(store).await
                }
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $race() {
                if let Some(store) = Backend::postgres() {
                    super::$race(store).await
                }
            })*
        }
    };
}

on_both_stores! {
    current: send_file_stores_batch_and_children_before_publishing_their_orders,
        a_client_token_repeat_gets_the_same_ids_even_after_a_restart_and_a_changed_request_conflicts,
        a_lost_publish_costs_nothing_and_concurrent_repeats_of_a_token_make_one_batch,
        unknown_duplicate_or_missing_instances_and_bad_payloads_create_nothing,
        reports_move_children_forward_only_and_the_batch_aggregates_them,
        a_report_for_another_instances_task_or_an_unknown_task_is_refused,
        hello_is_answered_with_exactly_the_orders_the_agent_misses,
        a_child_no_agent_takes_within_the_expiry_fails_with_its_own_code,
        an_order_an_online_agent_has_not_taken_is_sent_again,
        cancelling_a_batch_fails_untaken_children_now_and_orders_the_others_to_stop,
        describe_tasks_filters_and_pages_250_children,
        no_answer_carries_the_payloads_secrets,
        credentials_are_issued_stored_and_checked,
        a_group_of_reports_commits_in_order_and_refuses_each_bad_one_alone;
    multi_thread: two_replicas_racing_one_client_token_make_one_batch,
        concurrent_send_files_on_two_replicas_list_each_batch_with_its_own_children,
        reports_and_expiry_racing_on_two_replicas_leave_one_final_state_and_true_counts,
        two_replicas_expiring_the_same_children_each_claim_only_the_ones_they_moved,
        overlapping_report_groups_on_two_replicas_all_commit_with_true_counts,
        a_stale_report_committed_by_another_replica_after_the_final_one_is_a_no_op;
}

async fn send_file_stores_batch_and_children_before_publishing_their_orders(store: Backend) {
    let h = Harness::new(&store, &["acp-1", "acp-2", "acp-3"]).await;
    let answer = h.send(&["acp-1", "acp-2", "acp-3"], None).await.unwrap();
    assert!(answer.task_id.starts_with("t-"));
    let ids: Vec<&str> = answer
        .data
        .iter()
        .map(|d| d.android_instance_id.as_str())
        .collect();
    assert_eq!(ids, ["acp-1", "acp-2", "acp-3"]);
    let orders = h.outbox.wait_for(3).await;
    for (d, (instance, order)) in answer.data.iter().zip(&orders) {
        assert_eq!(instance, &d.android_instance_id);
        let Order::Run { task_id, payload } = order else {
            panic!("{order:?}")
        };
        assert_eq!(task_id, &d.task_id);
        assert_eq!(payload.task_id.as_deref(), Some(d.task_id.as_str()));
        assert_eq!(payload.client_token, None);
        // The agent needs the real credentials.
        assert_eq!(
            payload.credentials.as_ref().unwrap().access_key_secret,
            OSS_SECRET
        );
    }
    // Durable: a controller opened afresh on the same file sees all of it.
    let h2 = h.restart().await;
    let all = h2.describe(DescribeTasksQuery::default()).await;
    assert_eq!(all.total_count, 4);
    let batch = &all.data[0];
    assert_eq!(
        (batch.level, batch.task_id.as_str()),
        (1, answer.task_id.as_str())
    );
    assert_eq!(batch.total_child_count, Some(3));
    assert_eq!(batch.task_status, "PENDING");
    assert_eq!(batch.invoke_id.as_deref(), Some("req-1"));
    let children: Vec<&TaskRow> = all.data[1..].iter().collect();
    for (row, d) in children.iter().zip(&answer.data) {
        assert_eq!(row.task_id, d.task_id);
        assert_eq!(row.parent_task_id.as_deref(), Some(answer.task_id.as_str()));
        assert_eq!(
            row.instance_id.as_deref(),
            Some(d.android_instance_id.as_str())
        );
        assert_eq!((row.level, row.task_status.as_str()), (2, "PENDING"));
        assert_eq!(row.task_type, "SendFile");
    }
}

async fn a_client_token_repeat_gets_the_same_ids_even_after_a_restart_and_a_changed_request_conflicts(
    store: Backend,
) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let first = h.send(&["acp-1", "acp-2"], Some("tok-1")).await.unwrap();
    let again = h.send(&["acp-1", "acp-2"], Some("tok-1")).await.unwrap();
    assert_eq!(first, again);
    let h = h.restart().await;
    let after_restart = h.send(&["acp-1", "acp-2"], Some("tok-1")).await.unwrap();
    assert_eq!(first, after_restart);
    let conflict = h.send(&["acp-1"], Some("tok-1")).await.unwrap_err();
    assert_eq!(
        (conflict.status, conflict.code.as_str()),
        (409, "Api.ClientTokenConflict")
    );
    // One batch of two children only.
    assert_eq!(
        h.describe(DescribeTasksQuery::default()).await.total_count,
        3
    );
    // Another token is another batch.
    let other = h.send(&["acp-1", "acp-2"], Some("tok-2")).await.unwrap();
    assert_ne!(other.task_id, first.task_id);
}

async fn a_lost_publish_costs_nothing_and_concurrent_repeats_of_a_token_make_one_batch(
    store: Backend,
) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    h.outbox.fail(true);
    let answer = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.outbox.orders().is_empty());
    h.outbox.fail(false);
    // The agent's Hello brings the order it never got.
    let orders = h.fleet.hello(hello("acp-2", vec![])).await.unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].task_id(), answer.data[1].task_id);
    // Two identical SendFiles racing under one ClientToken: one batch, the same answer.
    let (a, b) = tokio::join!(
        h.send(&["acp-1", "acp-2"], Some("race")),
        h.send(&["acp-1", "acp-2"], Some("race"))
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        h.describe(DescribeTasksQuery {
            level: Some(1),
            ..Default::default()
        })
        .await
        .total_count,
        2
    );
}

async fn unknown_duplicate_or_missing_instances_and_bad_payloads_create_nothing(store: Backend) {
    let h = Harness::new(&store, &["acp-1"]).await;
    let unknown = h
        .send(&["acp-1", "acp-9", "acp-8"], None)
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.status, unknown.code.as_str()),
        (400, "Fleet.UnknownInstance")
    );
    assert!(
        unknown.message.contains("acp-9") && unknown.message.contains("acp-8"),
        "{}",
        unknown.message
    );
    let dup = h.send(&["acp-1", "acp-1"], None).await.unwrap_err();
    assert_eq!(dup.code, "InvalidParameter.AndroidInstanceIdList");
    assert!(
        dup.message.contains("AndroidInstanceIdList.2"),
        "{}",
        dup.message
    );
    let none = h.send(&[], None).await.unwrap_err();
    assert_eq!(none.code, "InvalidParameter.AndroidInstanceIdList");
    let bad_id = h.send(&["acp/1"], None).await.unwrap_err();
    assert_eq!(bad_id.code, "InvalidParameter.InstanceId");
    // The agent's own rules and codes: a target outside Android's roots.
    let mut request = h.request(&["acp-1"], None);
    request.payload.source_file_path = "/etc/".into();
    let outside = h.fleet.send_file(request).await.unwrap_err();
    assert_eq!(
        (outside.status, outside.code.as_str()),
        (400, "InvalidParameter.SourceFilePath")
    );
    let mut request = h.request(&["acp-1"], None);
    request.payload.upload_type = "FTP".into();
    let bad_type = h.fleet.send_file(request).await.unwrap_err();
    assert_eq!(bad_type.code, "InvalidParameter.UploadType");
    assert_eq!(
        h.describe(DescribeTasksQuery::default()).await.total_count,
        0
    );
    assert!(h.outbox.orders().is_empty());
}

async fn reports_move_children_forward_only_and_the_batch_aggregates_them(store: Backend) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let answer = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    let (t1, t2) = (&answer.data[0].task_id, &answer.data[1].task_id);
    h.report("acp-1", view(t1, Phase::Running, 50, Some(100)))
        .await
        .unwrap();
    let row = h.row(t1).await;
    assert_eq!(row.task_status, "RUNNING");
    assert!(row.start_time.is_some() && row.finish_time.is_none());
    assert_eq!(h.row(&answer.task_id).await.task_status, "RUNNING");
    // Progress only grows within a run; a late PENDING changes nothing.
    h.report("acp-1", view(t1, Phase::Running, 20, Some(100)))
        .await
        .unwrap();
    h.report("acp-1", view(t1, Phase::Pending, 0, None))
        .await
        .unwrap();
    let result = json(&h.row(t1).await.result.unwrap());
    assert_eq!(result["Phase"], "RUNNING");
    assert_eq!(result["BytesDone"], 50);
    assert_eq!(result["BytesTotal"], 100);
    h.report("acp-1", done(t1)).await.unwrap();
    // A late RUNNING after SUCCESS is ignored.
    h.report("acp-1", view(t1, Phase::Running, 60, Some(100)))
        .await
        .unwrap();
    let row = h.row(t1).await;
    assert_eq!(row.task_status, "FINISHED");
    assert!(row.finish_time.is_some());
    let result = json(&row.result.unwrap());
    assert_eq!(result["Files"][0]["Path"], "/sdcard/Download/a.txt");
    assert_eq!(result["Files"][0]["Sha256"], "ab".repeat(32));
    assert_eq!(result["BytesDone"], 100);
    let batch = h.row(&answer.task_id).await;
    assert_eq!(
        (
            batch.task_status.as_str(),
            batch.success_child_count,
            batch.running_child_count
        ),
        ("RUNNING", Some(1), Some(1))
    );
    h.report(
        "acp-2",
        failed(t2, "Source.NotFound", "404 from the source"),
    )
    .await
    .unwrap();
    let row = h.row(t2).await;
    assert_eq!(row.task_status, "FAILED");
    assert_eq!(row.error_code.as_deref(), Some("Source.NotFound"));
    assert_eq!(row.error_msg.as_deref(), Some("404 from the source"));
    let batch = h.row(&answer.task_id).await;
    assert_eq!(batch.task_status, "FAILED");
    assert_eq!(
        (
            batch.total_child_count,
            batch.success_child_count,
            batch.failed_child_count,
            batch.running_child_count
        ),
        (Some(2), Some(1), Some(1), Some(0))
    );
    assert!(batch.finish_time.is_some());
    // The same, after a restart.
    let h = h.restart().await;
    assert_eq!(h.row(&answer.task_id).await, batch);
}

async fn a_report_for_another_instances_task_or_an_unknown_task_is_refused(store: Backend) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let answer = h.send(&["acp-1"], None).await.unwrap();
    let t1 = &answer.data[0].task_id;
    let forged = h.report("acp-2", done(t1)).await.unwrap_err();
    assert!(forged.message.contains("acp-1"), "{forged}");
    assert_eq!(h.row(t1).await.task_status, "PENDING");
    assert!(h.report("acp-1", done("t-doesnotexist")).await.is_err());
    assert!(h
        .fleet
        .presence(
            "acp-unknown",
            Presence {
                online: true,
                connection: None
            }
        )
        .await
        .is_err());
}

async fn hello_is_answered_with_exactly_the_orders_the_agent_misses(store: Backend) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let a = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    let b = h.send(&["acp-1"], None).await.unwrap();
    let c = h.send(&["acp-1"], None).await.unwrap();
    let (a1, b1, c1) = (&a.data[0].task_id, &b.data[0].task_id, &c.data[0].task_id);
    // c1 finished; b1 is held (pending on the agent); a1 is missing; a stranger's task and a
    // finished one are in Held too.
    h.report("acp-1", done(c1)).await.unwrap();
    let holding = vec![
        held(b1, Phase::Pending),
        held(&a.data[1].task_id, Phase::Running),
        held("t-old", Phase::Success),
    ];
    let orders = h.fleet.hello(hello("acp-1", holding)).await.unwrap();
    assert_eq!(orders.len(), 1, "{orders:?}");
    let Order::Run { task_id, payload } = &orders[0] else {
        panic!("{orders:?}")
    };
    assert_eq!(task_id, a1);
    assert_eq!(payload.task_id.as_deref(), Some(a1.as_str()));
    // Held means taken: b1 is RUNNING now, and a later Hello holding both asks for nothing.
    assert_eq!(h.row(b1).await.task_status, "RUNNING");
    let orders = h
        .fleet
        .hello(hello(
            "acp-1",
            vec![held(a1, Phase::Running), held(b1, Phase::Running)],
        ))
        .await
        .unwrap();
    assert!(orders.is_empty(), "{orders:?}");
    // The instance list shows what the agent said.
    let list = h.fleet.list_instances().await.unwrap();
    let one = list.iter().find(|i| i.instance_id == "acp-1").unwrap();
    assert!(one.online && one.last_seen.is_some());
    assert_eq!(one.agent_version.as_deref(), Some("9.9.9"));
    assert_eq!(one.roots[0].free_bytes, 123_456);
    h.fleet
        .presence(
            "acp-1",
            Presence {
                online: false,
                connection: None,
            },
        )
        .await
        .unwrap();
    let list = h.fleet.list_instances().await.unwrap();
    assert!(
        !list
            .iter()
            .find(|i| i.instance_id == "acp-1")
            .unwrap()
            .online
    );
    let two = list.iter().find(|i| i.instance_id == "acp-2").unwrap();
    assert!(!two.online && two.last_seen.is_none() && two.agent_version.is_none());
}

/// An order the broker lost (QoS 0 on NATS) is sent again while its agent is online and has
/// not taken it; a taken one, or one for an offline agent (its Hello brings it), is not.
async fn an_order_an_online_agent_has_not_taken_is_sent_again(store: Backend) {
    let config = ferry::controller::service::FleetConfig {
        resend: Duration::from_millis(300),
        ..Default::default()
    };
    let ids = ["acp-1", "acp-2", "acp-3", "acp-4"];
    let h = Harness::with_config(&store, &ids, config).await;
    let online = Presence {
        online: true,
        connection: None,
    };
    for id in ["acp-1", "acp-2", "acp-3"] {
        h.fleet.presence(id, online).await.unwrap();
    }
    let answer = h.send(&ids, None).await.unwrap();
    let task = |i: usize| answer.data[i].task_id.clone();
    h.outbox.wait_for(4).await;
    assert!(h.fleet.resend_due().await.unwrap().is_empty(), "not yet");
    // acp-2 took its task; acp-4 is offline.
    h.report("acp-2", view(&task(1), Phase::Running, 1, Some(10)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.fleet.resend_due().await.unwrap(), vec![task(0), task(2)]);
    let resent: Vec<(String, Order)> = h.outbox.orders().split_off(4);
    assert_eq!(resent.len(), 2);
    assert_eq!(resent[0].0, "acp-1");
    assert!(
        matches!(&resent[0].1, Order::Run { task_id, payload } if *task_id == task(0) && payload.task_id.as_deref() == Some(task(0).as_str()))
    );
    // Sent again at every check while untaken; once taken, no more.
    h.report("acp-3", view(&task(2), Phase::Running, 1, Some(10)))
        .await
        .unwrap();
    assert_eq!(h.fleet.resend_due().await.unwrap(), vec![task(0)]);
}

async fn a_child_no_agent_takes_within_the_expiry_fails_with_its_own_code(store: Backend) {
    let h = Harness::with_expiry(&store, &["acp-1", "acp-2"], Duration::from_millis(300)).await;
    assert_eq!(h.fleet.expiry_interval(), Duration::from_secs(1));
    let answer = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    let (t1, t2) = (&answer.data[0].task_id, &answer.data[1].task_id);
    h.report("acp-2", view(t2, Phase::Running, 1, Some(10)))
        .await
        .unwrap();
    assert!(h.fleet.expire_due().await.unwrap().is_empty(), "not yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.fleet.expire_due().await.unwrap(), vec![t1.clone()]);
    let row = h.row(t1).await;
    assert_eq!(row.task_status, "FAILED");
    assert_eq!(row.error_code.as_deref(), Some("Fleet.InstanceOffline"));
    assert_eq!(h.row(t2).await.task_status, "RUNNING");
    // The phone comes back still holding it: it is told to stop, not to run it.
    let orders = h
        .fleet
        .hello(hello("acp-1", vec![held(t1, Phase::Pending)]))
        .await
        .unwrap();
    assert_eq!(
        orders,
        vec![Order::Cancel {
            task_id: t1.clone()
        }]
    );
    // The background loop does the same.
    let h2 = Harness::with_expiry(&store.fresh(), &["acp-3"], Duration::from_millis(200)).await;
    let late = h2.send(&["acp-3"], None).await.unwrap();
    let fleet = std::sync::Arc::clone(&h2.fleet);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(async move {
        fleet
            .run_expiry(async { stopped.await.unwrap_or(()) })
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h2.row(&late.data[0].task_id).await.task_status != "FAILED" {
        assert!(
            std::time::Instant::now() < deadline,
            "expiry loop never failed the task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    looping.await.unwrap();
}

async fn cancelling_a_batch_fails_untaken_children_now_and_orders_the_others_to_stop(
    store: Backend,
) {
    let h = Harness::new(&store, &["acp-1", "acp-2", "acp-3"]).await;
    let answer = h.send(&["acp-1", "acp-2", "acp-3"], None).await.unwrap();
    h.outbox.wait_for(3).await;
    let (t1, t2, t3) = (
        &answer.data[0].task_id,
        &answer.data[1].task_id,
        &answer.data[2].task_id,
    );
    h.report("acp-2", view(t2, Phase::Running, 5, Some(10)))
        .await
        .unwrap();
    h.report("acp-3", done(t3)).await.unwrap();
    let cancel = h.fleet.cancel_task(&answer.task_id).await.unwrap();
    let cancelled: Vec<&str> = cancel.data.iter().map(|d| d.task_id.as_str()).collect();
    assert_eq!(cancelled, [t1.as_str(), t2.as_str()]);
    let orders = h.outbox.wait_for(5).await;
    assert_eq!(
        &orders[3..],
        &[
            (
                "acp-1".to_string(),
                Order::Cancel {
                    task_id: t1.clone()
                }
            ),
            (
                "acp-2".to_string(),
                Order::Cancel {
                    task_id: t2.clone()
                }
            ),
        ]
    );
    let row = h.row(t1).await;
    assert_eq!(
        (row.task_status.as_str(), row.error_code.as_deref()),
        ("FAILED", Some("Cancelled"))
    );
    assert_eq!(
        h.row(t2).await.task_status,
        "RUNNING",
        "until its agent stops it"
    );
    assert_eq!(h.row(t3).await.task_status, "FINISHED");
    // acp-2 reconnects still holding it: the Cancel is owed again; then it reports.
    let orders = h
        .fleet
        .hello(hello("acp-2", vec![held(t2, Phase::Running)]))
        .await
        .unwrap();
    assert_eq!(
        orders,
        vec![Order::Cancel {
            task_id: t2.clone()
        }]
    );
    h.report("acp-2", failed(t2, "Cancelled", "cancelled"))
        .await
        .unwrap();
    assert_eq!(h.row(t2).await.task_status, "FAILED");
    let batch = h.row(&answer.task_id).await;
    assert_eq!(
        (batch.task_status.as_str(), batch.failed_child_count),
        ("FAILED", Some(2))
    );
    // Nothing left to cancel; an unknown task is not found.
    assert!(h
        .fleet
        .cancel_task(&answer.task_id)
        .await
        .unwrap()
        .data
        .is_empty());
    let missing = h.fleet.cancel_task("t-nope").await.unwrap_err();
    assert_eq!(
        (missing.status, missing.code.as_str()),
        (404, "Api.TaskNotFound")
    );
    // Hello from acp-1 (never had it) gets no Run for the cancelled task.
    assert!(h
        .fleet
        .hello(hello("acp-1", vec![]))
        .await
        .unwrap()
        .is_empty());
}

async fn describe_tasks_filters_and_pages_250_children(store: Backend) {
    let names: Vec<String> = (0..250).map(|i| format!("acp-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = Harness::new(&store, &refs).await;
    let big = h.send(&refs, None).await.unwrap();
    let small = h.send(&refs[..2], None).await.unwrap();
    for d in &big.data[..10] {
        h.report(&d.android_instance_id, done(&d.task_id))
            .await
            .unwrap();
    }
    // ParentTaskId + Level 2, pages of 100.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = h
            .describe(DescribeTasksQuery {
                parent_task_id: Some(big.task_id.clone()),
                level: Some(2),
                max_results: 100,
                next_token: token.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(page.total_count, 250);
        assert!(page.data.len() <= 100);
        seen.extend(page.data.iter().map(|r| r.task_id.clone()));
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<String> = big.data.iter().map(|d| d.task_id.clone()).collect();
    assert_eq!(seen, expected, "every child once, in request order");
    // Default page: 10 rows, newest batch first.
    let first = h.describe(DescribeTasksQuery::default()).await;
    assert_eq!((first.total_count, first.data.len()), (254, 10));
    assert_eq!(first.data[0].task_id, small.task_id);
    assert!(first.next_token.is_some());
    // Level 1 only.
    let batches = h
        .describe(DescribeTasksQuery {
            level: Some(1),
            ..Default::default()
        })
        .await;
    let ids: Vec<&str> = batches.data.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(ids, [small.task_id.as_str(), big.task_id.as_str()]);
    // InstanceId: that phone's task in both batches.
    let one = h
        .describe(DescribeTasksQuery {
            instance_id: Some("acp-001".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(one.total_count, 2);
    assert!(one
        .data
        .iter()
        .all(|r| r.instance_id.as_deref() == Some("acp-001")));
    // Statuses.
    let finished = h
        .describe(DescribeTasksQuery {
            task_statuses: vec!["finished".into()],
            max_results: 100,
            ..Default::default()
        })
        .await;
    assert_eq!(finished.total_count, 10);
    let pending = h
        .describe(DescribeTasksQuery {
            task_statuses: vec!["PENDING".into()],
            level: Some(1),
            ..Default::default()
        })
        .await;
    assert_eq!(
        pending.data.len(),
        1,
        "the small batch; the big one is RUNNING"
    );
    // TaskIds, InvokeId, TaskTypes.
    let by_ids = h
        .describe(DescribeTasksQuery {
            task_ids: vec![big.data[7].task_id.clone(), small.task_id.clone()],
            ..Default::default()
        })
        .await;
    assert_eq!(by_ids.total_count, 2);
    let by_invoke = h
        .describe(DescribeTasksQuery {
            invoke_id: Some("req-2".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        by_invoke.total_count, 3,
        "the small batch and its two children"
    );
    let other_type = h
        .describe(DescribeTasksQuery {
            task_types: vec!["RebootInstance".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(other_type.total_count, 0);
    // Bad parameters are named.
    for (query, code) in [
        (
            DescribeTasksQuery {
                max_results: 101,
                ..Default::default()
            },
            "InvalidParameter.MaxResults",
        ),
        (
            DescribeTasksQuery {
                next_token: Some("garbage".into()),
                ..Default::default()
            },
            "InvalidParameter.NextToken",
        ),
        (
            DescribeTasksQuery {
                level: Some(3),
                ..Default::default()
            },
            "InvalidParameter.Level",
        ),
        (
            DescribeTasksQuery {
                task_statuses: vec!["DONE".into()],
                ..Default::default()
            },
            "InvalidParameter.TaskStatus",
        ),
    ] {
        let e = h.fleet.describe_tasks(query).await.unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, code));
    }
}

async fn no_answer_carries_the_payloads_secrets(store: Backend) {
    let h = Harness::new(&store, &["acp-1"]).await;
    let answer = h.send(&["acp-1"], Some("tok")).await.unwrap();
    h.report(
        "acp-1",
        view(&answer.data[0].task_id, Phase::Running, 1, Some(2)),
    )
    .await
    .unwrap();
    let mut texts = vec![serde_json::to_string(&answer).unwrap()];
    for level in [None, Some(1), Some(2)] {
        let page = h
            .describe(DescribeTasksQuery {
                level,
                ..Default::default()
            })
            .await;
        texts.push(serde_json::to_string(&page).unwrap());
    }
    texts.push(serde_json::to_string(&h.fleet.list_instances().await.unwrap()).unwrap());
    texts
        .push(serde_json::to_string(&h.fleet.cancel_task(&answer.task_id).await.unwrap()).unwrap());
    for text in texts {
        assert!(
            !text.contains(OSS_SECRET) && !text.contains(OSS_TOKEN),
            "{text}"
        );
    }
}

async fn credentials_are_issued_stored_and_checked(store: Backend) {
    let h = Harness::new(&store, &["acp-1"]).await;
    let (id, secret) = h.fleet.create_access_key().await.unwrap();
    assert!(id.starts_with("LTAI"));
    let h = h.restart().await;
    assert_eq!(
        h.credentials.access_key_secret(&id).await.unwrap(),
        Some(secret)
    );
    assert_eq!(
        h.credentials.access_key_secret("LTAInope").await.unwrap(),
        None
    );
    let exists = h.fleet.add_instance("acp-1", false).await.unwrap_err();
    assert_eq!(exists.code.as_str(), "Fleet.InstanceExists");
    let old = h
        .credentials
        .agent_password_hash("acp-1")
        .await
        .unwrap()
        .unwrap();
    let rotated = h.fleet.add_instance("acp-1", true).await.unwrap();
    let new = h
        .credentials
        .agent_password_hash("acp-1")
        .await
        .unwrap()
        .unwrap();
    assert!(secrets::verify(&rotated, &new) && !secrets::verify(&rotated, &old));
    assert!(h.fleet.add_instance("acp/x", false).await.is_err());
    let all = h.credentials.agent_password_hashes().await.unwrap();
    assert_eq!(all, vec![("acp-1".to_string(), new)]);
    assert_eq!(
        h.credentials.agent_password_hash("acp-2").await.unwrap(),
        None
    );
    // The state file holds secrets: only its owner reads it.
    if let Backend::Sqlite = h.backend {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.dir.path().join("controller.sqlite"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}

fn hello(instance: &str, held: Vec<HeldTask>) -> Hello {
    Hello {
        instance_id: instance.into(),
        agent: ferry::fleet::wire::AgentInfo {
            version: "9.9.9".into(),
            abi: "x86_64".into(),
            android_release: String::new(),
            roots: vec![ferry::fleet::wire::RootSpace {
                root: "/sdcard".into(),
                free_bytes: 123_456,
            }],
        },
        held,
    }
}

fn held(task_id: &str, phase: Phase) -> HeldTask {
    HeldTask {
        task_id: task_id.into(),
        phase,
    }
}

/// The group commit delivery uses: one store transaction for many reports, applied in order
/// (a task's SUCCESS after its RUNNING of the same group), each bad one refused on its own.
async fn a_group_of_reports_commits_in_order_and_refuses_each_bad_one_alone(store: Backend) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let answer = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    let (t1, t2) = (&answer.data[0].task_id, &answer.data[1].task_id);
    let report = |instance: &str, task| Report {
        instance_id: instance.to_string(),
        task,
    };
    let outcomes = h
        .fleet
        .reports(vec![
            report("acp-1", view(t1, Phase::Running, 50, Some(100))),
            report("acp-1", done(t1)),
            report("acp-2", view(t1, Phase::Running, 10, Some(100))),
            report("acp-1", view("t-never-created", Phase::Running, 1, Some(2))),
            report("acp-2", done(t2)),
        ])
        .await;
    let codes: Vec<Option<Code>> = outcomes
        .iter()
        .map(|o| o.as_ref().err().map(|e| e.code))
        .collect();
    assert_eq!(
        codes,
        [
            None,
            None,
            Some(Code::ApiUnauthorized),
            Some(Code::ApiNotFound),
            None
        ]
    );
    let row = h.row(t1).await;
    assert_eq!(row.task_status, "FINISHED");
    assert!(row.start_time.is_some() && row.finish_time.is_some());
    assert_eq!(h.row(t2).await.task_status, "FINISHED");
    let batch = h.row(&answer.task_id).await;
    assert_eq!(
        (batch.task_status.as_str(), batch.success_child_count),
        ("FINISHED", Some(2))
    );
}
