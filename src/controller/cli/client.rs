//! The operator's client of the public API: each call signed with ACS3-HMAC-SHA256 exactly
//! as Alibaba's SDK signs it ([`crate::controller::api::acs3::sign`]), so the CLI exercises the
//! same path any SDK does.

use super::watch;
use super::EXIT_OK;
use crate::controller::api::acs3::{self, canonical_query, Signing};
use crate::controller::api::VERSION;
use crate::error::{Code, Error, Result};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// The controller's API (`HOST:PORT`, or with `http://` / `https://`), as the SDK's endpoint
    #[arg(long, value_name = "ENDPOINT", default_value = "127.0.0.1:8080")]
    pub endpoint: String,
    /// A file holding `ACCESS_KEY_ID ACCESS_KEY_SECRET` (what `access-key create` prints);
    /// else ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET
    #[arg(long, value_name = "FILE")]
    pub access_key_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SendFileArgs {
    #[command(flatten)]
    pub api: EndpointArgs,
    /// A phone (AndroidInstanceIdList.N); repeat for several
    #[arg(long = "instance", value_name = "ID", required = true)]
    pub instances: Vec<String>,
    #[arg(long, value_name = "PATH")]
    pub source_file_path: String,
    /// OSS, DOWNLOAD_URL or OSS_BRIDGED
    #[arg(long, value_name = "TYPE")]
    pub upload_type: String,
    #[arg(long, value_name = "URL")]
    pub upload_url: String,
    #[arg(long, value_name = "HOST")]
    pub upload_endpoint: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub target_file_name: Option<String>,
    #[arg(long)]
    pub auto_install: bool,
    #[arg(long, value_name = "HEX")]
    pub file_md5: Option<String>,
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
    /// Follow the batch with a live per-phone table until every phone is done
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub api: EndpointArgs,
    /// TaskIds.N; repeat for several
    #[arg(long = "task-id", value_name = "ID")]
    pub task_ids: Vec<String>,
    #[arg(long, value_name = "ID")]
    pub parent_task_id: Option<String>,
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// 1 batches, 2 per-phone tasks
    #[arg(long, value_name = "N")]
    pub level: Option<u8>,
    #[arg(long, value_name = "N")]
    pub max_results: Option<u32>,
    #[arg(long, value_name = "TOKEN")]
    pub next_token: Option<String>,
    /// With one --task-id of a batch (or --parent-task-id): a live per-phone table until done
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub api: EndpointArgs,
    /// A batch TaskId (every phone) or one phone's TaskId
    pub task_id: String,
}

/// Longest query string a call sends; longer parameter lists go in a form body.
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// One signed RPC call; the answer's JSON, or the API's error as an [`Error`] carrying the
/// API's own code in its message.
pub struct Caller {
    http: reqwest::Client,
    base: String,
    host: String,
    access_key_id: String,
    secret: String,
}

impl Caller {
    pub fn new(args: &EndpointArgs) -> Result<Caller> {
        let (scheme, host) = match args.endpoint.split_once("://") {
            Some((s, h)) if s == "http" || s == "https" => (s.to_string(), h.trim_end_matches('/')),
            Some(_) => {
                return Err(Error::new(
                    Code::InvalidConfig,
                    format!("--endpoint {}: only http:// or https://", args.endpoint),
                ))
            }
            None => ("http".to_string(), args.endpoint.trim_end_matches('/')),
        };
        let (access_key_id, secret) = access_key(args)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::new(Code::Internal, format!("building the HTTP client: {e}")))?;
        Ok(Caller {
            http,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            access_key_id,
            secret,
        })
    }

    pub async fn call(&self, action: &str, params: Vec<(String, String)>) -> Result<Value> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let date = acs3::format_date(now);
        let nonce = crate::controller::secrets::new_secret();
        // A long parameter list (a SendFile naming thousands of phones) goes as a form body,
        // as the SDK may send it: a URL is limited to 64 KiB.
        let form = canonical_query(&params);
        let in_body = form.len() > MAX_QUERY_BYTES;
        let (query, body): (&[(String, String)], Vec<u8>) = if in_body {
            (&[], form.into_bytes())
        } else {
            (&params, Vec::new())
        };
        let headers = acs3::sign(&Signing {
            access_key_id: &self.access_key_id,
            secret: &self.secret,
            method: "POST",
            host: &self.host,
            action,
            version: VERSION,
            query,
            body: &body,
            content_type: in_body.then_some("application/x-www-form-urlencoded"),
            date: &date,
            nonce: &nonce,
        });
        let url = format!("{}/?{}", self.base, canonical_query(query));
        let mut request = self.http.post(url).body(body);
        for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|e| {
            Error::new(
                Code::NetworkConnect,
                // Without the URL: its query holds the parameters (a signed UploadUrl).
                format!("{}: {}", self.base, e.without_url()),
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            Error::new(
                Code::NetworkReset,
                format!("{action}: reading the answer: {}", e.without_url()),
            )
        })?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                Code::ApiBadRequest,
                format!("{action}: the answer (HTTP {status}) is not JSON: {e}"),
            )
        })?;
        if !status.is_success() {
            let code = body["Code"].as_str().unwrap_or("Unknown");
            let message = body["Message"].as_str().unwrap_or("");
            let request_id = body["RequestId"].as_str().unwrap_or("");
            return Err(Error::new(
                Code::ApiBadRequest,
                format!(
                    "{action} failed: {code} (HTTP {status}): {message} [RequestId {request_id}]"
                ),
            ));
        }
        Ok(body)
    }
}

fn access_key(args: &EndpointArgs) -> Result<(String, String)> {
    if let Some(file) = &args.access_key_file {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io("reading", file, &e))?;
        let mut words = text.split_whitespace();
        return match (words.next(), words.next()) {
            (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
            _ => Err(Error::new(
                Code::InvalidConfig,
                format!(
                    "{} must hold `ACCESS_KEY_ID ACCESS_KEY_SECRET`",
                    file.display()
                ),
            )),
        };
    }
    match (
        std::env::var("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        std::env::var("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
    ) {
        (Ok(id), Ok(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
        _ => Err(Error::new(
            Code::InvalidConfig,
            "no AccessKey: pass --access-key-file FILE (from `ferry-controller access-key create`) or set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        )),
    }
}

fn push(params: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        params.push((name.to_string(), value.to_string()));
    }
}

pub async fn send_file(args: SendFileArgs) -> Result<u8> {
    let caller = Caller::new(&args.api)?;
    let mut params: Vec<(String, String)> = args
        .instances
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("AndroidInstanceIdList.{}", i + 1), id.clone()))
        .collect();
    push(&mut params, "SourceFilePath", Some(&args.source_file_path));
    push(&mut params, "UploadType", Some(&args.upload_type));
    push(&mut params, "UploadUrl", Some(&args.upload_url));
    push(
        &mut params,
        "UploadEndpoint",
        args.upload_endpoint.as_deref(),
    );
    push(
        &mut params,
        "TargetFileName",
        args.target_file_name.as_deref(),
    );
    push(&mut params, "FileMd5", args.file_md5.as_deref());
    push(&mut params, "ClientToken", args.client_token.as_deref());
    if args.auto_install {
        // As the Python SDK sends a boolean.
        push(&mut params, "AutoInstall", Some("True"));
    }
    let answer = caller.call("SendFile", params).await?;
    if args.api.json {
        println!("{answer}");
    } else {
        println!("batch {}", answer["TaskId"].as_str().unwrap_or(""));
        for row in answer["Data"].as_array().into_iter().flatten() {
            println!(
                "  {}  {}",
                row["AndroidInstanceId"].as_str().unwrap_or(""),
                row["TaskId"].as_str().unwrap_or("")
            );
        }
    }
    if !args.watch {
        return Ok(EXIT_OK);
    }
    let batch = answer["TaskId"].as_str().unwrap_or_default().to_string();
    watch::follow(&caller, &batch).await
}

pub async fn describe_tasks(args: DescribeArgs) -> Result<u8> {
    let caller = Caller::new(&args.api)?;
    if args.watch {
        let batch = match (&args.parent_task_id, args.task_ids.as_slice()) {
            (Some(parent), _) => parent.clone(),
            (None, [one]) => one.clone(),
            _ => {
                return Err(Error::new(
                    Code::InvalidConfig,
                    "--watch follows one batch: give --parent-task-id or one --task-id",
                ))
            }
        };
        return watch::follow(&caller, &batch).await;
    }
    let mut params = Vec::new();
    for (i, id) in args.task_ids.iter().enumerate() {
        params.push((format!("TaskIds.{}", i + 1), id.clone()));
    }
    push(&mut params, "ParentTaskId", args.parent_task_id.as_deref());
    push(&mut params, "InstanceId", args.instance_id.as_deref());
    let level = args.level.map(|l| l.to_string());
    push(&mut params, "Level", level.as_deref());
    let max = args.max_results.map(|m| m.to_string());
    push(&mut params, "MaxResults", max.as_deref());
    push(&mut params, "NextToken", args.next_token.as_deref());
    let answer = caller.call("DescribeTasks", params).await?;
    if args.api.json {
        println!("{answer}");
        return Ok(EXIT_OK);
    }
    let rows: Vec<Value> = answer["Data"].as_array().cloned().unwrap_or_default();
    print!("{}", watch::table(&rows, None));
    println!("{} of {} tasks", rows.len(), answer["TotalCount"]);
    if let Some(token) = answer["NextToken"].as_str() {
        println!("more: --next-token {token}");
    }
    Ok(EXIT_OK)
}

pub async fn list_instances(args: EndpointArgs) -> Result<u8> {
    let caller = Caller::new(&args)?;
    let answer = caller.call("FerryListInstances", Vec::new()).await?;
    if args.json {
        println!("{answer}");
        return Ok(EXIT_OK);
    }
    println!(
        "{:<24} {:<8} {:<21} {:<10} FREE",
        "INSTANCE", "STATE", "LAST SEEN", "AGENT"
    );
    for i in answer["Instances"].as_array().into_iter().flatten() {
        let free: Vec<String> = i["Roots"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} {} MiB",
                    r["Root"].as_str().unwrap_or(""),
                    r["FreeBytes"].as_u64().unwrap_or(0) >> 20
                )
            })
            .collect();
        println!(
            "{:<24} {:<8} {:<21} {:<10} {}",
            i["InstanceId"].as_str().unwrap_or(""),
            if i["Online"].as_bool() == Some(true) {
                "online"
            } else {
                "offline"
            },
            i["LastSeen"].as_str().unwrap_or("-"),
            i["AgentVersion"].as_str().unwrap_or("-"),
            free.join(", ")
        );
    }
    Ok(EXIT_OK)
}

pub async fn cancel(args: CancelArgs) -> Result<u8> {
    let caller = Caller::new(&args.api)?;
    let answer = caller
        .call(
            "FerryCancelTask",
            vec![("TaskId".into(), args.task_id.clone())],
        )
        .await?;
    if args.api.json {
        println!("{answer}");
    } else {
        let n = answer["Data"].as_array().map_or(0, Vec::len);
        println!("cancel requested for {n} task(s) of {}", args.task_id);
    }
    Ok(EXIT_OK)
}
