//! The controller's public API driven by Alibaba's official Python SDK (tests/sdk/drive.py),
//! against `serve` on 127.0.0.1 with in-test doubles of ferry's own `Actions` and `Credentials`
//! traits that record what reached them. Raw requests signed by `acs3::sign` cover what the
//! SDK cannot send (wrong version, unknown action, unsigned, oversized).

#[path = "common/alibaba_sdk.rs"]
mod alibaba_sdk;
#[path = "common/skip.rs"]
mod skip;

use ferry::controller::api::{self, acs3};
use ferry::controller::model::{
    ApiError, DescribeTasksQuery, DescribeTasksResponse, InstanceTask, SendFileRequest,
    SendFileResponse, TaskRow,
};
use ferry::controller::ports::{Actions, BoxFuture, Credentials};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

const AK: &str = "LTAI-ferry-test";
const SECRET: &str = "secret/with+signs=";

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<SendFileRequest>>,
    described: Mutex<Vec<DescribeTasksQuery>>,
    /// When set, send_file answers with this error.
    refuse: Mutex<Option<ApiError>>,
}

fn rows() -> Vec<TaskRow> {
    vec![
        TaskRow {
            task_id: "t-batch1".into(),
            parent_task_id: None,
            task_type: "SendFile".into(),
            task_status: "RUNNING".into(),
            instance_id: None,
            level: 1,
            invoke_id: Some("RID-1".into()),
            error_code: None,
            error_msg: None,
            result: None,
            start_time: Some("2026-12-01T10:00:00Z".into()),
            finish_time: None,
            total_child_count: Some(2),
            success_child_count: Some(1),
            failed_child_count: Some(0),
            running_child_count: Some(1),
        },
        TaskRow {
            task_id: "t-child1".into(),
            parent_task_id: Some("t-batch1".into()),
            task_type: "SendFile".into(),
            task_status: "FAILED".into(),
            instance_id: Some("acp-1".into()),
            level: 2,
            invoke_id: Some("RID-1".into()),
            error_code: Some("Integrity.Md5Mismatch".into()),
            error_msg: Some("FileMd5 does not match".into()),
            result: Some(r#"{"BytesDone":5,"BytesTotal":5}"#.into()),
            start_time: Some("2026-12-01T10:00:00Z".into()),
            finish_time: Some("2026-12-01T10:00:03Z".into()),
            total_child_count: None,
            success_child_count: None,
            failed_child_count: None,
            running_child_count: None,
        },
    ]
}

impl Actions for Recorder {
    fn send_file(
        &self,
        request: SendFileRequest,
    ) -> BoxFuture<'_, Result<SendFileResponse, ApiError>> {
        Box::pin(async move {
            if let Some(e) = self.refuse.lock().unwrap().clone() {
                return Err(e);
            }
            let data = request
                .instance_ids
                .iter()
                .enumerate()
                .map(|(i, id)| InstanceTask {
                    android_instance_id: id.clone(),
                    task_id: format!("t-child{}", i + 1),
                })
                .collect();
            self.sent.lock().unwrap().push(request);
            Ok(SendFileResponse {
                task_id: "t-batch1".into(),
                data,
            })
        })
    }

    fn describe_tasks(
        &self,
        query: DescribeTasksQuery,
    ) -> BoxFuture<'_, Result<DescribeTasksResponse, ApiError>> {
        Box::pin(async move {
            self.described.lock().unwrap().push(query);
            Ok(DescribeTasksResponse {
                total_count: 7,
                next_token: Some("next-2".into()),
                data: rows(),
            })
        })
    }
}

struct Keys;

impl Credentials for Keys {
    fn access_key_secret(&self, id: &str) -> BoxFuture<'_, ferry::error::Result<Option<String>>> {
        let found = (id == AK).then(|| SECRET.to_string());
        Box::pin(async move { Ok(found) })
    }
    fn agent_password_hash(&self, _: &str) -> BoxFuture<'_, ferry::error::Result<Option<String>>> {
        Box::pin(async { Ok(None) })
    }
    fn agent_password_hashes(&self) -> BoxFuture<'_, ferry::error::Result<Vec<(String, String)>>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn agent_bcrypt_hashes(
        &self,
    ) -> BoxFuture<'_, ferry::error::Result<ferry::controller::ports::BcryptHashes>> {
        Box::pin(async { Ok(vec![]) })
    }
}

struct Server {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let settings = api::Settings {
            max_body_bytes: 4096,
            ..Default::default()
        };
        let task = tokio::spawn(api::serve_with(
            listener,
            settings,
            recorder.clone(),
            Arc::new(Keys),
            stop.clone(),
        ));
        Server {
            addr,
            recorder,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(15), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }

    /// Runs tests/sdk/drive.py; `None` when the SDK is missing (skipped outside CI).
    async fn sdk(
        &self,
        secret: &str,
        ak: &str,
        call: &str,
        request: Value,
        extra: &[&str],
    ) -> Option<Vec<Value>> {
        let python = alibaba_sdk::python()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive.py");
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            tokio::process::Command::new(python)
                .arg(script)
                .arg(self.addr.to_string())
                .args([ak, secret, call, "--request", &request.to_string()])
                .args(extra)
                .output(),
        )
        .await
        .expect("the SDK driver finishes")
        .expect("the SDK driver runs");
        assert!(
            out.status.success(),
            "drive.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(serde_json::from_slice(&out.stdout).expect("drive.py prints JSON"))
    }
}

fn error_of(outcome: &Value) -> (&str, u64) {
    let e = &outcome["error"];
    assert!(e.is_object(), "expected an error, got {outcome}");
    (e["code"].as_str().unwrap(), e["status"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_send_file_to_three_phones_reaches_the_fleet_logic_with_every_field() {
    let server = Server::start().await;
    let request = json!({
        "android_instance_id_list": ["acp-1", "acp-2", "acp-3"],
        "auto_install": true,
        "source_file_path": "/sdcard/Download",
        "upload_type": "DOWNLOAD_URL",
        "upload_url": "http://127.0.0.1:9/dir with space/a+b.apk?x=1&y=%2F",
        "target_file_name": "ignored.apk",
        "file_md_5": "0123456789abcdef0123456789abcdef",
        "client_token": "tok-1",
    });
    let Some(out) = server.sdk(SECRET, AK, "send_file", request, &[]).await else {
        return server.stop().await;
    };
    let body = &out[0]["ok"];
    assert_eq!(body["TaskId"], "t-batch1", "{out:?}");
    assert_eq!(
        body["Data"],
        json!([
            {"AndroidInstanceId": "acp-1", "TaskId": "t-child1"},
            {"AndroidInstanceId": "acp-2", "TaskId": "t-child2"},
            {"AndroidInstanceId": "acp-3", "TaskId": "t-child3"},
        ])
    );
    let sent = server.recorder.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.instance_ids, ["acp-1", "acp-2", "acp-3"]);
    assert_eq!(
        body["RequestId"].as_str(),
        Some(r.request_id.as_str()),
        "InvokeId = RequestId"
    );
    let p = &r.payload;
    assert!(p.auto_install);
    assert_eq!(p.source_file_path, "/sdcard/Download");
    assert_eq!(p.upload_type, "DOWNLOAD_URL");
    assert_eq!(
        p.upload_url,
        "http://127.0.0.1:9/dir with space/a+b.apk?x=1&y=%2F"
    );
    assert_eq!(p.target_file_name.as_deref(), Some("ignored.apk"));
    assert_eq!(
        p.file_md5.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(p.client_token.as_deref(), Some("tok-1"));
    assert_eq!(
        (p.task_id.as_ref(), p.upload_endpoint.as_ref()),
        (None, None)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_describe_tasks_round_trips_filters_and_rows() {
    let server = Server::start().await;
    let request = json!({
        "task_ids": ["t-batch1", "t-child1"],
        "task_statuses": ["RUNNING", "FAILED"],
        "task_types": ["SendFile"],
        "resource_ids": ["acp-1"],
        "level": 2,
        "max_results": 50,
        "next_token": "next-1",
        "invoke_id": "RID-1",
        "parent_task_id": "t-batch1",
        "instance_id": "acp-1",
    });
    let Some(out) = server.sdk(SECRET, AK, "describe_tasks", request, &[]).await else {
        return server.stop().await;
    };
    let body = &out[0]["ok"];
    assert_eq!(body["TotalCount"], 7, "{out:?}");
    assert_eq!(body["NextToken"], "next-2");
    assert_eq!(body["Data"], serde_json::to_value(rows()).unwrap());
    let q = server.recorder.described.lock().unwrap()[0].clone();
    assert_eq!(q.task_ids, ["t-batch1", "t-child1"]);
    assert_eq!(q.task_statuses, ["RUNNING", "FAILED"]);
    assert_eq!(q.task_types, ["SendFile"]);
    assert_eq!(q.resource_ids, ["acp-1"]);
    assert_eq!((q.level, q.max_results), (Some(2), 50));
    assert_eq!(q.next_token.as_deref(), Some("next-1"));
    assert_eq!(q.invoke_id.as_deref(), Some("RID-1"));
    assert_eq!(q.parent_task_id.as_deref(), Some("t-batch1"));
    assert_eq!(q.instance_id.as_deref(), Some("acp-1"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sees_alibabas_codes_for_bad_secret_unknown_key_replay_and_stale_date() {
    let server = Server::start().await;
    let call = |secret: &'static str, ak: &'static str, extra: &'static [&'static str]| {
        server.sdk(secret, ak, "describe_tasks", json!({}), extra)
    };
    let Some(out) = call("not-the-secret", AK, &[]).await else {
        return server.stop().await;
    };
    assert_eq!(error_of(&out[0]), ("SignatureDoesNotMatch", 400));
    assert_eq!(out[0]["error"]["type"], "ClientException");
    assert!(out[0]["error"]["request_id"].as_str().unwrap().len() == 36);

    let out = call(SECRET, "LTAI-nobody", &[]).await.unwrap();
    assert_eq!(error_of(&out[0]), ("InvalidAccessKeyId.NotFound", 404));

    let out = call(SECRET, AK, &["--date-offset", "-1200"]).await.unwrap();
    assert_eq!(error_of(&out[0]), ("InvalidTimeStamp.Expired", 400));
    let out = call(SECRET, AK, &["--date-offset", "1200"]).await.unwrap();
    assert_eq!(error_of(&out[0]), ("InvalidTimeStamp.Expired", 400));

    let nonce = format!("{:032x}", fastrand::u128(..));
    let nonce: &'static str = Box::leak(nonce.into_boxed_str());
    let extra: &'static [&'static str] =
        Box::leak(vec!["--fixed-nonce", nonce, "--times", "2"].into_boxed_slice());
    let out = call(SECRET, AK, extra).await.unwrap();
    assert!(
        out[0]["ok"].is_object(),
        "the first use of a nonce passes: {out:?}"
    );
    assert_eq!(error_of(&out[1]), ("SignatureNonceUsed", 400));
    // Only the first reached the fleet logic; no failed one did.
    assert_eq!(server.recorder.described.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sees_the_fleet_logics_own_codes() {
    let server = Server::start().await;
    *server.recorder.refuse.lock().unwrap() = Some(ApiError::new(
        400,
        "InvalidParameter.UploadType",
        "UploadType must be OSS, DOWNLOAD_URL or OSS_BRIDGED",
    ));
    let request = json!({
        "android_instance_id_list": ["acp-1"],
        "source_file_path": "/sdcard/Download",
        "upload_type": "FTP",
        "upload_url": "ftp://x/y",
    });
    let Some(out) = server.sdk(SECRET, AK, "send_file", request, &[]).await else {
        return server.stop().await;
    };
    assert_eq!(error_of(&out[0]), ("InvalidParameter.UploadType", 400));
    let request = json!({
        "android_instance_id_list": ["acp-1", "acp-1"],
        "source_file_path": "/sdcard/Download",
        "upload_type": "DOWNLOAD_URL",
        "upload_url": "http://x/y",
    });
    let out = server
        .sdk(SECRET, AK, "send_file", request, &[])
        .await
        .unwrap();
    assert_eq!(
        error_of(&out[0]),
        ("InvalidParameter.DuplicateInstanceId", 400)
    );
    server.stop().await;
}

type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [u8],
    bool,
    u16,
    &'a str,
);

/// A raw request signed by ferry's own signer (what the operator CLI uses).
async fn raw(
    addr: SocketAddr,
    action: &str,
    version: &str,
    query: &[(&str, &str)],
    body: &[u8],
    sign: bool,
) -> (u16, Value) {
    let query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let now = ferry::timefmt::unix_millis_now() / 1000;
    let date = acs3::format_date(now);
    let nonce = format!("{:032x}", fastrand::u128(..));
    let host = addr.to_string();
    let headers = acs3::sign(&acs3::Signing {
        access_key_id: AK,
        secret: SECRET,
        method: "POST",
        host: &host,
        action,
        version,
        query: &query,
        body,
        content_type: (!body.is_empty()).then_some("application/x-www-form-urlencoded"),
        date: &date,
        nonce: &nonce,
    });
    let url = format!(
        "http://{host}/?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&query)
            .finish()
    );
    let mut req = reqwest::Client::new().post(url).body(body.to_vec());
    for (name, value) in &headers {
        if sign || name != "authorization" {
            req = req.header(name.as_str(), value.as_str());
        }
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_get_alibabas_error_bodies() {
    let server = Server::start().await;
    let a = server.addr;

    let (status, body) = raw(
        a,
        "DescribeTasks",
        "2023-09-30",
        &[("MaxResults", "5")],
        b"",
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["TotalCount"], 7);

    // Parameters in a signed form body count like query parameters.
    let (status, body) = raw(
        a,
        "DescribeTasks",
        "2023-09-30",
        &[],
        b"MaxResults=6&Level=1",
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let last = server
        .recorder
        .described
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!((last.max_results, last.level), (6, Some(1)));

    // (action, version, query, body, signed, status, code)
    let cases: [Case; 7] = [
        (
            "DescribeTasks",
            "2023-09-30",
            &[],
            b"",
            false,
            400,
            "IncompleteSignature",
        ),
        (
            "DescribeTasks",
            "2020-01-01",
            &[],
            b"",
            true,
            400,
            "InvalidVersion",
        ),
        (
            "RebootAndroidInstancesInGroup",
            "2023-09-30",
            &[],
            b"",
            true,
            404,
            "InvalidApi.NotFound",
        ),
        (
            "DescribeTasks",
            "2023-09-30",
            &[("MaxResults", "101")],
            b"",
            true,
            400,
            "InvalidParameter",
        ),
        (
            "DescribeTasks",
            "2023-09-30",
            &[("Bogus", "1")],
            b"",
            true,
            400,
            "UnsupportedParameter",
        ),
        (
            "SendFile",
            "2023-09-30",
            &[("SourceFilePath", "/sdcard/a")],
            b"",
            true,
            400,
            "MissingParameter",
        ),
        (
            "DescribeTasks",
            "2023-09-30",
            &[],
            &[b'a'; 5000],
            true,
            413,
            "RequestTooLarge",
        ),
    ];
    for (action, version, query, body, sign, want_status, want_code) in cases {
        let (status, answer) = raw(a, action, version, query, body, sign).await;
        assert_eq!(
            (status, answer["Code"].as_str()),
            (want_status, Some(want_code)),
            "{answer}"
        );
        assert_eq!(
            answer["RequestId"].as_str().map(str::len),
            Some(36),
            "{answer}"
        );
        assert_eq!(answer["HostId"].as_str(), Some(a.to_string().as_str()));
        assert!(answer["Message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing refused reached the fleet logic.
    assert_eq!(server.recorder.described.lock().unwrap().len(), 2);
    assert!(server.recorder.sent.lock().unwrap().is_empty());
    server.stop().await;
}
