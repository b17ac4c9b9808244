//! OSS_BRIDGED: the control plane's OSS copy of a public link, over the internal endpoint;
//! the public link itself only when the copy is missing and `oss.bridged_fallback` allows.

use super::land::{Landed, Landing};
use super::target::{object_file_name, open_folder};
use super::Ctx;
use crate::error::{Code, Error, Result};
use crate::net;
use crate::paths::{check_final_name, DevicePath};
use crate::task::payload::OssObject;
use crate::transfer::engine::Observer;
use crate::transfer::source::http::HttpSource;
use crate::transfer::source::redirect::RedirectRules;
use crate::transfer::source::Source;
use std::sync::Arc;

/// Lands the OSS copy, or the public link when the copy is missing and fallback is on; the
/// note says when the link was used instead.
pub(super) async fn send<O: Observer>(
    ctx: &Ctx<'_>,
    public_url: &reqwest::Url,
    object: &Option<OssObject>,
    endpoint: &str,
    folder: &DevicePath,
    rename: &Option<String>,
    observer: &O,
) -> Result<(Landed, Option<String>)> {
    let name = match (rename, link_file_name(public_url), object) {
        (Some(name), _, _) => name.clone(),
        (None, Some(name), _) => name,
        (None, None, Some(object)) => object_file_name(object)?,
        (None, None, None) => {
            return Err(Error::new(
                Code::InvalidTargetFileName,
                "neither the link nor BridgedObject ends in a file name; set TargetFileName",
            ))
        }
    };
    let dir = open_folder(&ctx.roots, folder.clone()).await?;
    let landing = |source: Arc<dyn Source>| Landing {
        source,
        staging_dir: dir.clone(),
        final_dir: dir.clone(),
        final_name: name.clone(),
        resume: ctx.resume.clone(),
        md5: ctx.task.md5,
        slot: 0,
    };
    let config = &ctx.services.config;
    let fallback = config.oss.bridged_fallback;
    let missing = match object {
        Some(object) if object.is_folder() => {
            return Err(Error::new(
                Code::InvalidUploadUrl,
                format!(
                    "BridgedObject oss://{}/{} names a folder; it must name the OSS copy of the link",
                    object.bucket, object.key
                ),
            ))
        }
        Some(object) => {
            let client = ctx.services.oss_client(endpoint, ctx.task)?;
            let source = Arc::new(client.object(&object.bucket, &object.key));
            match ctx.land(landing(source), observer).await {
                Err(e)
                    if fallback
                        && matches!(e.code, Code::SourceNotFound | Code::SourceNoSuchBucket) =>
                {
                    format!("the OSS copy was missing ({}: {})", e.code, e.message)
                }
                other => return other.map(|f| (f, None)),
            }
        }
        None if fallback => "the payload names no OSS copy (BridgedObject)".to_string(),
        None => {
            return Err(Error::new(
                Code::SourceNotFound,
                "OSS_BRIDGED needs BridgedObject (oss://BUCKET/KEY of the control plane's copy); fetching the public link instead is off (oss.bridged_fallback)",
            ))
        }
    };
    net::address::check_literal_host(public_url, config.allow_link_local)?;
    let source = Arc::new(HttpSource::new(
        ctx.services.client.clone(),
        public_url.clone(),
        RedirectRules::from_config(config),
    ));
    let file = ctx.land(landing(source), observer).await?;
    tracing::warn!(
        task = ctx.task_id,
        "{missing}; fetched the public link instead"
    );
    Ok((
        file,
        Some(format!(
            "{missing}; the public link was fetched instead (oss.bridged_fallback)"
        )),
    ))
}

/// The decoded last path segment of a link, when it is a usable file name.
fn link_file_name(url: &reqwest::Url) -> Option<String> {
    let segment = url.path_segments()?.next_back()?;
    let decoded = percent_decode(segment)?;
    check_final_name(&decoded).ok().map(|()| decoded)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_decoded_and_checked() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            link_file_name(&url("https://cdn.example.com/apps/My%20App.apk?sig=1")).as_deref(),
            Some("My App.apk")
        );
        assert_eq!(link_file_name(&url("https://cdn.example.com/")), None);
        assert_eq!(link_file_name(&url("https://x/a/%2e%2e")), None);
        assert_eq!(link_file_name(&url("https://x/a%2Fb")), None);
        assert_eq!(link_file_name(&url("https://x/%zz")), None);
        // A bridged name may not be another task's staging file either.
        assert_eq!(link_file_name(&url("https://x/.FERRY-t1.part")), None);
        assert_eq!(link_file_name(&url("https://x/%2Eferry-t1.part")), None);
    }
}
