//! The conformance cases only the S3 servers run: a folder send resumed after `kill -9` (s3s-fs
//! and moto), and credentials refused (moto alone checks session tokens).

use super::*;

/// Whether the server's listings carry each object's ETag: s3s-fs 0.14.1's do not (it sends
/// key, size and date only); moto's do, as S3's and OSS's do.
fn listing_has_etags(source: &Source) -> bool {
    matches!(source, Source::Moto(_))
}

/// A folder send killed (`kill -9`) after two of its three objects landed: the restart lands
/// all three, fetches the two landed ones again only when the listing carries no ETag to
/// recognise them by (counted from the server's own request log), and resumes the third from
/// its partial data either way (the partial data names its object: no other one gets it).
pub(crate) fn folder_resume_after_kill_9_skips_landed_objects(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    let small = [
        ("a.bin", pattern(50_000, 11)),
        ("b.bin", pattern(60_000, 12)),
    ];
    let big = pattern(SLOW_SIZE, 13);
    for (name, data) in &small {
        source.put(&format!("dir/{name}"), data);
    }
    // Keys are landed in order: a.bin, b.bin, then c.bin.
    source.put("dir/c.bin", &big);
    // c.bin (8 MiB) is at least checkpoint_bytes: it goes alone and records its partial
    // data; a.bin and b.bin are fetched together, each through a staging file of its own.
    let alone = "checkpoint_bytes = 4194304\n";
    let d = daemon(&t, &format!("{SLOW_LIMIT}{alone}"));
    let payload = source.oss_payload("t-folder", "send/dir/", "/sdcard/Download/f");
    let (status, view) = d.submit(&payload);
    assert_eq!(status, 201, "{view}");
    wait_progress(&d, "t-folder", 110_000 + (1 << 20));
    kill_9(d);
    for (name, data) in &small {
        let landed = std::fs::read(t.host(format!("/sdcard/Download/f/{name}")));
        assert_eq!(
            landed.ok().as_ref(),
            Some(data),
            "{name} not landed before the kill"
        );
    }
    assert!(!t.host("/sdcard/Download/f/c.bin").exists());
    let before = source.s3_requests().len();

    let d = daemon(&t, alone);
    let view = d.wait_phase(
        "t-folder",
        &["SUCCESS", "FAILED", "CANCELLED"],
        TASK_TIMEOUT,
    );
    assert_success(&view);
    let mut expected: Vec<_> = small
        .iter()
        .map(|(name, data)| {
            let path = format!("/sdcard/Download/f/{name}");
            (path, data.len() as u64, sha256_hex(data))
        })
        .collect();
    expected.push((
        "/sdcard/Download/f/c.bin".into(),
        big.len() as u64,
        sha256_hex(&big),
    ));
    assert_eq!(result_files(&view), expected);
    assert_eq!(
        std::fs::read(t.host("/sdcard/Download/f/c.bin")).unwrap(),
        big
    );
    assert!(staging_files(&t.host("/sdcard/Download/f")).is_empty());

    let after = source.s3_requests()[before..].to_vec();
    for (name, _) in &small {
        let gets = S3Server::object_gets(&after, BUCKET, &format!("send/dir/{name}"));
        if listing_has_etags(&source) {
            assert!(
                gets.is_empty(),
                "{name} was landed before the kill and its ETag listed, yet fetched again: {gets:?}"
            );
        } else {
            assert!(
                !gets.is_empty(),
                "{name}: no ETag in the listing, so it cannot have been recognised as landed"
            );
        }
    }
    let ranges: Vec<_> = S3Server::object_gets(&after, BUCKET, "send/dir/c.bin")
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    let asked = bytes_asked(&ranges, big.len() as u64);
    assert!(!ranges.is_empty(), "c.bin not fetched after the restart");
    // Fetched again (no listed ETags), a.bin and b.bin go through staging files of their own
    // and are not handed c.bin's partial data (a.bin used to be, as if it were its own, and
    // the task failed with Integrity.SizeMismatch): c.bin still resumes from it.
    assert!(
        asked < big.len() as u64,
        "c.bin restarted from zero instead of resuming: asked {asked} bytes with {ranges:?}"
    );
}

/// What only a server that checks session tokens can show (moto; s3s-fs ignores them): a
/// wrong token, a missing one, and a wrong secret are each refused with their stable code, a
/// message saying what to do, and the server's request id (moto's `x-amzn-requestid`); so are
/// a missing key and a missing bucket. No secret shows anywhere.
pub(crate) fn bad_credentials_are_refused_with_their_codes() {
    let Some((source, t)) = Source::start(Kind::Moto) else {
        return;
    };
    let missing_bucket = "cloudphone-saved-bucket-missing";
    t.add_hosts(&format!("127.0.0.1 {missing_bucket}.oss.test\n"));
    source.put("a.bin", b"payload");
    source.put("dir/a.bin", b"payload");
    let d = t.daemon(&[]);
    let bogus_token = "ferry-bogus-session-token-0123456789";
    let wrong_secret = "ferry-wrong-secret-0123456789abcdef";
    let with = |id: &str, key: &str, field: &str, value: Option<&str>| {
        let mut p = source.oss_payload(id, key, "/sdcard/Download");
        match value {
            Some(v) => p["Credentials"][field] = json!(v),
            None => {
                p["Credentials"].as_object_mut().unwrap().remove(field);
            }
        }
        p
    };
    let token = "SecurityToken";
    let cases = [
        (
            with("t-token", "send/a.bin", token, Some(bogus_token)),
            "Source.CredentialsExpired",
            "fresh STS credentials",
        ),
        (
            with("t-token-dir", "send/dir/", token, Some(bogus_token)),
            "Source.CredentialsExpired",
            "fresh STS credentials",
        ),
        // An STS key without its token is an unknown key to S3.
        (
            with("t-no-token", "send/a.bin", token, None),
            "Source.InvalidAccessKeyId",
            "AccessKeyId is unknown",
        ),
        (
            with(
                "t-secret",
                "send/a.bin",
                "AccessKeySecret",
                Some(wrong_secret),
            ),
            "Source.SignatureDoesNotMatch",
            "AccessKeySecret does not belong",
        ),
        (
            source.oss_payload("t-nokey", "send/missing.bin", "/sdcard/Download"),
            "Source.NotFound",
            "check the object path",
        ),
        (
            {
                let mut p = source.oss_payload("t-nobucket", "send/a.bin", "/sdcard/Download");
                p["UploadUrl"] = json!(format!("oss://{missing_bucket}/send/a.bin"));
                p
            },
            "Source.NoSuchBucket",
            "check the bucket name",
        ),
    ];
    let mut wrong = Vec::new();
    for (payload, code, hint) in &cases {
        let view = d.run_task(payload, TASK_TIMEOUT);
        let msg = view["ErrorMsg"].as_str().unwrap_or_default();
        let named = payload["UploadUrl"].as_str().unwrap();
        if view["Phase"] != "FAILED"
            || view["ErrorCode"] != *code
            || !msg.contains(hint)
            || !msg.contains(named)
            || !msg.contains("(request id ")
        {
            wrong.push(format!(
                "{}: expected {code} naming {named} with {hint:?} and a request id, got {} {}: {msg}",
                payload["TaskId"], view["Phase"], view["ErrorCode"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(!t.host("/sdcard/Download/a.bin").exists());
    let Source::Moto(moto) = &source else {
        unreachable!()
    };
    let log = d.log_text();
    let listed = d.get("/v1/tasks").1.to_string();
    for secret in [
        bogus_token,
        wrong_secret,
        moto.phone().secret.as_str(),
        moto.phone().token.as_deref().unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret in the daemon's log");
        assert!(!listed.contains(secret), "a secret in the task list");
    }
}
