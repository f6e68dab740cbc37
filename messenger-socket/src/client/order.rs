//! Per-conversation ordering: cursors, the hold buffer for early entries, and gap filling,
//! on the [`Lane`] the server's delivery uses too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use messenger_core::{ConversationId, Message, Seq};

use crate::order::{Lane, Offer};

/// The most early entries held per conversation; later ones are dropped and fetched again by
/// the gap fill.
const MAX_HELD: usize = 4096;

/// One conversation's state.
#[derive(Debug)]
struct Track {
    lane: Lane<Arc<Message>>,
    /// The cursor a gap fill (`history {after}`) started from, while one is in flight.
    filling_from: Option<Seq>,
}

impl Track {
    fn new(cursor: Seq) -> Self {
        Track {
            lane: Lane::bounded(cursor, MAX_HELD),
            filling_from: None,
        }
    }
}

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A `message` frame the server pushed (live, or the backlog of a `sync`).
    Stream,
    /// The answer to the client's own gap fill (`history`).
    Fill,
}

/// What [`Order::accept`] decided.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    /// Entries now in order, to surface (void ones included: the caller skips them).
    pub(crate) ready: Vec<Arc<Message>>,
    /// A gap was found: ask for `history {after}` with this seq.
    pub(crate) fill_after: Option<Seq>,
}

/// What the ordering layer had to repair in the server's stream. A server that keeps its
/// promise (docs/protocol.md §11: each entry once, in seq order, no gap) leaves both at zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairCounts {
    /// Entries the server pushed that were dropped as duplicates (at or below the cursor, or
    /// already held).
    pub duplicates: u64,
    /// Entries surfaced from the client's own gap fills: the stream skipped them.
    pub filled: u64,
}

/// Cursors and hold buffers of every conversation.
#[derive(Debug, Default)]
pub(crate) struct Order {
    tracks: HashMap<ConversationId, Track>,
    repairs: RepairCounts,
}

impl Order {
    /// Starts from saved cursors.
    pub(crate) fn new(cursors: &BTreeMap<ConversationId, Seq>) -> Self {
        let tracks = cursors
            .iter()
            .map(|(conversation, cursor)| (conversation.clone(), Track::new(*cursor)))
            .collect();
        Order {
            tracks,
            repairs: RepairCounts::default(),
        }
    }

    /// The last contiguous seq of `conversation`.
    pub(crate) fn cursor(&self, conversation: &ConversationId) -> Seq {
        self.tracks
            .get(conversation)
            .map_or(Seq::ZERO, |track| track.lane.delivered())
    }

    /// Every known cursor past zero, as sent in `sync`.
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.tracks
            .iter()
            .filter(|(_, track)| track.lane.delivered() > Seq::ZERO)
            .map(|(conversation, track)| (conversation.clone(), track.lane.delivered()))
            .collect()
    }

    /// What was repaired so far.
    pub(crate) fn repairs(&self) -> RepairCounts {
        self.repairs
    }

    /// Takes one entry: in order, a duplicate, or early (held, and a gap fill asked for).
    pub(crate) fn accept(&mut self, message: Arc<Message>, source: Source) -> Accepted {
        let mut accepted = Accepted::default();
        let track = self
            .tracks
            .entry(message.conversation.clone())
            .or_insert_with(|| Track::new(Seq::ZERO));
        let seq = message.seq;
        match track.lane.offer(seq, message) {
            Offer::Next(message) => {
                if source == Source::Fill {
                    self.repairs.filled += 1;
                }
                accepted.ready.push(message);
                while let Some((_, held)) = track.lane.pop_ready() {
                    accepted.ready.push(held);
                }
            }
            Offer::Duplicate(_) => {
                // A fill's page overlapping what is held is the client's own doing.
                if source == Source::Stream {
                    self.repairs.duplicates += 1;
                }
            }
            Offer::Held | Offer::Full(_) => {
                if track.filling_from.is_none() {
                    let cursor = track.lane.delivered();
                    track.filling_from = Some(cursor);
                    accepted.fill_after = Some(cursor);
                }
            }
        }
        accepted
    }

    /// A gap fill's answer has been fed through [`Order::accept`]: asks for the next page
    /// when the cursor moved but is still behind `head`, else ends the fill.
    pub(crate) fn fill_answered(
        &mut self,
        conversation: &ConversationId,
        head: Seq,
    ) -> Option<Seq> {
        let track = self.tracks.get_mut(conversation)?;
        let started = track.filling_from.take()?;
        let cursor = track.lane.delivered();
        if cursor > started && (cursor < head || track.lane.held_len() > 0) {
            track.filling_from = Some(cursor);
            return Some(cursor);
        }
        None
    }

    /// A gap fill failed: the next early entry starts another.
    pub(crate) fn fill_failed(&mut self, conversation: &ConversationId) {
        if let Some(track) = self.tracks.get_mut(conversation) {
            track.filling_from = None;
        }
    }

    /// A limited sync starts `conversation` after `from`: the cursor moves there (never
    /// back). True when it moved.
    pub(crate) fn skip_to(&mut self, conversation: &ConversationId, from: Seq) -> bool {
        let track = self
            .tracks
            .entry(conversation.clone())
            .or_insert_with(|| Track::new(Seq::ZERO));
        if from <= track.lane.delivered() {
            return false;
        }
        track.lane.restart_at(from);
        track.filling_from = None;
        true
    }

    /// The connection is gone: the next `sync` resends everything past the cursors, so the
    /// held entries and fills in flight are dropped.
    pub(crate) fn connection_lost(&mut self) {
        for track in self.tracks.values_mut() {
            track.lane.clear_held();
            track.filling_from = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::{Body, ClientMsgId, DeviceId, Timestamp, UserId};

    fn conv() -> ConversationId {
        ConversationId::new("g:test").unwrap()
    }

    fn text(seq: u64) -> Arc<Message> {
        Arc::new(Message {
            conversation: conv(),
            seq: Seq(seq),
            sender: UserId::new("bob").unwrap(),
            sender_device: DeviceId::new("phone").unwrap(),
            client_msg_id: ClientMsgId::new(format!("m{seq}")).unwrap(),
            sent_at: Timestamp(seq),
            body: Body::text(format!("#{seq}")),
        })
    }

    fn seqs(accepted: &Accepted) -> Vec<u64> {
        accepted.ready.iter().map(|m| m.seq.get()).collect()
    }

    #[test]
    fn in_order_entries_pass_and_duplicates_drop() {
        let mut order = Order::default();
        assert_eq!(seqs(&order.accept(text(1), Source::Stream)), [1]);
        assert_eq!(seqs(&order.accept(text(2), Source::Stream)), [2]);
        assert!(order.accept(text(2), Source::Stream).ready.is_empty());
        assert!(order.accept(text(1), Source::Stream).ready.is_empty());
        assert_eq!(order.cursor(&conv()), Seq(2));
        assert_eq!(
            order.repairs().duplicates,
            2,
            "the stream repeated two entries"
        );
    }

    #[test]
    fn a_limited_sync_moves_the_cursor_forward_only() {
        let mut order = Order::new(&BTreeMap::from([(conv(), Seq(3))]));
        assert!(
            order.skip_to(&conv(), Seq(25)),
            "the backlog starts after 25"
        );
        assert_eq!(order.cursor(&conv()), Seq(25));
        let first = order.accept(text(26), Source::Stream);
        assert_eq!(seqs(&first), [26]);
        assert_eq!(first.fill_after, None, "no gap below the limited backlog");
        assert!(!order.skip_to(&conv(), Seq(10)), "never back");
        assert_eq!(order.cursor(&conv()), Seq(26));
        assert!(order.skip_to(&ConversationId::new("g:new").unwrap(), Seq(5)));
        assert_eq!(order.repairs(), RepairCounts::default());
    }

    #[test]
    fn a_gap_holds_entries_and_asks_once() {
        let mut order = Order::new(&BTreeMap::from([(conv(), Seq(3))]));
        let early = order.accept(text(6), Source::Stream);
        assert!(early.ready.is_empty());
        assert_eq!(early.fill_after, Some(Seq(3)));
        let later = order.accept(text(7), Source::Stream);
        assert_eq!(later.fill_after, None, "one fill at a time");
        // The history answer: 4, 5, 6 (a duplicate of the held one).
        assert_eq!(seqs(&order.accept(text(4), Source::Fill)), [4]);
        assert_eq!(seqs(&order.accept(text(5), Source::Fill)), [5, 6, 7]);
        assert!(order.accept(text(6), Source::Fill).ready.is_empty());
        // Two entries surfaced from the fill; its overlap with what was held is no repair.
        assert_eq!(
            order.repairs(),
            RepairCounts {
                duplicates: 0,
                filled: 2
            }
        );
        assert_eq!(order.fill_answered(&conv(), Seq(7)), None);
        assert_eq!(order.cursor(&conv()), Seq(7));
        assert_eq!(order.cursors(), BTreeMap::from([(conv(), Seq(7))]));
    }

    #[test]
    fn a_partial_fill_asks_for_the_next_page() {
        let mut order = Order::default();
        assert_eq!(
            order.accept(text(10), Source::Stream).fill_after,
            Some(Seq(0))
        );
        for seq in 1..=5 {
            order.accept(text(seq), Source::Fill);
        }
        assert_eq!(order.fill_answered(&conv(), Seq(10)), Some(Seq(5)));
        for seq in 6..=9 {
            order.accept(text(seq), Source::Fill);
        }
        assert_eq!(order.cursor(&conv()), Seq(10));
        assert_eq!(order.fill_answered(&conv(), Seq(10)), None);
    }

    #[test]
    fn a_fill_without_progress_stops_and_a_new_gap_restarts_it() {
        let mut order = Order::default();
        assert_eq!(
            order.accept(text(3), Source::Stream).fill_after,
            Some(Seq(0))
        );
        assert_eq!(order.fill_answered(&conv(), Seq(3)), None);
        assert_eq!(
            order.accept(text(4), Source::Stream).fill_after,
            Some(Seq(0))
        );
        order.fill_failed(&conv());
        order.connection_lost();
        assert_eq!(
            order.accept(text(5), Source::Stream).fill_after,
            Some(Seq(0))
        );
    }
}
