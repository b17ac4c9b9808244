//! Settings of the OSS source.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OssConfig {
    /// Daemon-wide credentials, used when a payload carries none (after them come the
    /// environment's OSS_* / AWS_* variables, then anonymous access for public-read buckets).
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<String>,
    pub security_token: Option<String>,
    /// SigV4 signing region. Unset: derived from an Alibaba endpoint
    /// (`oss-cn-hangzhou-internal.aliyuncs.com` → `cn-hangzhou`), else `us-east-1`.
    pub region: Option<String>,
    /// Talk to `s3.oss-REGION[-internal].aliyuncs.com` when the payload names the native
    /// `oss-REGION[-internal].aliyuncs.com`: Alibaba serves its S3-compatible API there.
    pub aliyun_s3_endpoint: bool,
    /// OSS_BRIDGED: fetch the public link when the OSS copy is missing. Off by default: the
    /// point of bridging is that phones never hit the public origin.
    pub bridged_fallback: bool,
    /// Objects per ListObjectsV2 page when sending a folder.
    pub list_page_size: i32,
    /// Most objects one folder send may hold, so a mistaken prefix cannot fill the phone.
    pub max_folder_objects: usize,
    /// Small objects of a folder fetched at once (1 to [`MAX_FOLDER_CONCURRENCY`], never more
    /// than `transfer.connections`): one round trip each otherwise. An object that goes as
    /// parallel parts or checkpoints (at least `transfer.parallel_min_size_mib` or
    /// `checkpoint_bytes`) is fetched alone, with its own connections.
    pub folder_concurrency: usize,
}

/// The most `folder_concurrency` may be: each object in flight has a staging file of its own.
pub const MAX_FOLDER_CONCURRENCY: usize = 64;

impl Default for OssConfig {
    fn default() -> Self {
        OssConfig {
            access_key_id: None,
            access_key_secret: None,
            security_token: None,
            region: None,
            aliyun_s3_endpoint: true,
            bridged_fallback: false,
            list_page_size: 1000,
            max_folder_objects: 10_000,
            folder_concurrency: 8,
        }
    }
}

impl std::fmt::Debug for OssConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("OssConfig")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &set(&self.access_key_secret))
            .field("security_token", &set(&self.security_token))
            .field("region", &self.region)
            .field("aliyun_s3_endpoint", &self.aliyun_s3_endpoint)
            .field("bridged_fallback", &self.bridged_fallback)
            .field("list_page_size", &self.list_page_size)
            .field("max_folder_objects", &self.max_folder_objects)
            .field("folder_concurrency", &self.folder_concurrency)
            .finish()
    }
}
