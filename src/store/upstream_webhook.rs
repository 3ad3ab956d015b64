//! The registration agenthook made of its push URL with bitHuman (issue 14): its id, URL and
//! the signing secret upstream shows only once. One record, in the `upstream` tree.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Result, Store};

const KEY: &[u8] = b"webhook";

/// What `serve` registered upstream, kept so a restart finds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamWebhook {
    pub id: String,
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for UpstreamWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamWebhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn upstream_webhook(&self) -> Result<Option<UpstreamWebhook>> {
        let tree = self.db.open_tree("upstream")?;
        tree.get(KEY)?.map(|raw| decode(&raw)).transpose()
    }

    /// Keep the registration, durably (its secret cannot be asked for again).
    pub fn save_upstream_webhook(&self, webhook: &UpstreamWebhook) -> Result<()> {
        let tree = self.db.open_tree("upstream")?;
        tree.insert(KEY, encode(webhook))?;
        tree.flush()?;
        Ok(())
    }
}
