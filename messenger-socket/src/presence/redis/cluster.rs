//! Batches over Redis Cluster: which cluster node owns a key, so that one pipeline per node
//! carries a batch whose keys lie in many slots.
//!
//! The `redis` crate's cluster connection refuses a pipeline whose keys hash to different
//! slots, but sends a pipeline to the node of a slot we name (`route_pipeline`), and a node
//! executes commands on any of its slots. The slot map (`CLUSTER SLOTS`) is read once and
//! again after any reply says a slot moved; commands that met a moved slot are sent again
//! one by one (the connection follows the redirection).

use std::sync::Arc;

use ::redis::Value;

/// How many slots a Redis Cluster has.
const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
/// the next `}`, when not empty) or of the whole key, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&byte| byte == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&byte| byte == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Slot ranges and the address (`host:port`) of the primary serving each.
#[derive(Debug, Default)]
pub(super) struct SlotMap {
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply; `None` when it is not one.
    pub(super) fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
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
            ranges.push((
                u16::try_from(*start).ok()?,
                u16::try_from(*end).ok()?,
                Arc::from(format!("{host}:{port}")),
            ));
        }
        ranges.sort_by_key(|(start, _, _)| *start);
        Some(Self { ranges })
    }

    /// The address of the primary serving `slot`, if the map knows it.
    pub(super) fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        let index = self
            .ranges
            .partition_point(|(start, _, _)| *start <= slot)
            .checked_sub(1)?;
        let (_, end, owner) = &self.ranges[index];
        (slot <= *end).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"messenger:{u:alice}:devices"), slot(b"u:alice"));
        assert_eq!(slot(b"a{}b"), crc16(b"a{}b") % SLOTS);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
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
        assert_eq!(map.owner(0).map(|o| &**o), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461).map(|o| &**o), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383).map(|o| &**o), Some("127.0.0.1:7002"));
        assert!(SlotMap::parse(&Value::Int(1)).is_none());
        assert!(SlotMap::default().owner(3).is_none());
    }
}
