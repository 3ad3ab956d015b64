//! Byte layouts of index and queue keys. Times are big-endian millis so keys sort by time.

use crate::clock::{millis, Timestamp};

pub const SEP: u8 = 0;

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `prefix \0 owner \0` — everything listed under one owner.
pub fn owner_prefix(prefix: &str, owner: &str) -> Vec<u8> {
    let mut key = join(&[prefix.as_bytes(), owner.as_bytes()]);
    key.push(SEP);
    key
}

pub fn owned(prefix: &str, owner: &str, id: &str) -> Vec<u8> {
    join(&[prefix.as_bytes(), owner.as_bytes(), id.as_bytes()])
}

/// A delivery's key, `tenant \0 id`: of its record in `deliveries` (a tenant's deliveries lie
/// together, in id order: listing them needs no index), and the end of its queue entries.
pub fn delivery(tenant: &str, id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 1 + id.len());
    key.push_str(tenant);
    key.push(char::from(SEP));
    key.push_str(id);
    key
}

/// The start of every delivery key of `tenant`.
pub fn deliveries_of(tenant: &str) -> Vec<u8> {
    let mut key = tenant.as_bytes().to_vec();
    key.push(SEP);
    key
}

pub const TENANT_JOBS: &str = "jt";
pub const TENANT_SUBSCRIPTIONS: &str = "st";
/// A tenant's deliveries, as layouts before 4 indexed them (`dt \0 tenant \0 delivery`), when
/// their records were keyed by id alone; the upgrade removes them.
pub const TENANT_DELIVERIES_BEFORE_4: &str = "dt";
/// A job's deliveries: one entry per delivery (`dj \0 job \0 delivery`, empty value), or, for
/// the deliveries stored together (a completion's fan-out), one entry for all of them, keyed by
/// the first one's id, with their ids in its value ([`delivery_ids`]).
pub const JOB_DELIVERIES: &str = "dj";
/// A subscription's failed deliveries (its dead letters, what `recover` sends again):
/// `sf \0 subscription \0 delivery`, written when a delivery fails for good and removed when it
/// leaves that state. A pending or delivered one has no entry: a backlog costs one key less.
pub const SUBSCRIPTION_FAILED: &str = "sf";
/// Every delivery to a subscription, as layouts before 4 indexed them (`ds \0 subscription \0
/// delivery`); the upgrade turns them into [`SUBSCRIPTION_FAILED`] entries.
pub const SUBSCRIPTION_DELIVERIES_BEFORE_4: &str = "ds";

pub fn agent(agent_id: &str) -> Vec<u8> {
    join(&[b"ag", agent_id.as_bytes()])
}

/// `kind | millis | id`: a time-ordered queue entry.
pub fn timed(kind: u8, at: Timestamp, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.push(kind);
    key.extend_from_slice(&millis(at).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Every entry of `kind` due at or before `at`: the exclusive upper bound of a range scan.
pub fn timed_upper(kind: u8, at: Timestamp) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(kind);
    key.extend_from_slice(&(millis(at).saturating_add(1)).to_be_bytes());
    key
}

/// The due time and the rest of a queue entry: a job id (`due`), a delivery key (`queue`).
pub fn parse_timed(key: &[u8]) -> Option<(u64, &str)> {
    let millis = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let id = std::str::from_utf8(key.get(9..)?).ok()?;
    Some((millis, id))
}

pub fn idempotency(tenant: &str, key: &str) -> Vec<u8> {
    join(&[tenant.as_bytes(), key.as_bytes()])
}

/// The ids a group entry holds in its value.
pub fn id_group<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut value = Vec::new();
    for id in ids {
        if !value.is_empty() {
            value.push(b',');
        }
        value.extend_from_slice(id.as_bytes());
    }
    value
}

/// The delivery ids an index entry names: its key's last part when its value is empty (one
/// entry per delivery), else the ids its value holds ([`id_group`]).
pub fn delivery_ids<'a>(key: &'a [u8], value: &'a [u8]) -> Vec<&'a str> {
    if value.is_empty() {
        return last_part(key).into_iter().collect();
    }
    value
        .split(|b| *b == b',')
        .filter_map(|id| std::str::from_utf8(id).ok())
        .filter(|id| !id.is_empty())
        .collect()
}

/// The id at the end of an `owned` key.
pub fn last_part(key: &[u8]) -> Option<&str> {
    let start = key.iter().rposition(|b| *b == SEP)? + 1;
    std::str::from_utf8(&key[start..]).ok()
}
