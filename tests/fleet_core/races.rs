//! Two controller replicas on one store (two Fleets, each with its own store connection and
//! Outbox) racing each other: what one database must settle without any lock in the
//! controllers. Run on SQLite (two connections to one file) and on PostgreSQL.

use crate::support::*;
use ferry::controller::model::{DescribeTasksQuery, SendFileResponse};
use ferry::controller::ports::{Actions, Inbox};
use ferry::fleet::wire::Report;
use ferry::task::record::Phase;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub async fn two_replicas_racing_one_client_token_make_one_batch(store: Backend) {
    let instances = ["acp-1", "acp-2", "acp-3"];
    let h = Harness::new(&store, &instances).await;
    let replica = h.replica().await;
    for round in 0..4 {
        let token = format!("race-{round}");
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let fleet = Arc::clone(if i % 2 == 0 { &h.fleet } else { &replica.fleet });
                let request = h.request(&instances, Some(&token));
                tokio::spawn(async move { fleet.send_file(request).await })
            })
            .collect();
        let mut answers: Vec<SendFileResponse> = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap().unwrap());
        }
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "round {round}: {answers:?}"
        );
    }
    // Four tokens, four batches of three children, whichever replica is asked.
    for fleet in [&h.fleet, &replica.fleet] {
        let batches = fleet
            .describe_tasks(DescribeTasksQuery {
                level: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(batches.total_count, 4, "{batches:?}");
        let all = fleet
            .describe_tasks(DescribeTasksQuery::default())
            .await
            .unwrap();
        assert_eq!(all.total_count, 16);
    }
    // A different request under a raced token conflicts on the other replica too.
    let conflict = replica
        .fleet
        .send_file(h.request(&["acp-1"], Some("race-0")))
        .await
        .unwrap_err();
    assert_eq!(conflict.code, "Api.ClientTokenConflict");
}

pub async fn concurrent_send_files_on_two_replicas_list_each_batch_with_its_own_children(
    store: Backend,
) {
    let instances = ["acp-1", "acp-2", "acp-3", "acp-4"];
    let h = Harness::new(&store, &instances).await;
    let replica = h.replica().await;
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let fleet = Arc::clone(if i % 2 == 0 { &h.fleet } else { &replica.fleet });
            let request = h.request(&instances, None);
            tokio::spawn(async move { fleet.send_file(request).await })
        })
        .collect();
    let mut answers = HashMap::new();
    for call in calls {
        let answer = call.await.unwrap().unwrap();
        answers.insert(answer.task_id.clone(), answer);
    }
    // Every batch directly followed by its own children in request order,
    // never another's, across pages.
    let mut rows = Vec::new();
    let mut next_token = None;
    loop {
        let page = replica
            .fleet
            .describe_tasks(DescribeTasksQuery {
                max_results: 7,
                next_token: next_token.take(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.total_count, 12 * 5);
        rows.extend(page.data);
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => break,
        }
    }
    assert_eq!(rows.len(), 12 * 5);
    for group in rows.chunks(5) {
        assert_eq!(group[0].level, 1, "{group:?}");
        let answer = &answers[&group[0].task_id];
        let listed: Vec<(&str, &str)> = group[1..]
            .iter()
            .map(|r| (r.instance_id.as_deref().unwrap(), r.task_id.as_str()))
            .collect();
        let created: Vec<(&str, &str)> = answer
            .data
            .iter()
            .map(|d| (d.android_instance_id.as_str(), d.task_id.as_str()))
            .collect();
        assert_eq!(listed, created);
    }
}

pub async fn reports_and_expiry_racing_on_two_replicas_leave_one_final_state_and_true_counts(
    store: Backend,
) {
    let names: Vec<String> = (1..=24).map(|i| format!("acp-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = Harness::with_expiry(&store, &refs, Duration::from_millis(50)).await;
    let replica = h.replica().await;
    let answer = h.send(&refs, None).await.unwrap();
    // Every child is due for expiry now; its agent reports at the same moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fleets = [Arc::clone(&h.fleet), Arc::clone(&replica.fleet)];
    let mut racing = Vec::new();
    for fleet in &fleets {
        let fleet = Arc::clone(fleet);
        racing.push(tokio::spawn(async move {
            fleet.expire_due().await.unwrap();
        }));
    }
    for (i, d) in answer.data.iter().enumerate() {
        let reports = [
            view(&d.task_id, Phase::Running, 10, Some(100)),
            if i % 3 == 0 {
                failed(&d.task_id, "Network.ConnectFailed", "no route")
            } else {
                done(&d.task_id)
            },
        ];
        for (n, task) in reports.into_iter().enumerate() {
            let fleet = Arc::clone(&fleets[(i + n) % 2]);
            let instance_id = d.android_instance_id.clone();
            racing.push(tokio::spawn(async move {
                fleet.report(Report { instance_id, task }).await.unwrap();
            }));
        }
    }
    for task in racing {
        task.await.unwrap();
    }
    let finals = final_states(&h, &answer).await;
    // Late and repeated messages on either replica change nothing.
    for (i, d) in answer.data.iter().enumerate() {
        let fleet = &fleets[i % 2];
        for task in [
            view(&d.task_id, Phase::Running, 50, Some(100)),
            view(&d.task_id, Phase::Pending, 0, None),
        ] {
            let report = Report {
                instance_id: d.android_instance_id.clone(),
                task,
            };
            fleet.report(report).await.unwrap();
        }
        fleets[(i + 1) % 2].expire_due().await.unwrap();
    }
    assert_eq!(final_states(&h, &answer).await, finals);
    // The batch's counts are the children's states, on both replicas.
    let finished = finals.values().filter(|s| s.0 == "FINISHED").count() as u32;
    for fleet in &fleets {
        let page = fleet
            .describe_tasks(DescribeTasksQuery {
                task_ids: vec![answer.task_id.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        let batch = &page.data[0];
        assert_eq!(batch.total_child_count, Some(24));
        assert_eq!(batch.success_child_count, Some(finished));
        assert_eq!(batch.failed_child_count, Some(24 - finished));
        assert_eq!(batch.running_child_count, Some(0));
        let expected = if finished == 24 { "FINISHED" } else { "FAILED" };
        assert_eq!(batch.task_status, expected);
    }
}

/// Each child's `(status, error code)`, asserting every one is final and consistent: FINISHED
/// without a code, or FAILED with the agent's code or the expiry's.
async fn final_states(
    h: &Harness,
    answer: &SendFileResponse,
) -> HashMap<String, (String, Option<String>)> {
    let mut states = HashMap::new();
    for d in &answer.data {
        let row = h.row(&d.task_id).await;
        let state = (row.task_status, row.error_code);
        match (state.0.as_str(), state.1.as_deref()) {
            ("FINISHED", None)
            | ("FAILED", Some("Network.ConnectFailed"))
            | ("FAILED", Some("Fleet.InstanceOffline")) => {}
            other => panic!("{}: not one final state: {other:?}", d.task_id),
        }
        states.insert(d.task_id.clone(), state);
    }
    states
}

/// Both replicas' expiry runs at the same moment over the same due children: each child is
/// expired (logged and returned) by exactly one of them, the one whose change moved its row.
pub async fn two_replicas_expiring_the_same_children_each_claim_only_the_ones_they_moved(
    store: Backend,
) {
    let names: Vec<String> = (1..=16).map(|i| format!("acp-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = Harness::with_expiry(&store, &refs, Duration::from_millis(50)).await;
    let replica = h.replica().await;
    let fleets = [Arc::clone(&h.fleet), Arc::clone(&replica.fleet)];
    for round in 0..3 {
        let answer = h.send(&refs, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let runs: Vec<_> = fleets
            .iter()
            .map(|fleet| {
                let fleet = Arc::clone(fleet);
                tokio::spawn(async move { fleet.expire_due().await.unwrap() })
            })
            .collect();
        let mut claimed: Vec<String> = Vec::new();
        for run in runs {
            claimed.extend(run.await.unwrap());
        }
        claimed.sort();
        let mut expected: Vec<String> = answer.data.iter().map(|d| d.task_id.clone()).collect();
        expected.sort();
        assert_eq!(claimed, expected, "round {round}: each child claimed once");
        for d in &answer.data {
            let row = h.row(&d.task_id).await;
            assert_eq!(
                (row.task_status.as_str(), row.error_code.as_deref()),
                ("FAILED", Some("Fleet.InstanceOffline"))
            );
        }
    }
}

/// Delivery's group commits on two replicas naming the same children of two batches in
/// opposite orders: neither deadlocks nor loses a report, and the counts stay true.
pub async fn overlapping_report_groups_on_two_replicas_all_commit_with_true_counts(store: Backend) {
    let names: Vec<String> = (1..=8).map(|i| format!("acp-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = Harness::new(&store, &refs).await;
    let replica = h.replica().await;
    let fleets = [Arc::clone(&h.fleet), Arc::clone(&replica.fleet)];
    for round in 0..3 {
        let a = h.send(&refs, None).await.unwrap();
        let b = h.send(&refs, None).await.unwrap();
        let children: Vec<(String, String)> = a
            .data
            .iter()
            .chain(&b.data)
            .map(|d| (d.android_instance_id.clone(), d.task_id.clone()))
            .collect();
        for stage in 0..2 {
            let runs: Vec<_> = fleets
                .iter()
                .enumerate()
                .map(|(r, fleet)| {
                    let mut order = children.clone();
                    if r == 1 {
                        order.reverse();
                    }
                    let group: Vec<Report> = order
                        .into_iter()
                        .map(|(instance_id, task_id)| Report {
                            instance_id,
                            task: if stage == 0 {
                                view(&task_id, Phase::Running, 10 * r as u64, Some(100))
                            } else {
                                done(&task_id)
                            },
                        })
                        .collect();
                    let fleet = Arc::clone(fleet);
                    tokio::spawn(async move { fleet.reports(group).await })
                })
                .collect();
            for run in runs {
                let outcomes = run.await.unwrap();
                assert_eq!(outcomes.len(), 16);
                for outcome in outcomes {
                    outcome.unwrap_or_else(|e| panic!("round {round}, stage {stage}: {e}"));
                }
            }
        }
        for batch in [&a, &b] {
            let row = h.row(&batch.task_id).await;
            assert_eq!(
                (row.task_status.as_str(), row.success_child_count),
                ("FINISHED", Some(8)),
                "round {round}"
            );
            for d in &batch.data {
                assert_eq!(h.row(&d.task_id).await.task_status, "FINISHED");
            }
        }
    }
}

/// Replicas consuming one agent's messages (NATS: one shared consumer) may commit them out of
/// order: a RUNNING report after the FINISHED one, alone or inside a group, on the other
/// replica. It is a clean no-op, `Ok` (acked, not retried): the final row stays as it was.
pub async fn a_stale_report_committed_by_another_replica_after_the_final_one_is_a_no_op(
    store: Backend,
) {
    let h = Harness::new(&store, &["acp-1", "acp-2"]).await;
    let replica = h.replica().await;
    let answer = h.send(&["acp-1", "acp-2"], None).await.unwrap();
    let (t1, t2) = (&answer.data[0].task_id, &answer.data[1].task_id);
    let report = |instance: &str, task| Report {
        instance_id: instance.to_string(),
        task,
    };
    h.fleet
        .reports(vec![report("acp-1", done(t1)), report("acp-2", done(t2))])
        .await
        .into_iter()
        .for_each(|o| o.unwrap());
    let (row1, row2, batch) = (
        h.row(t1).await,
        h.row(t2).await,
        h.row(&answer.task_id).await,
    );
    assert_eq!(row1.task_status, "FINISHED");
    replica
        .fleet
        .report(report("acp-1", view(t1, Phase::Running, 40, Some(100))))
        .await
        .unwrap();
    let outcomes = replica
        .fleet
        .reports(vec![
            report("acp-2", view(t2, Phase::Running, 60, Some(100))),
            report("acp-1", view(t1, Phase::Pending, 0, None)),
        ])
        .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(h.row(t1).await, row1);
    assert_eq!(h.row(t2).await, row2);
    assert_eq!(h.row(&answer.task_id).await, batch);
}
