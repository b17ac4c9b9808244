//! The load driver of `scripts/bench.sh` part `fleet` (a benchmark, not a test: the script
//! starts the controller, its broker and the agents; this program only talks to them).
//!
//! ```text
//! fleet_load floor AGENTS_FILE PAYLOAD_FILE
//!     AGENTS_FILE: one `STATE_DIR DEVICE_ROOT` line per running `ferry daemon`.
//!     POSTs PAYLOAD_FILE (a payload without TaskId) to every agent's local API at once and
//!     waits until every task is SUCCESS: the floor of what the fleet path can do.
//! fleet_load fleet ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE PAYLOAD_FILE RATE
//!     One SendFile (signed like the SDK) naming every instance of INSTANCES_FILE with the
//!     payload's SourceFilePath/UploadType/UploadUrl; then DescribeTasks at RATE requests/s
//!     (open loop: one request leaves every 1/RATE s whatever the earlier ones do) until the
//!     batch is FINISHED.
//! fleet_load send ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE PAYLOAD_FILE wait|nowait
//!     (part fleet-scale) One SendFile naming every instance; `wait`: then the batch row 20
//!     times a second until every child is final (FINISHED, or FAILED with some failed).
//! fleet_load describe ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE BATCH RATE SECS
//!     (part fleet-scale) DescribeTasks at RATE/s for SECS, open loop, alternately by batch
//!     (ParentTaskId=BATCH) and by instance (InstanceId, one of INSTANCES_FILE in turn),
//!     MaxResults 100; p50/p99 of each.
//! ```
//!
//! Results go to stdout as `key value` lines for the script; progress to stderr.

use ferry::controller::cli::client::{Caller, EndpointArgs};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

/// The whole run gives up after this long (a stuck agent must not hang the script).
const GIVE_UP: Duration = Duration::from_secs(900);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs every bench target too, without a mode (or with
    // libtest's flags): this driver has no tests of its own, so it says so and succeeds.
    if args.first().is_none_or(|a| a.starts_with('-')) {
        println!("fleet_load: a load driver for scripts/bench.sh (part fleet); no tests here");
        return ExitCode::SUCCESS;
    }
    let outcome = match args.first().map(String::as_str) {
        Some("floor") if args.len() == 3 => floor(Path::new(&args[1]), Path::new(&args[2])).await,
        Some("fleet") if args.len() == 6 => {
            let rate = args[5].parse::<u32>().map_err(|e| format!("RATE: {e}"));
            match rate {
                Ok(rate) => fleet(&args[1], &args[2], &args[3], &args[4], rate).await,
                Err(e) => Err(e),
            }
        }
        Some("send") if args.len() == 6 && matches!(args[5].as_str(), "wait" | "nowait") => {
            send(&args[1], &args[2], &args[3], &args[4], args[5] == "wait").await
        }
        Some("describe") if args.len() == 7 => {
            match (args[5].parse::<u32>(), args[6].parse::<u64>()) {
                (Ok(rate), Ok(secs)) => {
                    describe(&args[1], &args[2], &args[3], &args[4], rate, secs).await
                }
                _ => Err("RATE and SECS must be whole numbers".into()),
            }
        }
        _ => Err("usage: fleet_load floor AGENTS_FILE PAYLOAD_FILE | fleet ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE PAYLOAD_FILE RATE | send ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE PAYLOAD_FILE wait|nowait | describe ENDPOINT ACCESS_KEY_FILE INSTANCES_FILE BATCH RATE SECS".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Res<String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn payload(path: &Path) -> Res<Value> {
    serde_json::from_str(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// One agent of the floor run.
struct Agent {
    base: String,
    token: String,
    /// Where the verified file lands (it appears by rename once complete).
    target: PathBuf,
    task_id: Option<String>,
    done: bool,
}

async fn floor(agents_file: &Path, payload_file: &Path) -> Res<()> {
    let body = payload(payload_file)?;
    let source_path = body["SourceFilePath"]
        .as_str()
        .ok_or("the payload has no SourceFilePath")?
        .trim_start_matches('/')
        .to_string();
    let mut agents = Vec::new();
    for line in read(agents_file)?.lines().filter(|l| !l.trim().is_empty()) {
        let (state, device) = line
            .split_once(' ')
            .ok_or_else(|| format!("{line:?}: want `STATE_DIR DEVICE_ROOT`"))?;
        let info: Value = serde_json::from_str(&read(&Path::new(state).join("api.json"))?)
            .map_err(|e| format!("{state}/api.json: {e}"))?;
        let listen = info["Listen"]
            .as_str()
            .ok_or_else(|| format!("{state}/api.json: no Listen (local API off?)"))?;
        agents.push(Agent {
            base: format!("http://{listen}"),
            token: read(&Path::new(state).join("token"))?.trim().to_string(),
            target: Path::new(device).join(&source_path),
            task_id: None,
            done: false,
        });
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    for (i, agent) in agents.iter().enumerate() {
        let request = http
            .post(format!("{}/v1/tasks", agent.base))
            .bearer_auth(&agent.token)
            .header("content-type", "application/json")
            .body(body.to_string());
        posts.spawn(async move {
            let answer = request.send().await.map_err(|e| e.to_string())?;
            let status = answer.status();
            let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
            let task: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            match task["TaskId"].as_str() {
                Some(id) if status.is_success() => Ok((i, id.to_string())),
                _ => Err(format!("agent {i}: HTTP {status}: {task}")),
            }
        });
    }
    while let Some(joined) = posts.join_next().await {
        let (i, id) = joined.map_err(|e| e.to_string())??;
        agents[i].task_id = Some(id);
    }
    let submitted = start.elapsed();
    eprintln!(
        "floor: {} tasks submitted in {:.3} s",
        agents.len(),
        submitted.as_secs_f64()
    );
    // The file appearing (a rename after verification) is cheap to watch; only then is the
    // agent asked whether its task is SUCCESS.
    let mut left = agents.len();
    while left > 0 {
        if start.elapsed() > GIVE_UP {
            return Err(format!("floor: {left} tasks not SUCCESS after {GIVE_UP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for agent in agents.iter_mut().filter(|a| !a.done) {
            if !agent.target.exists() {
                continue;
            }
            let id = agent.task_id.as_deref().unwrap_or_default();
            let bytes = http
                .get(format!("{}/v1/tasks/{id}", agent.base))
                .bearer_auth(&agent.token)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let task: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            match task["Phase"].as_str() {
                Some("SUCCESS") => {
                    agent.done = true;
                    left -= 1;
                }
                Some("FAILED" | "CANCELLED") => {
                    return Err(format!("floor: task {id} ended {task}"));
                }
                _ => {}
            }
        }
    }
    println!("floor_submit_s {:.3}", submitted.as_secs_f64());
    println!("floor_s {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

fn caller(endpoint: &str, access_key_file: &str) -> Res<Caller> {
    Caller::new(&EndpointArgs {
        endpoint: endpoint.to_string(),
        access_key_file: Some(PathBuf::from(access_key_file)),
        json: true,
    })
    .map_err(|e| e.to_string())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn fleet(
    endpoint: &str,
    access_key_file: &str,
    instances_file: &str,
    payload_file: &str,
    rate: u32,
) -> Res<()> {
    let body = payload(Path::new(payload_file))?;
    let instances: Vec<String> = read(Path::new(instances_file))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut params: Vec<(String, String)> = instances
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("AndroidInstanceIdList.{}", i + 1), id.clone()))
        .collect();
    for name in ["SourceFilePath", "UploadType", "UploadUrl"] {
        let value = body[name]
            .as_str()
            .ok_or_else(|| format!("the payload has no {name}"))?;
        params.push((name.to_string(), value.to_string()));
    }
    let api = Arc::new(caller(endpoint, access_key_file)?);
    let start = Instant::now();
    let answer = api
        .call("SendFile", params)
        .await
        .map_err(|e| e.to_string())?;
    let send_file = start.elapsed();
    let batch = answer["TaskId"]
        .as_str()
        .ok_or_else(|| format!("SendFile answered without TaskId: {answer}"))?
        .to_string();
    eprintln!(
        "fleet: SendFile for {} phones answered in {:.1} ms: batch {batch}",
        instances.len(),
        send_file.as_secs_f64() * 1000.0
    );

    // The load: DescribeTasks of the batch's first page of children, open loop.
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (api, latencies, errors, stop, batch) = (
            api.clone(),
            latencies.clone(),
            errors.clone(),
            stop.clone(),
            batch.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let (api, latencies, errors) = (api.clone(), latencies.clone(), errors.clone());
                let params = pairs(&[("ParentTaskId", &batch), ("MaxResults", "100")]);
                inflight.spawn(async move {
                    let sent = Instant::now();
                    let outcome = api.call("DescribeTasks", params).await;
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    match outcome {
                        Ok(_) => latencies.lock().unwrap().push(ms),
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };

    // Completion: the batch row, a few times a second (not counted in the latencies).
    let outcome = loop {
        if start.elapsed() > GIVE_UP {
            break Err(format!("fleet: batch {batch} not final after {GIVE_UP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let row = match api
            .call("DescribeTasks", pairs(&[("TaskIds.1", &batch)]))
            .await
        {
            Ok(answer) => answer["Data"][0].clone(),
            Err(e) => break Err(e.to_string()),
        };
        match row["TaskStatus"].as_str() {
            Some("FINISHED") => break Ok(start.elapsed()),
            Some("FAILED") => break Err(format!("fleet: batch {batch} FAILED: {row}")),
            _ => {}
        }
    };
    stop.cancel();
    let _ = load.await;
    let finished = outcome?;

    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1]
    };
    let errors = errors.lock().unwrap().clone();
    if let Some(first) = errors.first() {
        eprintln!(
            "fleet: {} DescribeTasks failed, the first: {first}",
            errors.len()
        );
    }
    println!("sendfile_ms {:.1}", send_file.as_secs_f64() * 1000.0);
    println!("fleet_s {:.3}", finished.as_secs_f64());
    println!("describe_n {}", lat.len());
    println!("describe_errors {}", errors.len());
    println!("describe_p50_ms {:.1}", pct(50.0));
    println!("describe_p99_ms {:.1}", pct(99.0));
    println!("describe_max_ms {:.1}", pct(100.0));
    Ok(())
}

/// The SendFile parameters naming every instance of `instances_file` with the payload's
/// source, type and URL.
fn send_params(instances_file: &str, payload_file: &str) -> Res<(usize, Vec<(String, String)>)> {
    let body = payload(Path::new(payload_file))?;
    let instances = read_ids(instances_file)?;
    let mut params: Vec<(String, String)> = instances
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("AndroidInstanceIdList.{}", i + 1), id.clone()))
        .collect();
    for name in ["SourceFilePath", "UploadType", "UploadUrl"] {
        let value = body[name]
            .as_str()
            .ok_or_else(|| format!("the payload has no {name}"))?;
        params.push((name.to_string(), value.to_string()));
    }
    Ok((instances.len(), params))
}

fn read_ids(instances_file: &str) -> Res<Vec<String>> {
    Ok(read(Path::new(instances_file))?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// p-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn send(
    endpoint: &str,
    access_key_file: &str,
    instances_file: &str,
    payload_file: &str,
    wait: bool,
) -> Res<()> {
    let (n, params) = send_params(instances_file, payload_file)?;
    let api = caller(endpoint, access_key_file)?;
    let start = Instant::now();
    let answer = api
        .call("SendFile", params)
        .await
        .map_err(|e| e.to_string())?;
    let answered = Instant::now();
    let batch = answer["TaskId"]
        .as_str()
        .ok_or_else(|| format!("SendFile answered without TaskId: {answer}"))?
        .to_string();
    let send_ms = (answered - start).as_secs_f64() * 1000.0;
    eprintln!("send: SendFile for {n} phones answered in {send_ms:.1} ms: batch {batch}");
    println!("batch {batch}");
    println!("sendfile_ms {send_ms:.1}");
    if !wait {
        return Ok(());
    }
    loop {
        if start.elapsed() > GIVE_UP {
            return Err(format!("send: batch {batch} not final after {GIVE_UP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = api
            .call("DescribeTasks", pairs(&[("TaskIds.1", &batch)]))
            .await
            .map_err(|e| e.to_string())?;
        let row = &answer["Data"][0];
        let count = |k: &str| row[k].as_u64().unwrap_or(0);
        let done = count("SuccessChildCount") + count("FailedChildCount");
        if done as usize >= n {
            println!("finished_s {:.3}", answered.elapsed().as_secs_f64());
            println!("finished_ok {}", count("SuccessChildCount"));
            println!("finished_failed {}", count("FailedChildCount"));
            return Ok(());
        }
    }
}

async fn describe(
    endpoint: &str,
    access_key_file: &str,
    instances_file: &str,
    batch: &str,
    rate: u32,
    secs: u64,
) -> Res<()> {
    let instances = read_ids(instances_file)?;
    if instances.is_empty() {
        return Err("describe: no instances".into());
    }
    let api = Arc::new(caller(endpoint, access_key_file)?);
    // (by batch?, ms) of every answered request; errors as text.
    let latencies = Arc::new(Mutex::new(Vec::<(bool, f64)>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let by_batch = n.is_multiple_of(2);
        let params = if by_batch {
            pairs(&[("ParentTaskId", batch), ("MaxResults", "100")])
        } else {
            let id = &instances[(n / 2 * 7919) % instances.len()];
            pairs(&[("InstanceId", id), ("MaxResults", "100")])
        };
        n += 1;
        let (api, latencies, errors) = (api.clone(), latencies.clone(), errors.clone());
        inflight.spawn(async move {
            let sent = Instant::now();
            let outcome = api.call("DescribeTasks", params).await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            match outcome {
                Ok(_) => latencies.lock().unwrap().push((by_batch, ms)),
                Err(e) => errors.lock().unwrap().push(e.to_string()),
            }
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let all = latencies.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    if let Some(first) = errors.first() {
        eprintln!(
            "describe: {} DescribeTasks failed, the first: {first}",
            errors.len()
        );
    }
    for (by_batch, name) in [(true, "batch"), (false, "instance")] {
        let mut lat: Vec<f64> = all
            .iter()
            .filter(|(b, _)| *b == by_batch)
            .map(|(_, ms)| *ms)
            .collect();
        lat.sort_by(f64::total_cmp);
        println!("describe_{name}_p50_ms {:.1}", percentile(&lat, 50.0));
        println!("describe_{name}_p99_ms {:.1}", percentile(&lat, 99.0));
        println!("describe_{name}_max_ms {:.1}", percentile(&lat, 100.0));
    }
    println!("describe_n {}", all.len());
    println!("describe_errors {}", errors.len());
    Ok(())
}
