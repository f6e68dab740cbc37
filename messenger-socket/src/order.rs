//! Per-conversation order of log entries, without I/O: the one rule by which the server writes
//! entries to a device and the Rust client surfaces them to its application.
//!
//! Entries of a conversation carry consecutive seqs from 1. A [`Lane`] keeps the last seq
//! handed on (`delivered`), holds entries that arrive early until the gap below them fills, and
//! drops entries at or below `delivered`. What to do about a gap (wait for the fanout, read
//! the store, ask the server for `history`) is the caller's policy; the lane only tells it
//! that one exists ([`Lane::is_behind`]).
//!
//! ```
//! use messenger_core::Seq;
//! use messenger_socket::order::{Lane, Offer};
//!
//! let mut lane = Lane::new(Seq(0));
//! assert!(matches!(lane.offer(Seq(2), "two"), Offer::Held));
//! let Offer::Next(first) = lane.offer(Seq(1), "one") else { unreachable!() };
//! assert_eq!(first, "one");
//! assert_eq!(lane.pop_ready(), Some((Seq(2), "two")));
//! assert!(matches!(lane.offer(Seq(2), "two again"), Offer::Duplicate(_)));
//! assert_eq!((lane.delivered(), lane.duplicates()), (Seq(2), 1));
//! ```

use std::collections::BTreeMap;

use messenger_core::Seq;

/// What [`Lane::offer`] decided about one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// The entry is the next one: hand it on now, then take what [`Lane::pop_ready`] yields.
    /// The lane counts it as delivered.
    Next(T),
    /// The entry is early (a gap lies below it); the lane holds it.
    Held,
    /// The entry is early but the lane already holds [`Lane::held_len`] entries at its
    /// bound; it was dropped (it will be read again when the gap fills).
    Full(T),
    /// The entry is at or below `delivered`, or already held: dropped.
    Duplicate(T),
}

/// The order of one conversation's entries; `T` is what the caller keeps per entry.
#[derive(Debug)]
pub struct Lane<T> {
    delivered: Seq,
    known_head: Seq,
    held: BTreeMap<Seq, T>,
    max_held: usize,
    duplicates: u64,
}

impl<T> Lane<T> {
    /// A lane whose entries up to `delivered` were handed on already; it holds any number of
    /// early entries.
    pub fn new(delivered: Seq) -> Self {
        Self::bounded(delivered, usize::MAX)
    }

    /// A lane that holds at most `max_held` early entries.
    pub fn bounded(delivered: Seq, max_held: usize) -> Self {
        Self {
            delivered,
            known_head: delivered,
            held: BTreeMap::new(),
            max_held,
            duplicates: 0,
        }
    }

    /// The last seq handed on: every entry up to it was, in order.
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// The highest seq known to exist (offered, or told by [`Lane::note_head`]).
    pub fn known_head(&self) -> Seq {
        self.known_head
    }

    /// How many early entries the lane holds.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// How many entries were offered at or below `delivered`, or twice while held.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Whether entries are known to exist past `delivered` that were not handed on: a gap.
    pub fn is_behind(&self) -> bool {
        self.delivered < self.known_head
    }

    /// Records that the log reaches `head` (a page's head, a sync's summary).
    pub fn note_head(&mut self, head: Seq) {
        self.known_head = self.known_head.max(head);
    }

    /// Restarts from `delivered` (a device's cursor at `sync`); held entries above it stay.
    pub fn restart_at(&mut self, delivered: Seq) {
        self.delivered = delivered;
        self.known_head = self.known_head.max(delivered);
        self.held = self.held.split_off(&delivered.next());
    }

    /// Drops every held entry (the connection they came on is gone).
    pub fn clear_held(&mut self) {
        self.held.clear();
    }

    /// Takes one entry with its seq.
    pub fn offer(&mut self, seq: Seq, entry: T) -> Offer<T> {
        if seq <= self.delivered {
            self.duplicates += 1;
            return Offer::Duplicate(entry);
        }
        self.known_head = self.known_head.max(seq);
        if seq == self.delivered.next() {
            self.delivered = seq;
            return Offer::Next(entry);
        }
        if self.held.contains_key(&seq) {
            self.duplicates += 1;
            return Offer::Duplicate(entry);
        }
        if self.held.len() >= self.max_held {
            return Offer::Full(entry);
        }
        self.held.insert(seq, entry);
        Offer::Held
    }

    /// Holds an entry without handing it on, even when it is next in line: it comes out of
    /// [`Lane::pop_ready`]. Returns whether it was taken (false for a duplicate, or a full
    /// lane).
    pub fn hold(&mut self, seq: Seq, entry: T) -> bool {
        if seq <= self.delivered || self.held.contains_key(&seq) {
            self.duplicates += 1;
            return false;
        }
        self.known_head = self.known_head.max(seq);
        if self.held.len() >= self.max_held {
            return false;
        }
        self.held.insert(seq, entry);
        true
    }

    /// The next held entry, if it is next in line; counts it as delivered.
    pub fn pop_ready(&mut self) -> Option<(Seq, T)> {
        loop {
            let entry = self.held.first_entry()?;
            let seq = *entry.key();
            if seq <= self.delivered {
                // Overtaken by a restart past it.
                entry.remove();
                continue;
            }
            if seq != self.delivered.next() {
                return None;
            }
            self.delivered = seq;
            return Some((seq, entry.remove()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(lane: &mut Lane<u64>) -> Vec<u64> {
        std::iter::from_fn(|| lane.pop_ready().map(|(_, entry)| entry)).collect()
    }

    #[test]
    fn entries_in_order_pass_straight_through() {
        let mut lane = Lane::new(Seq(0));
        for seq in 1..=3 {
            assert_eq!(lane.offer(Seq(seq), seq), Offer::Next(seq));
        }
        assert_eq!(lane.delivered(), Seq(3));
        assert!(!lane.is_behind());
        assert_eq!(lane.duplicates(), 0);
    }

    #[test]
    fn early_entries_wait_for_the_gap_and_come_out_in_order() {
        let mut lane = Lane::new(Seq(3));
        assert_eq!(lane.offer(Seq(6), 6), Offer::Held);
        assert_eq!(lane.offer(Seq(5), 5), Offer::Held);
        assert!(lane.is_behind());
        assert!(drain(&mut lane).is_empty(), "4 is missing");
        assert_eq!(lane.offer(Seq(4), 4), Offer::Next(4));
        assert_eq!(drain(&mut lane), [5, 6]);
        assert_eq!(lane.delivered(), Seq(6));
        assert!(!lane.is_behind());
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut lane = Lane::new(Seq(2));
        assert_eq!(lane.offer(Seq(2), 2), Offer::Duplicate(2));
        assert_eq!(lane.offer(Seq(1), 1), Offer::Duplicate(1));
        assert_eq!(lane.offer(Seq(5), 5), Offer::Held);
        assert_eq!(lane.offer(Seq(5), 55), Offer::Duplicate(55));
        assert_eq!(lane.duplicates(), 3);
    }

    #[test]
    fn held_entries_come_out_in_order_even_when_next() {
        let mut lane = Lane::new(Seq(0));
        assert!(lane.hold(Seq(2), 2));
        assert!(lane.hold(Seq(1), 1));
        assert!(!lane.hold(Seq(1), 1), "already held");
        assert_eq!(lane.delivered(), Seq(0));
        assert_eq!(drain(&mut lane), [1, 2]);
        assert!(!lane.hold(Seq(2), 2), "delivered");
        assert_eq!(lane.duplicates(), 2);
    }

    #[test]
    fn a_bounded_lane_drops_what_does_not_fit() {
        let mut lane = Lane::bounded(Seq(0), 1);
        assert_eq!(lane.offer(Seq(3), 3), Offer::Held);
        assert_eq!(lane.offer(Seq(4), 4), Offer::Full(4));
        assert_eq!(lane.held_len(), 1);
        assert_eq!(lane.known_head(), Seq(4));
    }

    #[test]
    fn a_restart_keeps_what_is_above_the_new_cursor() {
        let mut lane = Lane::new(Seq(0));
        lane.offer(Seq(3), 3);
        lane.offer(Seq(7), 7);
        lane.restart_at(Seq(5));
        assert_eq!(lane.held_len(), 1);
        assert_eq!(lane.offer(Seq(6), 6), Offer::Next(6));
        assert_eq!(drain(&mut lane), [7]);
        lane.note_head(Seq(9));
        assert!(lane.is_behind());
    }
}
