//! Batches over Redis Cluster: which cluster node owns a key, so that one pipeline per node
//! carries a batch whose keys lie in many slots.
//!
//! The `redis` crate's cluster connection refuses a pipeline whose keys hash to different
//! slots, but sends a pipeline to the node of a slot we name (`route_pipeline`), and a node
//! executes commands on any of its slots. The slot map (`CLUSTER SLOTS`) is read once and
//! again after any reply says a slot moved; commands that met a moved slot are sent again
//! one by one (the connection follows the redirection). A key's slot is the `redis` crate's
//! own ([`Slot::for_key`]: CRC16 of the hash tag), so routing here and in the client agree.

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::Value;
use ::redis::cluster_routing::Slot;

/// The address (`host:port`) of the primary serving each slot.
#[derive(Debug, Default)]
pub(super) struct SlotMap {
    owners: HashMap<Slot, Arc<str>>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply; `None` when it is not one.
    pub(super) fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut owners = HashMap::new();
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return None;
            };
            let owner: Arc<str> = Arc::from(format!("{host}:{port}"));
            for slot in u16::try_from(*start).ok()?..=u16::try_from(*end).ok()? {
                // `None` past the last slot: not a reply of Redis Cluster.
                owners.insert(Slot::new(slot)?, Arc::clone(&owner));
            }
        }
        Some(Self { owners })
    }

    /// The address of the primary serving `slot`, if the map knows it.
    pub(super) fn owner(&self, slot: Slot) -> Option<&Arc<str>> {
        self.owners.get(&slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_the_slot_of_their_hash_tag() {
        assert_eq!(
            Slot::for_key("messenger:{u:alice}:devices"),
            Slot::for_key("u:alice")
        );
        assert_eq!(
            Slot::for_key("messenger:{n:node-1}:lease"),
            Slot::for_key("other:{n:node-1}:devices")
        );
    }

    #[test]
    fn owners_come_from_the_ranges() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let map = SlotMap::parse(&reply).unwrap_or_else(|| panic!("a CLUSTER SLOTS reply"));
        let owner = |slot: u16| {
            let slot = Slot::new(slot).unwrap_or_else(|| panic!("slot {slot}"));
            map.owner(slot).map(|owner| owner.to_string())
        };
        assert_eq!(owner(0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(owner(5461).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(owner(16383).as_deref(), Some("127.0.0.1:7002"));
        assert!(SlotMap::parse(&Value::Int(1)).is_none());
        let beyond = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16384),
            node("127.0.0.1", 7000),
        ])]);
        assert!(SlotMap::parse(&beyond).is_none());
        assert!(SlotMap::default().owner(Slot::for_key("foo")).is_none());
    }

    #[test]
    fn a_key_finds_the_owner_of_its_slot() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ])
        };
        // `foo` is in slot 12182 (`CLUSTER KEYSLOT foo`): a node of its own here.
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(12181), node(7000)]),
            Value::Array(vec![Value::Int(12182), Value::Int(12182), node(7001)]),
            Value::Array(vec![Value::Int(12183), Value::Int(16383), node(7000)]),
        ]);
        let map = SlotMap::parse(&reply).unwrap_or_else(|| panic!("a CLUSTER SLOTS reply"));
        let owner = |key: &str| map.owner(Slot::for_key(key)).map(|owner| owner.to_string());
        assert_eq!(owner("foo").as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(
            owner("messenger:{foo}:devices").as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(owner("bar").as_deref(), Some("127.0.0.1:7000"));
    }
}
