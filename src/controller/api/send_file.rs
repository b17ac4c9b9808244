//! `SendFile` (eds-aic 2023-09-30): its parameters (the API text plus `FileMd5` and
//! `ClientToken`, as `alibabacloud_eds_aic20230930`'s `SendFileRequest` sends them) into a
//! [`SendFileRequest`]. Only the shape is checked here; the payload rules (the agent's own,
//! same codes) are the fleet logic's, before any task exists.

use super::errors::{error, missing};
use super::params::Params;
use crate::controller::model::{ApiError, SendFileRequest};
use crate::error::Code;
use crate::fleet::topics::check_instance_id;
use crate::task::payload::TaskPayload;

pub const ACTION: &str = "SendFile";

pub fn parse(mut p: Params, request_id: &str) -> Result<SendFileRequest, ApiError> {
    let instance_ids = p.list("AndroidInstanceIdList")?;
    if instance_ids.is_empty() {
        return Err(missing("AndroidInstanceIdList"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, id) in instance_ids.iter().enumerate() {
        check_instance_id(id).map_err(|e| {
            error(
                e.code,
                format!("AndroidInstanceIdList.{}: {}", i + 1, e.message),
            )
        })?;
        if !seen.insert(id.as_str()) {
            return Err(error(
                Code::OpenApiDuplicateInstanceId,
                format!(
                    "AndroidInstanceIdList.{} repeats instance {id}: each phone is named once",
                    i + 1
                ),
            ));
        }
    }
    let payload = TaskPayload {
        task_id: None,
        client_token: p.optional("ClientToken"),
        source_file_path: p.required("SourceFilePath")?,
        upload_type: p.required("UploadType")?,
        upload_url: p.required("UploadUrl")?,
        upload_endpoint: p.optional("UploadEndpoint"),
        target_file_name: p.optional("TargetFileName"),
        auto_install: p
            .boolean("AutoInstall", Code::InvalidAutoInstall)?
            .unwrap_or(false),
        credentials: None,
        file_md5: p.optional("FileMd5"),
        bridged_object: None,
    };
    p.finish(ACTION)?;
    Ok(SendFileRequest {
        instance_ids,
        payload,
        request_id: request_id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    const BASE: [(&str, &str); 3] = [
        ("SourceFilePath", "/sdcard/Download"),
        ("UploadType", "OSS"),
        ("UploadUrl", "oss://cloudphone-saved-bucket-x/a.apk"),
    ];

    fn with(extra: &[(&str, &str)]) -> Params {
        let mut all = BASE.to_vec();
        all.extend_from_slice(extra);
        params(&all)
    }

    #[test]
    fn every_parameter_lands_in_the_payload() {
        let req = parse(
            with(&[
                ("AndroidInstanceIdList.1", "acp-1"),
                ("AndroidInstanceIdList.2", "acp-2"),
                ("UploadEndpoint", "oss-cn-hangzhou-internal.aliyuncs.com"),
                ("TargetFileName", "b.apk"),
                ("AutoInstall", "True"),
                ("FileMd5", "0123456789abcdef0123456789abcdef"),
                ("ClientToken", "tok"),
            ]),
            "RID",
        )
        .unwrap();
        assert_eq!(req.instance_ids, ["acp-1", "acp-2"]);
        assert_eq!(req.request_id, "RID");
        let p = &req.payload;
        assert_eq!(p.source_file_path, "/sdcard/Download");
        assert_eq!(p.upload_type, "OSS");
        assert_eq!(p.upload_url, "oss://cloudphone-saved-bucket-x/a.apk");
        assert_eq!(
            p.upload_endpoint.as_deref(),
            Some("oss-cn-hangzhou-internal.aliyuncs.com")
        );
        assert_eq!(p.target_file_name.as_deref(), Some("b.apk"));
        assert!(p.auto_install);
        assert_eq!(
            p.file_md5.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(p.client_token.as_deref(), Some("tok"));
        assert_eq!(p.task_id, None);
    }

    #[test]
    fn instance_lists_are_checked() {
        let code = |extra: &[(&str, &str)]| parse(with(extra), "R").unwrap_err().code;
        assert_eq!(code(&[]), "MissingParameter");
        assert_eq!(
            code(&[
                ("AndroidInstanceIdList.1", "a"),
                ("AndroidInstanceIdList.2", "a")
            ]),
            "InvalidParameter.DuplicateInstanceId"
        );
        assert_eq!(
            code(&[("AndroidInstanceIdList.1", "a/b")]),
            "InvalidParameter.InstanceId"
        );
        assert_eq!(
            code(&[("AndroidInstanceIdList.1", "")]),
            "InvalidParameter.InstanceId"
        );
        assert_eq!(
            code(&[("AndroidInstanceIdList.2", "a")]),
            "InvalidParameter"
        );
        assert_eq!(
            code(&[("AndroidInstanceIdList.1", "a"), ("AutoInstall", "yes")]),
            "InvalidParameter.AutoInstall"
        );
        assert_eq!(
            code(&[
                ("AndroidInstanceIdList.1", "a"),
                ("BridgedObject", "oss://b/k")
            ]),
            "UnsupportedParameter"
        );
    }

    #[test]
    fn mandatory_parameters_are_named_when_missing() {
        let err = parse(params(&[("AndroidInstanceIdList.1", "a")]), "R").unwrap_err();
        assert_eq!(err.code, "MissingParameter");
        assert!(err.message.contains("SourceFilePath"), "{}", err.message);
    }
}
