//! Intake tests: every rule of the SendFile API text refused with its own code, and the
//! payloads the control plane really sends accepted and round-tripped.

use super::*;

const ENDPOINT: &str = "oss-cn-hangzhou-internal.aliyuncs.com";
const SECRET: &str = "s3cr3t-AccessKeySecret-value";
const TOKEN: &str = "sts-SecurityToken-value";

/// The default (Android) allowed roots.
fn roots() -> Vec<String> {
    crate::config::ANDROID_ROOTS
        .iter()
        .map(|r| r.to_string())
        .collect()
}

/// parse + validate, as the daemon does.
fn intake(json: &str) -> Result<ValidTask> {
    validate(parse(json.as_bytes())?, &roots())
}

fn accepted(json: &str) -> ValidTask {
    intake(json).unwrap_or_else(|e| panic!("refused {json}: {e}"))
}

fn dp(text: &str) -> DevicePath {
    DevicePath::parse(text).unwrap()
}

/// Valid payloads of each upload type, as (field, raw JSON value) pairs.
const OSS: &[(&str, &str)] = &[
    ("SourceFilePath", r#""/sdcard/Download""#),
    ("UploadType", r#""OSS""#),
    (
        "UploadUrl",
        r#""oss://cloudphone-saved-bucket-example/send/a.txt""#,
    ),
    (
        "UploadEndpoint",
        r#""oss-cn-hangzhou-internal.aliyuncs.com""#,
    ),
];
const DL: &[(&str, &str)] = &[
    ("SourceFilePath", r#""/sdcard/Download/MyFile.txt""#),
    ("UploadType", r#""DOWNLOAD_URL""#),
    ("UploadUrl", r#""https://example.com/MyFile.txt""#),
];
const BRIDGED: &[(&str, &str)] = &[
    ("SourceFilePath", r#""/sdcard/Download""#),
    ("UploadType", r#""OSS_BRIDGED""#),
    ("UploadUrl", r#""https://example.com/app.apk""#),
    (
        "UploadEndpoint",
        r#""oss-cn-hangzhou-internal.aliyuncs.com""#,
    ),
];

/// `base` as JSON text with `field` set to the raw JSON `raw` (added when absent), or
/// left out when `raw` is None.
fn with(base: &[(&str, &str)], field: &str, raw: Option<&str>) -> String {
    let mut parts: Vec<String> = base
        .iter()
        .filter(|(name, _)| *name != field)
        .map(|(name, value)| format!("{name:?}: {value}"))
        .collect();
    if let Some(raw) = raw {
        parts.push(format!("{field:?}: {raw}"));
    }
    format!("{{{}}}", parts.join(", "))
}

fn oss(field: &str, raw: &str) -> String {
    with(OSS, field, Some(raw))
}

fn dl(field: &str, raw: &str) -> String {
    with(DL, field, Some(raw))
}

fn bridged(field: &str, raw: &str) -> String {
    with(BRIDGED, field, Some(raw))
}

/// A JSON string literal.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Bad payloads grouped by the code they must get and the text their message must mention.
fn bad_payloads() -> Vec<(Code, &'static str, Vec<String>)> {
    let long_path = quoted(&format!("/sdcard/{}", "d/".repeat(2100)));
    let long_component = quoted(&format!("/sdcard/{}", "n".repeat(256)));
    let long_url = quoted(&format!("https://example.com/{}", "u".repeat(8 * 1024)));
    let long_bucket = quoted(&format!("oss://{BUCKET_PREFIX}{}/a", "b".repeat(40)));
    let long_key = quoted(&format!(
        "oss://{BUCKET_PREFIX}example/{}",
        "k".repeat(1024)
    ));
    let long_name = quoted(&"f".repeat(256));
    let long_task_id = quoted(&"t".repeat(65));
    let long_token = quoted(&"c".repeat(101));
    let s = String::from;
    let (path, url, endpoint, target) = (
        "SourceFilePath",
        "UploadUrl",
        "UploadEndpoint",
        "TargetFileName",
    );
    vec![
        (
            Code::InvalidPayload,
            "JSON",
            vec![
                s("not json"),
                s(""),
                s(r#"{"SourceFilePath": "/sdcard/Download","#),
                s(r#"[{"UploadType": "OSS"}]"#),
                s(r#""OSS""#),
                s("null"),
                s("42"),
            ],
        ),
        (
            // serde_json would keep the last of two equal keys silently.
            Code::InvalidPayload,
            "appears twice",
            vec![
                s(
                    r#"{"SourceFilePath": "/sdcard/Download/a", "UploadType": "DOWNLOAD_URL",
                    "UploadUrl": "https://example.com/a", "UploadUrl": "https://evil.example/a"}"#,
                ),
                s(
                    r#"{"SourceFilePath": "/sdcard/Download/a", "UploadType": "DOWNLOAD_URL",
                    "UploadUrl": "https://example.com/a", "SourceFilePath": "/sdcard/Download/b"}"#,
                ),
                oss(
                    "Credentials",
                    r#"{"AccessKeyId": "a", "AccessKeySecret": "x", "AccessKeyId": "b"}"#,
                ),
                oss("RequestId", r#"[{"k": 1, "k": 2}]"#),
            ],
        ),
        (
            Code::InvalidUnknownField,
            "TargetFilename",
            vec![oss("TargetFilename", r#""a.txt""#)],
        ),
        (
            Code::InvalidUnknownField,
            "uploadUrl",
            vec![oss("uploadUrl", r#""x""#)],
        ),
        (Code::InvalidUnknownField, "Md5", vec![oss("Md5", r#""x""#)]),
        (
            Code::InvalidUploadType,
            "UploadType",
            vec![
                with(OSS, "UploadType", None),
                oss("UploadType", r#""""#),
                oss("UploadType", r#""oss""#),
                oss("UploadType", r#""FTP""#),
                oss("UploadType", r#"" OSS""#),
                oss("UploadType", "1"),
                oss("UploadType", "null"),
            ],
        ),
        (
            Code::InvalidSourceFilePath,
            "SourceFilePath",
            vec![
                with(OSS, path, None),
                oss(path, r#""""#),
                oss(path, r#""sdcard/Download""#),
                oss(path, r#""/sdcard/../data/local""#),
                oss(path, r#""/sdcard/./Download""#),
                oss(path, r#""/sdcard/a\u0000b""#),
                oss(path, r#""/sdcard/a\nb""#),
                oss(path, r#""/sdcard/a\u007fb""#),
                // C1 controls, bidi overrides and marks, zero-width characters.
                oss(path, r#""/sdcard/a\u0085b""#),
                dl(path, r#""/sdcard/Download/evil\u202ekpa.exe""#),
                dl(path, r#""/sdcard/Download/a\u2066b.apk""#),
                dl(path, r#""/sdcard/Download/a\u200fb.apk""#),
                dl(path, r#""/sdcard/Download/a\u061cb.apk""#),
                dl(path, r#""/sdcard/Download/a\u200bb.apk""#),
                dl(path, r#""/sdcard/Download/\ufeffa.apk""#),
                // Another task's staging file, in any case, and staging-named folders.
                dl(path, r#""/sdcard/Download/.ferry-t-1.part""#),
                dl(path, r#""/sdcard/Download/.FERRY-t-1.part""#),
                dl(path, r#""/sdcard/.Ferry-x/a.apk""#),
                oss(path, r#""/sdcard/Download/.ferry-t1""#),
                // Outside the allowed roots (lexically), or the root itself as a file.
                dl(path, r#""/proc/self/root/sdcard/x""#),
                dl(path, r#""/data/system/x""#),
                dl(path, r#""/sdcard""#),
                dl(path, r#""/storage/emulated/0""#),
                dl(path, r#""/sdcardx/a""#),
                oss(path, r#""/data/system""#),
                bridged(path, r#""/etc""#),
                oss(path, &long_path),
                oss(path, &long_component),
                oss(path, r#"["/sdcard"]"#),
                bridged(path, r#""../sdcard""#),
                // DOWNLOAD_URL names a file, not a folder.
                dl(path, r#""/sdcard/Download/""#),
                dl(path, r#""/sdcard/Download//""#),
                dl(path, r#""/""#),
                dl(path, r#""MyFile.txt""#),
                dl(path, r#""/sdcard/Download/..""#),
            ],
        ),
        (
            Code::InvalidUploadUrl,
            "UploadUrl",
            vec![
                oss(
                    url,
                    r#""oss://cloudphone-saved-bucket-example/send/.ferry-t-1.part""#,
                ),
                oss(url, r#""oss://cloudphone-saved-bucket-example/.FERRY-x""#),
                with(OSS, url, None),
                oss(url, "5"),
                dl(url, "true"),
                dl(url, r#""""#),
                dl(url, r#""ftp://example.com/MyFile.txt""#),
                dl(url, r#""file:///etc/passwd""#),
                dl(url, r#""http://""#),
                dl(url, r#""https:///""#),
                dl(url, r#""not a url""#),
                dl(url, r#""example.com/MyFile.txt""#),
                dl(url, &long_url),
                bridged(url, r#""oss://cloudphone-saved-bucket-example/a.apk""#),
                bridged(url, r#""ftp://example.com/app.apk""#),
                // OSS addresses.
                oss(
                    url,
                    r#""https://cloudphone-saved-bucket-example.oss.aliyuncs.com/a""#,
                ),
                oss(url, r#""cloudphone-saved-bucket-example/send/a.txt""#),
                oss(url, r#""OSS://cloudphone-saved-bucket-example/send/a.txt""#),
                oss(url, r#""oss://my-bucket/send/a.txt""#),
                oss(url, r#""oss://saved-bucket-cloudphone-x/send/a.txt""#),
                oss(url, r#""oss://cloudphone-saved-bucket-Example/send/a.txt""#),
                oss(url, r#""oss://cloudphone-saved-bucket-/send/a.txt""#),
                oss(
                    url,
                    r#""oss://cloudphone-saved-bucket-ex_ample/send/a.txt""#,
                ),
                oss(url, &long_bucket),
                oss(url, r#""oss://cloudphone-saved-bucket-example""#),
                oss(url, r#""oss://cloudphone-saved-bucket-example/""#),
                oss(url, r#""oss://cloudphone-saved-bucket-example//a.txt""#),
                oss(url, r#""oss://cloudphone-saved-bucket-example/a\u0000b""#),
                oss(url, &long_key),
            ],
        ),
        (
            Code::InvalidUploadUrl,
            "BridgedObject",
            vec![
                bridged("BridgedObject", r#""oss://other-bucket/a.apk""#),
                bridged("BridgedObject", r#""https://example.com/a.apk""#),
                bridged("BridgedObject", "7"),
            ],
        ),
        (
            Code::InvalidUploadEndpoint,
            "UploadEndpoint",
            vec![
                with(OSS, endpoint, None),
                with(BRIDGED, endpoint, None),
                oss(endpoint, r#""""#),
                oss(endpoint, "5"),
                oss(
                    endpoint,
                    r#""oss-cn-hangzhou-internal.aliyuncs.com/bucket""#,
                ),
                oss(
                    endpoint,
                    r#""https://oss-cn-hangzhou-internal.aliyuncs.com/x/y""#,
                ),
                oss(endpoint, r#""ftp://oss-cn-hangzhou-internal.aliyuncs.com""#),
                oss(endpoint, r#""oss-cn-hangzhou-internal.aliyuncs.com?x=1""#),
                oss(endpoint, r#""user@oss-cn-hangzhou-internal.aliyuncs.com""#),
                oss(endpoint, r#""not a host""#),
            ],
        ),
        (
            Code::InvalidTargetFileName,
            "TargetFileName",
            vec![
                oss(target, r#""../x""#),
                oss(target, r#""/abs/name""#),
                oss(target, r#""a/b""#),
                oss(target, r#""..""#),
                oss(target, r#"".""#),
                oss(target, r#""a\u0000b""#),
                oss(target, r#""a\tb""#),
                oss(target, &long_name),
                oss(target, "3"),
                oss(target, r#"".ferry-t-1.part""#),
                oss(target, r#"".FeRrY-T1.part""#),
                bridged(target, r#"".ferry-x""#),
                oss(target, r#""a\u202eb""#),
                oss(target, r#""a\u009bb""#),
                bridged(target, r#""a/b""#),
                // Refused for DOWNLOAD_URL too, although it has no effect there.
                dl(target, r#""../x""#),
                dl(target, r#""/abs/name""#),
                dl(target, r#""a/b""#),
                dl(target, r#""..""#),
                dl(target, r#""a\u0000b""#),
            ],
        ),
        (
            Code::InvalidAutoInstall,
            "AutoInstall",
            ["\"yes\"", "1", "0", "\"\"", "[true]", "{}"]
                .map(|raw| oss("AutoInstall", raw))
                .into(),
        ),
        (
            Code::InvalidCredentials,
            "Credentials",
            [
                r#"{"AccessKeyId": "LTAI5t", "AccessKeySecret": ""}"#,
                r#"{"AccessKeyId": "", "AccessKeySecret": "x"}"#,
                r#"{"AccessKeyId": "LTAI5t"}"#,
                r#"{"AccessKeyId": 5, "AccessKeySecret": "x"}"#,
                r#"{"AccessKeyId": "a", "AccessKeySecret": "x", "SecurityToken": false}"#,
                r#"{"AccessKeyId": "a", "AccessKeySecret": "x", "Extra": "y"}"#,
                r#"{"AccessKeyId": "a", "AccessKeySecret": "x", "securityToken": "t"}"#,
                "true",
                r#""LTAI5t""#,
            ]
            .map(|raw| oss("Credentials", raw))
            .into(),
        ),
        (
            Code::InvalidFileMd5,
            "FileMd5",
            [
                r#""d41d8cd98f00b204e9800998ecf8427""#,
                r#""d41d8cd98f00b204e9800998ecf8427e0""#,
                r#""z41d8cd98f00b204e9800998ecf8427e""#,
                r#""d41d8cd98f00b204e9800998ecf842é""#,
                r#""1B2M2Y8AsgTpgAmY7PhCfg==""#,
                r#""""#,
                "5",
            ]
            .map(|raw| oss("FileMd5", raw))
            .into(),
        ),
        (
            Code::InvalidTaskId,
            "TaskId",
            [
                r#""t/1""#,
                r#""..""#,
                r#"".journal""#,
                long_task_id.as_str(),
                r#""""#,
                r#""t 1""#,
                r#""t\u0000""#,
                "42",
            ]
            .map(|raw| oss("TaskId", raw))
            .into(),
        ),
        (
            Code::InvalidClientToken,
            "ClientToken",
            [long_token.as_str(), r#""""#, r#""a b""#, "{}"]
                .map(|raw| oss("ClientToken", raw))
                .into(),
        ),
    ]
}

#[test]
fn bad_payloads_are_refused_with_their_own_code() {
    let mut count = 0;
    let mut failures = Vec::new();
    for (code, mention, payloads) in bad_payloads() {
        for json in payloads {
            count += 1;
            match intake(&json) {
                Ok(task) => failures.push(format!("{json}\n    accepted as {:?}", task.plan)),
                Err(e) if e.code != code => failures.push(format!(
                    "{json}\n    expected {code}, got {}: {}",
                    e.code, e.message
                )),
                Err(e) if !e.message.contains(mention) => failures.push(format!(
                    "{json}\n    message does not mention {mention:?}: {}",
                    e.message
                )),
                Err(_) => {}
            }
        }
    }
    assert!(count >= 30, "only {count} bad payloads");
    assert!(
        failures.is_empty(),
        "{} of {count} bad payloads were mishandled:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `u8::from_str_radix` takes a leading `+`, so "+f" would pass for a hex pair.
#[test]
fn file_md5_with_sign_characters_is_refused() {
    for md5 in [
        "+d+d+d+d+d+d+d+d+d+d+d+d+d+d+d+d",
        "d41d8cd98f00b204e9800998ecf842+e",
    ] {
        let err = intake(&oss("FileMd5", &quoted(md5))).expect_err(md5);
        assert_eq!(err.code, Code::InvalidFileMd5, "{md5}: {}", err.message);
    }
}

/// serde's derived `Deserialize` also takes a struct as a positional array; the API only
/// knows the object form.
#[test]
fn credentials_as_an_array_is_refused() {
    let err = intake(&oss("Credentials", r#"["LTAI5t", "x", "token"]"#)).unwrap_err();
    assert_eq!(err.code, Code::InvalidCredentials, "{}", err.message);
}

/// `parse_endpoint` promises a bare `host[:port]`; a password or fragment would also be
/// stored and logged verbatim, since `redacted` does not look at UploadEndpoint.
#[test]
fn upload_endpoint_with_password_or_fragment_is_refused() {
    for endpoint in [
        "https://:pw@oss-cn-hangzhou-internal.aliyuncs.com",
        "oss-cn-hangzhou-internal.aliyuncs.com#x",
    ] {
        let err = intake(&oss("UploadEndpoint", &quoted(endpoint))).expect_err(endpoint);
        assert_eq!(err.code, Code::InvalidUploadEndpoint, "{endpoint}");
    }
}

/// Error messages reach the task status; a malformed Credentials object must not carry
/// the secret it was given into them.
#[test]
fn credentials_errors_do_not_echo_secrets() {
    for raw in [
        format!(r#""LTAI5tKEYID:{SECRET}""#),
        format!(r#"{{"AccessKeyId": "LTAI5t", "AccessKeySecret": ["{SECRET}"]}}"#),
        format!(
            r#"{{"AccessKeyId": "LTAI5t", "AccessKeySecret": "x", "SecurityToken": ["{TOKEN}"]}}"#
        ),
    ] {
        let err = intake(&oss("Credentials", &raw)).expect_err(&raw);
        assert_eq!(err.code, Code::InvalidCredentials);
        assert!(
            !err.message.contains(SECRET) && !err.message.contains(TOKEN),
            "secret leaked into the error: {}",
            err.message
        );
    }
}

/// A link, an endpoint or a bucket given in the wrong shape or field is refused without
/// quoting the secret it may carry (the error reaches the API answer and `ferry send`).
#[test]
fn intake_errors_do_not_echo_link_secrets() {
    let signed = format!("https://h/a.apk?Signature={SECRET}&security-token={TOKEN}");
    let cases = [
        dl("UploadUrl", &format!(r#"["{signed}"]"#)),
        dl("UploadUrl", &format!(r#"{{"u": "{signed}"}}"#)),
        dl("AutoInstall", &quoted(&signed)),
        bridged("BridgedObject", &format!(r#"["{signed}"]"#)),
        oss(
            "UploadEndpoint",
            &quoted(&format!(
                "https://AK:{SECRET}@oss-cn-hangzhou.aliyuncs.com/?security-token={TOKEN}"
            )),
        ),
        oss(
            "UploadUrl",
            &quoted(&format!("oss://AK:{SECRET}@cloudphone-saved-bucket-x/k")),
        ),
        oss(
            "UploadUrl",
            &quoted(&format!("oss://cloudphone-saved-bucket-x?sig={SECRET}/k")),
        ),
        oss("UploadUrl", &quoted(&format!("oss://evil?sig={SECRET}/k"))),
        oss(
            "UploadUrl",
            &quoted(&format!(
                "oss://cloudphone-saved-bucket-x/k.apk?Signature={SECRET}"
            )),
        ),
    ];
    for json in cases {
        let err = intake(&json).expect_err(&json);
        assert!(
            !err.message.contains(SECRET) && !err.message.contains(TOKEN),
            "secret leaked into the error of {json}: {}",
            err.message
        );
    }
}

#[test]
fn download_url_saves_at_source_file_path_and_notes_ignored_target_name() {
    let task = accepted(
        r#"{"SourceFilePath": "/sdcard/Download/MyFile.txt", "UploadType": "DOWNLOAD_URL",
            "UploadUrl": "https://example.com/files/MyFile.txt?sig=1",
            "TargetFileName": "other.txt", "AutoInstall": false}"#,
    );
    assert_eq!(
        task.plan,
        Plan::Download {
            url: Url::parse("https://example.com/files/MyFile.txt?sig=1").unwrap(),
            target: dp("/sdcard/Download/MyFile.txt"),
        }
    );
    assert!(
        task.notes.iter().any(|n| n.contains("TargetFileName")),
        "{:?}",
        task.notes
    );
    assert_eq!(task.md5, None);
    assert_eq!(task.payload.target_file_name.as_deref(), Some("other.txt"));
}

#[test]
fn download_is_an_alias_of_download_url() {
    let task = accepted(
        r#"{"SourceFilePath": "//sdcard//Download/app.apk", "UploadType": "DOWNLOAD",
            "UploadUrl": "http://example.com:8080/app.apk", "AutoInstall": true}"#,
    );
    assert_eq!(
        task.plan,
        Plan::Download {
            url: Url::parse("http://example.com:8080/app.apk").unwrap(),
            target: dp("/sdcard/Download/app.apk"),
        }
    );
    assert!(task.notes.is_empty(), "{:?}", task.notes);
    assert!(task.payload.auto_install);
    assert_eq!(task.payload.upload_type, "DOWNLOAD");
}

#[test]
fn oss_file_is_fetched_into_the_folder_and_renamed() {
    let json = format!(
        r#"{{"TaskId": "t-4ks224ujixw", "SourceFilePath": "/sdcard/Download", "UploadType": "OSS",
            "UploadUrl": "oss://cloudphone-saved-bucket-example/send/a.txt",
            "UploadEndpoint": "{ENDPOINT}", "TargetFileName": "test.txt", "AutoInstall": false,
            "FileMd5": "D41D8CD98F00B204E9800998ECF8427E",
            "Credentials": {{"AccessKeyId": "LTAI5t", "AccessKeySecret": "{SECRET}", "SecurityToken": "{TOKEN}"}}}}"#
    );
    let task = accepted(&json);
    assert_eq!(
        task.plan,
        Plan::Oss {
            object: OssObject {
                bucket: "cloudphone-saved-bucket-example".into(),
                key: "send/a.txt".into(),
            },
            endpoint: ENDPOINT.into(),
            folder: dp("/sdcard/Download"),
            rename: Some("test.txt".into()),
        }
    );
    assert_eq!(
        task.md5,
        Some([
            0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
            0x42, 0x7e
        ])
    );
    assert!(task.notes.is_empty(), "{:?}", task.notes);
    let creds = task.payload.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_secret, SECRET);
    assert_eq!(creds.security_token.as_deref(), Some(TOKEN));
}

#[test]
fn oss_folder_keeps_the_trailing_slash() {
    let task = accepted(&oss(
        "UploadUrl",
        r#""oss://cloudphone-saved-bucket-example/send/""#,
    ));
    let Plan::Oss {
        object,
        rename,
        endpoint,
        folder,
    } = task.plan
    else {
        panic!("not an OSS plan: {:?}", task.plan);
    };
    assert_eq!(object.key, "send/");
    assert_eq!(rename, None);
    assert_eq!(endpoint, ENDPOINT);
    assert_eq!(folder, dp("/sdcard/Download"));
}

#[test]
fn empty_target_file_name_means_keep_the_original_name() {
    let task = accepted(&oss("TargetFileName", r#""""#));
    assert!(matches!(task.plan, Plan::Oss { rename: None, .. }));
}

#[test]
fn oss_endpoint_may_carry_a_scheme_and_port() {
    for endpoint in [
        "https://oss-cn-hangzhou-internal.aliyuncs.com",
        "http://127.0.0.1:9000",
        "https://oss-cn-hangzhou.aliyuncs.com/",
        "localhost:9000",
    ] {
        let task = accepted(&oss("UploadEndpoint", &quoted(endpoint)));
        assert!(
            matches!(&task.plan, Plan::Oss { endpoint: e, .. } if e == endpoint),
            "{:?}",
            task.plan
        );
    }
}

#[test]
fn oss_bridged_names_the_mirror_and_the_public_link() {
    let task = accepted(&format!(
        r#"{{"SourceFilePath": "/sdcard/Download/", "UploadType": "OSS_BRIDGED",
            "UploadUrl": "https://cdn.example.com/app.apk", "UploadEndpoint": "{ENDPOINT}",
            "BridgedObject": "oss://cloudphone-saved-bucket-mirror/bridge/t-1/app.apk",
            "TargetFileName": "game.apk", "AutoInstall": true}}"#
    ));
    assert_eq!(
        task.plan,
        Plan::OssBridged {
            public_url: Url::parse("https://cdn.example.com/app.apk").unwrap(),
            object: Some(OssObject {
                bucket: "cloudphone-saved-bucket-mirror".into(),
                key: "bridge/t-1/app.apk".into(),
            }),
            endpoint: ENDPOINT.into(),
            folder: dp("/sdcard/Download"),
            rename: Some("game.apk".into()),
        }
    );
    // Without the mirror the agent falls back to the public link.
    let task = accepted(&format!(
        r#"{{"SourceFilePath": "/sdcard/Download", "UploadType": "OSS_BRIDGED",
            "UploadUrl": "https://cdn.example.com/app.apk", "UploadEndpoint": "{ENDPOINT}"}}"#
    ));
    assert!(matches!(task.plan, Plan::OssBridged { object: None, .. }));
}

#[test]
fn envelope_keys_of_the_sendfile_request_are_ignored() {
    let envelope = [
        ("AndroidInstanceIdList", r#"["acp-34pqe4r0kd9kn"]"#),
        ("AndroidInstanceId", r#""acp-34pqe4r0kd9kn""#),
        ("RequestId", r#""425F351C-3F8E-5218-A520-B6311D0D""#),
    ];
    let task = accepted(&with(&[OSS, &envelope[..]].concat(), "", None));
    assert!(matches!(task.plan, Plan::Oss { .. }));
}

#[test]
fn auto_install_accepts_booleans_as_text_and_null() {
    for (raw, expected) in [
        ("true", true),
        ("false", false),
        (r#""true""#, true),
        (r#""false""#, false),
        ("null", false),
    ] {
        let task = accepted(&oss("AutoInstall", raw));
        assert_eq!(task.payload.auto_install, expected, "{raw}");
    }
    assert!(
        !accepted(&with(OSS, "AutoInstall", None))
            .payload
            .auto_install
    );
}

#[test]
fn ids_at_their_limits_are_accepted() {
    let id = quoted(&"t".repeat(64));
    let token = quoted(&"c".repeat(100));
    let base = [OSS, &[("TaskId", id.as_str())][..]].concat();
    accepted(&with(&base, "ClientToken", Some(&token)));
    for id in ["t-ehs0yoedj0xe9", "a", "A.b_c-9", "t..1"] {
        check_task_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
}

#[test]
fn serialised_payload_parses_back_to_the_same_payload() {
    let full = TaskPayload {
        task_id: Some("t-1".into()),
        client_token: Some("tok-1".into()),
        source_file_path: "/sdcard/Download".into(),
        upload_type: "OSS_BRIDGED".into(),
        upload_url: "https://cdn.example.com/app.apk".into(),
        upload_endpoint: Some(ENDPOINT.into()),
        target_file_name: Some("game.apk".into()),
        auto_install: true,
        credentials: Some(Credentials {
            access_key_id: "LTAI5t".into(),
            access_key_secret: SECRET.into(),
            security_token: Some(TOKEN.into()),
        }),
        file_md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
        bridged_object: Some("oss://cloudphone-saved-bucket-mirror/app.apk".into()),
    };
    let minimal = TaskPayload {
        source_file_path: "/sdcard/Download/a.txt".into(),
        upload_type: "DOWNLOAD_URL".into(),
        upload_url: "https://example.com/a.txt".into(),
        ..TaskPayload::default()
    };
    for payload in [full, minimal] {
        let json = serde_json::to_vec(&payload).unwrap();
        assert_eq!(parse(&json).unwrap(), payload);
        validate(parse(&json).unwrap(), &roots()).unwrap();
    }
    // A payload read from JSON serialises back to what it was read from.
    let base = [OSS, &[("TaskId", r#""t-9""#)][..]].concat();
    let task = accepted(&with(&base, "AutoInstall", Some(r#""true""#)));
    let again = parse(&serde_json::to_vec(&task.payload).unwrap()).unwrap();
    assert_eq!(again, task.payload);
    assert!(again.auto_install);
}

#[test]
fn redacted_hides_secrets_and_url_passwords() {
    let json = format!(
        r#"{{"SourceFilePath": "/sdcard/Download/a.txt", "UploadType": "DOWNLOAD_URL",
            "UploadUrl": "https://alice:hunter2@example.com/a.txt?Signature=SIG&security-token=STS",
            "Credentials": {{"AccessKeyId": "LTAI5t", "AccessKeySecret": "{SECRET}", "SecurityToken": "{TOKEN}"}}}}"#
    );
    let payload = parse(json.as_bytes()).unwrap();
    let redacted = payload.redacted();
    let creds = redacted.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_id, "LTAI5t");
    assert_ne!(creds.access_key_secret, SECRET);
    assert!(creds.security_token.is_some());
    assert_ne!(creds.security_token.as_deref(), Some(TOKEN));
    assert_eq!(
        redacted.upload_url,
        "https://<redacted>@example.com/a.txt?Signature=<redacted>&security-token=<redacted>"
    );
    for text in [
        serde_json::to_string(&redacted).unwrap(),
        format!("{redacted:?}"),
    ] {
        for secret in [SECRET, TOKEN, "hunter2", "alice", "SIG", "STS"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    // The original keeps what the transfer needs.
    assert_eq!(
        payload.credentials.as_ref().unwrap().access_key_secret,
        SECRET
    );
    assert!(payload.upload_url.contains("hunter2"));
    // Without a token there is nothing to invent.
    let mut bare = payload.clone();
    bare.credentials.as_mut().unwrap().security_token = None;
    assert_eq!(bare.redacted().credentials.unwrap().security_token, None);
    // A URL without user part, query or fragment is left exactly as it was.
    let mut plain = payload;
    plain.upload_url = "https://example.com:8443/dir/a.txt".into();
    assert_eq!(plain.redacted().upload_url, plain.upload_url);
}

#[test]
fn debug_output_never_contains_credentials() {
    let creds = format!(
        r#"{{"AccessKeyId": "LTAI5t", "AccessKeySecret": "{SECRET}", "SecurityToken": "{TOKEN}"}}"#
    );
    let task = accepted(&oss("Credentials", &creds));
    let creds = task.payload.credentials.clone().unwrap();
    for text in [
        format!("{creds:?}"),
        format!("{creds:#?}"),
        format!("{:?}", task.payload),
        format!("{task:?}"),
        format!("{task:#?}"),
    ] {
        assert!(!text.contains(SECRET), "secret in {text}");
        assert!(!text.contains(TOKEN), "token in {text}");
    }
}
