//! What every run shares with the others of its process: the configuration, one HTTP client,
//! the bandwidth cap and the install lock. A reload swaps the configuration and the client
//! but keeps the cap and the lock, which running transfers and installs hold on to.

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::install::InstallLock;
use crate::net;
use crate::task::payload::ValidTask;
use crate::transfer::source::limit::Bandwidth;
use crate::transfer::source::oss::{OssClient, OssEndpoint};
use std::sync::Arc;

#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    /// Built from `config` (proxy, timeouts, extra CAs); cheap to clone, one pool.
    pub client: reqwest::Client,
    /// The cap shared by every transfer of the process (`bandwidth_limit_kib`).
    pub bandwidth: Arc<Bandwidth>,
    /// Taken around pm by every AutoInstall: one install at a time, transfers go on.
    pub install_lock: Arc<InstallLock>,
}

impl Services {
    /// Blocking: building the client reads the CA folders, so call it off the async threads
    /// (`spawn_blocking`).
    pub fn build(config: Arc<Config>) -> Result<Services> {
        Ok(Services {
            client: net::client::build_client(&config)?,
            bandwidth: Bandwidth::from_config(&config),
            install_lock: Arc::new(InstallLock::new(())),
            config,
        })
    }

    /// The services for a new configuration: a new client, the same cap (set to the new
    /// limit at once, so running transfers follow it) and the same install lock. Blocking
    /// like `build`. The cap follows the new limit even when the client cannot be built.
    pub fn reload(&self, config: Arc<Config>) -> Result<Services> {
        self.bandwidth
            .set_rate(config.bandwidth_limit_kib.saturating_mul(1024));
        Ok(Services {
            client: net::client::build_client(&config)?,
            bandwidth: self.bandwidth.clone(),
            install_lock: self.install_lock.clone(),
            config,
        })
    }

    /// The OSS client for a task's UploadEndpoint, refused when its host is an address the
    /// configuration does not allow.
    pub fn oss_client(&self, endpoint: &str, task: &ValidTask) -> Result<OssClient> {
        let endpoint = OssEndpoint::new(endpoint, &self.config.oss);
        let url = reqwest::Url::parse(&endpoint.url).map_err(|e| {
            Error::new(
                Code::InvalidUploadEndpoint,
                format!("UploadEndpoint {}: {e}", endpoint.url),
            )
        })?;
        net::address::check_literal_host(&url, self.config.allow_link_local)?;
        Ok(OssClient::new(
            self.client.clone(),
            &endpoint,
            task.payload.credentials.as_ref(),
            &self.config.oss,
        ))
    }
}
