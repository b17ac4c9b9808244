//! AutoInstall over UploadType OSS on the real binary: a single `.apk` object, and an OSS
//! folder of split APKs installed as one pm session, from a real S3 server (s3s-fs,
//! `tests/common/s3_server.rs`) through the `pm` stand-in (`tests/fixtures/pm-stand-in.sh`).
//! Runs natively and, with `FERRY_TEST_CHROOT=1`, on the aarch64 build in the chroot.

mod cli_support;
mod common;
mod install_support;
#[path = "common/s3_server.rs"]
mod s3_server;

use cli_support::Target;
use install_support::{fixture, PmStandIn};
use s3_server::{S3Server, ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET};
use serde_json::{json, Value};
use std::time::Duration;

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn oss(id: &str, s3: &S3Server, key: &str) -> Value {
    json!({
        "TaskId": id,
        "UploadType": "OSS",
        "SourceFilePath": "/sdcard/Download",
        "UploadUrl": format!("oss://{BUCKET}/{key}"),
        "UploadEndpoint": s3.endpoint(),
        "Credentials": { "AccessKeyId": ACCESS_KEY_ID, "AccessKeySecret": ACCESS_KEY_SECRET },
        "AutoInstall": true,
    })
}

#[test]
fn oss_objects_and_folders_of_splits_are_installed() {
    let s3 = S3Server::start();
    s3.put_object(BUCKET, "apps/fixture.apk", &fixture("fixture.apk"));
    // The listing order puts the split first; ferry installs the base first.
    s3.put_object(
        BUCKET,
        "apps/split/a-config.fr.apk",
        &fixture("split-config.fr.apk"),
    );
    s3.put_object(BUCKET, "apps/split/b-base.apk", &fixture("split-base.apk"));
    s3.put_object(BUCKET, "apps/split/notes.txt", b"release notes");
    let t = Target::new();
    t.add_hosts(&s3.hostnames(&[BUCKET]));
    let pm = PmStandIn::install(t.root(), &|p| t.arg(p));
    let flags = t.config(
        "/data/local/ferry.toml",
        "[media_scan]\nmode = \"off\"\n[install]\npm_command = \"/system/bin/pm\"\n",
    );
    let d = t.daemon(&[&flags[0], &flags[1]]);

    let view = d.run_task(&oss("t-one", &s3, "apps/fixture.apk"), TASK_TIMEOUT);
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(view["Result"]["Install"]["Package"], "com.ferry.fixture");
    assert_eq!(pm.packages(), "com.ferry.fixture 7 base.apk\n");

    let view = d.run_task(&oss("t-folder", &s3, "apps/split/"), TASK_TIMEOUT);
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    let install = &view["Result"]["Install"];
    assert_eq!(install["Package"], "com.ferry.fixture.split", "{view}");
    assert_eq!(install["Apks"], json!(["base.apk", "split_config.fr.apk"]));
    assert!(
        install["Message"]
            .as_str()
            .unwrap()
            .contains("/sdcard/Download/notes.txt"),
        "{view}"
    );
    let calls = pm.calls();
    let session: Vec<&str> = calls.lines().skip(1).collect();
    assert!(session[0].starts_with("install-create -r -S "), "{calls}");
    assert!(session[1].ends_with(" base.apk -"), "{calls}");
    assert!(session[2].ends_with(" split_config.fr.apk -"), "{calls}");
    assert!(session[3].starts_with("install-commit "), "{calls}");
    assert!(pm
        .packages()
        .contains("com.ferry.fixture.split 3 base.apk,split_config.fr.apk"));
    assert!(pm.open_sessions().is_empty());
}
