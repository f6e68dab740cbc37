//! Per-conversation ordering: cursors, the hold buffer for early entries, and gap filling.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use messenger_core::{ConversationId, Message, Seq};

/// The most early entries held per conversation; later ones are dropped and fetched again by
/// the gap fill.
const MAX_HELD: usize = 4096;

/// One conversation's state.
#[derive(Debug, Default)]
struct Lane {
    /// The last contiguous seq received.
    cursor: Seq,
    /// Entries past `cursor + 1`, waiting for the hole to fill.
    held: BTreeMap<Seq, Arc<Message>>,
    /// The cursor a gap fill (`history {after}`) started from, while one is in flight.
    filling_from: Option<Seq>,
}

/// What [`Order::accept`] decided.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    /// Entries now in order, to surface (void ones included: the caller skips them).
    pub(crate) ready: Vec<Arc<Message>>,
    /// A gap was found: ask for `history {after}` with this seq.
    pub(crate) fill_after: Option<Seq>,
}

/// Cursors and hold buffers of every conversation.
#[derive(Debug, Default)]
pub(crate) struct Order {
    lanes: HashMap<ConversationId, Lane>,
}

impl Order {
    /// Starts from saved cursors.
    pub(crate) fn new(cursors: &BTreeMap<ConversationId, Seq>) -> Self {
        let lanes = cursors
            .iter()
            .map(|(conversation, cursor)| {
                let lane = Lane {
                    cursor: *cursor,
                    ..Lane::default()
                };
                (conversation.clone(), lane)
            })
            .collect();
        Order { lanes }
    }

    /// The last contiguous seq of `conversation`.
    pub(crate) fn cursor(&self, conversation: &ConversationId) -> Seq {
        self.lanes
            .get(conversation)
            .map_or(Seq::ZERO, |lane| lane.cursor)
    }

    /// Every known cursor past zero, as sent in `sync`.
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.cursor > Seq::ZERO)
            .map(|(conversation, lane)| (conversation.clone(), lane.cursor))
            .collect()
    }

    /// Takes one entry: in order, a duplicate, or early (held, and a gap fill asked for).
    pub(crate) fn accept(&mut self, message: Arc<Message>) -> Accepted {
        let mut accepted = Accepted::default();
        let lane = self.lanes.entry(message.conversation.clone()).or_default();
        let seq = message.seq;
        if seq <= lane.cursor {
            return accepted;
        }
        if seq == lane.cursor.next() {
            lane.cursor = seq;
            accepted.ready.push(message);
            while let Some(entry) = lane.held.first_entry() {
                let next = *entry.key();
                if next <= lane.cursor {
                    entry.remove();
                } else if next == lane.cursor.next() {
                    lane.cursor = next;
                    accepted.ready.push(entry.remove());
                } else {
                    break;
                }
            }
            return accepted;
        }
        if lane.held.len() < MAX_HELD {
            lane.held.entry(seq).or_insert(message);
        }
        if lane.filling_from.is_none() {
            lane.filling_from = Some(lane.cursor);
            accepted.fill_after = Some(lane.cursor);
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
        let lane = self.lanes.get_mut(conversation)?;
        let started = lane.filling_from.take()?;
        if lane.cursor > started && (lane.cursor < head || !lane.held.is_empty()) {
            lane.filling_from = Some(lane.cursor);
            return Some(lane.cursor);
        }
        None
    }

    /// A gap fill failed: the next early entry starts another.
    pub(crate) fn fill_failed(&mut self, conversation: &ConversationId) {
        if let Some(lane) = self.lanes.get_mut(conversation) {
            lane.filling_from = None;
        }
    }

    /// The connection is gone: the next `sync` resends everything past the cursors, so the
    /// held entries and fills in flight are dropped.
    pub(crate) fn connection_lost(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.held.clear();
            lane.filling_from = None;
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
            body: Body::Text {
                text: format!("#{seq}"),
            },
        })
    }

    fn seqs(accepted: &Accepted) -> Vec<u64> {
        accepted.ready.iter().map(|m| m.seq.get()).collect()
    }

    #[test]
    fn in_order_entries_pass_and_duplicates_drop() {
        let mut order = Order::default();
        assert_eq!(seqs(&order.accept(text(1))), [1]);
        assert_eq!(seqs(&order.accept(text(2))), [2]);
        assert!(order.accept(text(2)).ready.is_empty());
        assert!(order.accept(text(1)).ready.is_empty());
        assert_eq!(order.cursor(&conv()), Seq(2));
    }

    #[test]
    fn a_gap_holds_entries_and_asks_once() {
        let mut order = Order::new(&BTreeMap::from([(conv(), Seq(3))]));
        let early = order.accept(text(6));
        assert!(early.ready.is_empty());
        assert_eq!(early.fill_after, Some(Seq(3)));
        let later = order.accept(text(7));
        assert_eq!(later.fill_after, None, "one fill at a time");
        // The history answer: 4, 5, 6 (a duplicate of the held one).
        assert_eq!(seqs(&order.accept(text(4))), [4]);
        assert_eq!(seqs(&order.accept(text(5))), [5, 6, 7]);
        assert!(order.accept(text(6)).ready.is_empty());
        assert_eq!(order.fill_answered(&conv(), Seq(7)), None);
        assert_eq!(order.cursor(&conv()), Seq(7));
        assert_eq!(order.cursors(), BTreeMap::from([(conv(), Seq(7))]));
    }

    #[test]
    fn a_partial_fill_asks_for_the_next_page() {
        let mut order = Order::default();
        assert_eq!(order.accept(text(10)).fill_after, Some(Seq(0)));
        for seq in 1..=5 {
            order.accept(text(seq));
        }
        assert_eq!(order.fill_answered(&conv(), Seq(10)), Some(Seq(5)));
        for seq in 6..=9 {
            order.accept(text(seq));
        }
        assert_eq!(order.cursor(&conv()), Seq(10));
        assert_eq!(order.fill_answered(&conv(), Seq(10)), None);
    }

    #[test]
    fn a_fill_without_progress_stops_and_a_new_gap_restarts_it() {
        let mut order = Order::default();
        assert_eq!(order.accept(text(3)).fill_after, Some(Seq(0)));
        assert_eq!(order.fill_answered(&conv(), Seq(3)), None);
        assert_eq!(order.accept(text(4)).fill_after, Some(Seq(0)));
        order.fill_failed(&conv());
        order.connection_lost();
        assert_eq!(order.accept(text(5)).fill_after, Some(Seq(0)));
    }
}
