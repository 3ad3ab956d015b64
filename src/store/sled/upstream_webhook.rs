//! The registration agenthook made of its push URL with bitHuman: one record, in the `upstream`
//! tree. Written once at start, outside the writer thread (the writer's transaction does not
//! span this tree), and flushed before it returns.

use super::{decode, encode, Result, SledStore};
use crate::store::UpstreamWebhook;

const KEY: &[u8] = b"webhook";

impl SledStore {
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
