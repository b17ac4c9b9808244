//! What every run shares, built from the configuration and rebuilt whole on SIGHUP.

use crate::config::Config;
use crate::error::Result;
use crate::install::InstallLock;
use crate::net;
use crate::transfer::source::limit::Bandwidth;
use std::sync::Arc;

pub struct Services {
    pub config: Arc<Config>,
    pub client: reqwest::Client,
    /// The cap shared by every transfer; kept across reloads, only its rate changes.
    pub bandwidth: Arc<Bandwidth>,
    /// Taken around pm by every AutoInstall: one install at a time, transfers go on.
    pub install_lock: Arc<InstallLock>,
}

impl Services {
    /// Blocking: building the client reads the CA folders. Call it off the async threads.
    pub fn build(config: Arc<Config>) -> Result<Services> {
        Ok(Services {
            client: net::client::build_client(&config)?,
            bandwidth: Bandwidth::from_config(&config),
            install_lock: Arc::new(InstallLock::new(())),
            config,
        })
    }

    /// Blocking, like [`Services::build`]: a new client for the new settings; the bandwidth
    /// cap and the install lock stay the same objects so running transfers share them.
    pub fn reload(&self, config: Arc<Config>) -> Result<Services> {
        let client = net::client::build_client(&config)?;
        self.bandwidth
            .set_rate(config.bandwidth_limit_kib.saturating_mul(1024));
        Ok(Services {
            config,
            client,
            bandwidth: self.bandwidth.clone(),
            install_lock: self.install_lock.clone(),
        })
    }
}
