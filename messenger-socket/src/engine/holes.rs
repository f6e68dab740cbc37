//! Holes in a conversation's log: seqs allocated but not stored (yet), and when a reader may
//! resolve them as void. One place for the rule, used by a connection's ordered delivery and
//! by `history`.
//!
//! A seq N missing below a stored seq M was allocated before M: sequencers are monotonic. M's
//! `sent_at` is set by the node that sequenced M just after it allocated M. So once M's
//! `sent_at` is older than `void_after`, N's writer has had at least that long to store N:
//! the hole is **dead**, and every dead hole of a page is resolved at once, in one
//! [`VoidHoles`] write, however many seqs it spans. A hole whose next stored entry is younger
//! is **waiting**: its writer may be about to store it. A reader that has itself watched a
//! hole for `void_after` (its own monotonic clock) treats it as dead too: the caller passes
//! the highest seq it knew when it started watching (`overdue`), and every hole at or below
//! it is dead, whatever the clocks say.
//!
//! Clocks: `sent_at` comes from the wall clock of the node that sequenced M; the reader
//! compares it with its own. With a skew of `d` between the two, a hole is judged dead after
//! `void_after - d` (M's node behind the reader) or `void_after + d` (ahead). The rule relies
//! on skew between nodes well below `void_after` (NTP keeps it within milliseconds; the
//! default `void_after` is 2 s). A larger skew never loses or reorders a stored message —
//! voids are conditional: a writer that arrives after its seq was voided gets `Conflict` and
//! stores its message at a new seq — it only costs that writer a retry (clock behind) or
//! readers a longer wait, bounded by their own `void_after` timer (clock ahead).

use std::sync::Arc;
use std::time::Duration;

use messenger_core::store::{MessagePage, ReadBefore, ReadRange, StoreService, VoidHoles};
use messenger_core::{ConversationId, Error, Message, Seq, Timestamp, call};
use tokio::time::Instant;

/// How often a reader that waits on a hole (a `history` page that would otherwise be empty)
/// reads again: the missing entry usually lands within milliseconds.
const POLL: Duration = Duration::from_millis(50);

/// A hole a page stopped before: seqs `first..=last` are missing and not dead yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// The first missing seq.
    pub(crate) first: Seq,
    /// The last missing seq of the hole.
    pub(crate) last: Seq,
    /// How long until the hole is dead by the `sent_at` of the entry after it (at most
    /// `void_after`; `void_after` when that entry is unknown).
    pub(crate) dead_in: Duration,
}

/// Entries after a seq with no hole among them: the reader may deliver them in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Contiguous {
    /// Entries `after + 1, after + 2, ...`, voids included.
    pub(crate) messages: Vec<Arc<Message>>,
    /// The conversation's head as read.
    pub(crate) head: Seq,
    /// The hole the entries stop before, when they stop before one.
    pub(crate) waiting: Option<Waiting>,
}

impl From<Contiguous> for MessagePage {
    fn from(contiguous: Contiguous) -> Self {
        MessagePage {
            messages: contiguous.messages,
            head: contiguous.head,
        }
    }
}

/// Whether the hole before `judge` (the first entry stored after it) is dead at `now`, and if
/// not, how long until it is.
fn dead_in(judge: &Message, now: Timestamp, void_after: Duration) -> Option<Duration> {
    let void_after_ms = u64::try_from(void_after.as_millis()).unwrap_or(u64::MAX);
    let dead_at = judge.sent_at.as_millis().saturating_add(void_after_ms);
    match dead_at.checked_sub(now.as_millis()) {
        None | Some(0) => None,
        // A judge from a clock ahead of ours: our own `void_after` bounds the wait.
        Some(left) => Some(Duration::from_millis(left).min(void_after)),
    }
}

/// What a page read after `after` says about its holes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scan {
    /// How many entries of the page come before the first waiting hole.
    keep: usize,
    /// Every hole up to this seq is dead: void `(after, resolve_until]`.
    resolve_until: Option<Seq>,
    /// The first hole that is not dead.
    waiting: Option<Waiting>,
}

/// Judges the hole `first..=last`, dead after `dead_in` (`None`: dead now): raises
/// `resolve_until` over what is dead, and returns the part that waits, if any.
fn judge(
    first: Seq,
    last: Seq,
    dead_in: Option<Duration>,
    overdue: Seq,
    resolve_until: &mut Option<Seq>,
) -> Option<Waiting> {
    match dead_in {
        Some(dead_in) if last > overdue => {
            if first <= overdue {
                // Watched long enough up to `overdue`; the rest came later.
                *resolve_until = Some(overdue);
            }
            Some(Waiting {
                first: first.max(overdue.next()),
                last,
                dead_in,
            })
        }
        _ => {
            *resolve_until = Some(last);
            None
        }
    }
}

/// Walks `messages` (ascending, all above `after`) and finds the dead holes and the first
/// waiting one. `upper` is the last seq the page vouches for (the page's range, up to the
/// head); seqs between its last entry and `upper` are a hole with no known entry after it.
fn scan(
    after: Seq,
    messages: &[Arc<Message>],
    upper: Seq,
    now: Timestamp,
    void_after: Duration,
    overdue: Seq,
) -> Scan {
    let mut expected = after.next();
    let mut resolve_until = None;
    let mut keep = 0;
    for message in messages {
        if message.seq < expected {
            // Not above `after`, or out of order: not from a well-behaved store.
            break;
        }
        if message.seq > expected {
            let last = Seq(message.seq.get() - 1);
            let dead_in = dead_in(message, now, void_after);
            if let Some(waiting) = judge(expected, last, dead_in, overdue, &mut resolve_until) {
                return Scan {
                    keep,
                    resolve_until,
                    waiting: Some(waiting),
                };
            }
        }
        keep += 1;
        expected = message.seq.next();
    }
    let mut waiting = None;
    if keep == messages.len() && expected <= upper {
        waiting = judge(
            expected,
            upper,
            Some(void_after),
            overdue,
            &mut resolve_until,
        );
    }
    Scan {
        keep,
        resolve_until,
        waiting,
    }
}

/// The longest run of `messages` that continues `after` seq by seq.
fn contiguous_prefix(
    after: Seq,
    messages: impl IntoIterator<Item = Arc<Message>>,
) -> Vec<Arc<Message>> {
    let mut expected = after.next();
    let mut out = Vec::new();
    for message in messages {
        if message.seq != expected {
            break;
        }
        expected = message.seq.next();
        out.push(message);
    }
    out
}

/// Reads `range` and returns its entries up to the first hole that is not dead: every dead
/// hole before it (by the rule of this module, or at or below `overdue`) is resolved first,
/// all of them in one [`VoidHoles`] write.
///
/// The answer may hold more than `range.limit` entries (the voids) and never skips a seq:
/// `waiting` tells which hole it stops before, if any.
///
/// # Errors
/// The store's errors.
pub(crate) async fn read_after<S: StoreService>(
    store: &S,
    range: ReadRange,
    void_after: Duration,
    overdue: Seq,
) -> Result<Contiguous, Error> {
    let after = range.after;
    let page = call(store, range.clone()).await?;
    let upper = match page.messages.last() {
        Some(last) if page.messages.len() >= range.limit => last.seq,
        _ => range.until.unwrap_or(page.head).min(page.head),
    };
    let scan = scan(
        after,
        &page.messages,
        upper,
        Timestamp::now(),
        void_after,
        overdue,
    );
    let mut waiting = scan.waiting;
    let mut messages = page.messages;
    messages.truncate(scan.keep);
    let mut head = page.head;
    if let Some(mut until) = scan.resolve_until {
        let widest = Seq(after.get().saturating_add(VoidHoles::MAX_SPAN));
        if until > widest {
            // The rest is read (and resolved) by the next call.
            until = widest;
            waiting = None;
        }
        let voided = call(
            store,
            VoidHoles {
                conversation: range.conversation.clone(),
                after,
                until,
            },
        )
        .await?;
        head = head.max(voided.head);
        let rest = messages.into_iter().filter(|message| message.seq > until);
        messages = voided.messages.into_iter().chain(rest).collect();
    }
    let contiguous = contiguous_prefix(after, messages);
    Ok(Contiguous {
        messages: contiguous,
        head,
        waiting,
    })
}

/// A `history` page in `after` mode: entries after `after`, ascending, at most `limit`, with
/// every seq of its range (dead holes resolved as voids) or ending before the first hole that
/// is not dead yet. When that hole comes first (the page would be empty), waits for it —
/// reading again every [`POLL`], at most until it is dead, bounded by `void_after` — so an
/// empty page always means "up to date".
///
/// # Errors
/// The store's errors.
pub(crate) async fn history_after<S: StoreService>(
    store: &S,
    conversation: ConversationId,
    after: Seq,
    limit: usize,
    void_after: Duration,
) -> Result<MessagePage, Error> {
    let range = ReadRange {
        conversation,
        after,
        until: None,
        limit,
    };
    let mut page = read_after(store, range.clone(), void_after, Seq::ZERO).await?;
    if let (true, Some(waiting)) = (page.messages.is_empty(), page.waiting) {
        let deadline = Instant::now() + waiting.dead_in.min(void_after);
        loop {
            tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
            let overdue = if Instant::now() >= deadline {
                waiting.last
            } else {
                Seq::ZERO
            };
            page = read_after(store, range.clone(), void_after, overdue).await?;
            if !page.messages.is_empty() || page.waiting.is_none() || overdue != Seq::ZERO {
                break;
            }
        }
    }
    page.messages.truncate(limit);
    Ok(page.into())
}

/// A `history` page in `before` mode: the latest entries with seq < `before` (or up to the
/// head), ascending, at most `limit`. The page runs without a hole up to `before - 1` (or the
/// head): dead holes are resolved as voids, and a page that meets a hole not dead yet starts
/// after it (the next page, `before` its first seq, meets that hole again). When that hole is
/// at the very top, waits for it as [`history_after`] does, so an empty page always means
/// the start of the log.
///
/// # Errors
/// The store's errors.
pub(crate) async fn history_before<S: StoreService>(
    store: &S,
    conversation: ConversationId,
    before: Option<Seq>,
    limit: usize,
    void_after: Duration,
) -> Result<MessagePage, Error> {
    let mut overdue = Seq::ZERO;
    let mut deadline: Option<Instant> = None;
    loop {
        let page = call(
            store,
            ReadBefore {
                conversation: conversation.clone(),
                before,
                limit,
            },
        )
        .await?;
        let Some(first) = page.messages.first().map(|message| message.seq) else {
            return Ok(page);
        };
        let upper = match before {
            Some(before) => Seq(before.get().saturating_sub(1)).min(page.head),
            None => page.head,
        };
        // The entry after the page, which judges a hole at its top.
        let judge = match page.messages.last() {
            Some(last) if last.seq < upper => call(
                store,
                ReadRange {
                    conversation: conversation.clone(),
                    after: upper,
                    until: None,
                    limit: 1,
                },
            )
            .await?
            .messages
            .into_iter()
            .next(),
            _ => None,
        };
        let now = Timestamp::now();
        // From the top down: the highest hole that is not dead.
        let mut above = judge.as_ref();
        let mut top = upper;
        let mut highest_waiting: Option<(Seq, Duration)> = None;
        let mut dead_holes = false;
        for message in page.messages.iter().rev() {
            if message.seq < top {
                let waits_for = match above {
                    _ if top <= overdue => None,
                    Some(judge) => dead_in(judge, now, void_after),
                    None => Some(void_after),
                };
                if let Some(waits_for) = waits_for {
                    highest_waiting = Some((top, waits_for));
                    break;
                }
                dead_holes = true;
            }
            above = Some(message);
            top = Seq(message.seq.get().saturating_sub(1));
        }
        let start = match highest_waiting {
            Some((hole_last, _)) => hole_last.next(),
            None => first,
        };
        if start > upper {
            // The hole is at the very top: wait for it (once), then it is overdue.
            let Some((hole_last, dead_in)) = highest_waiting else {
                return Ok(page);
            };
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + dead_in);
            if overdue >= hole_last {
                // Waited already and still not resolved: let the client ask again.
                return Ok(MessagePage {
                    messages: Vec::new(),
                    head: page.head,
                });
            }
            tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
            if Instant::now() >= deadline {
                overdue = hole_last;
            }
            continue;
        }
        let start = start.max(Seq(upper
            .get()
            .saturating_sub(VoidHoles::MAX_SPAN - 1)
            .max(1)));
        let mut messages: Vec<Arc<Message>> = if dead_holes {
            call(
                store,
                VoidHoles {
                    conversation: conversation.clone(),
                    after: Seq(start.get() - 1),
                    until: upper,
                },
            )
            .await?
            .messages
        } else {
            page.messages
        };
        messages.retain(|message| message.seq >= start);
        let mut messages = contiguous_prefix(Seq(start.get() - 1), messages);
        if messages.len() > limit {
            messages.drain(..messages.len() - limit);
        }
        return Ok(MessagePage {
            messages,
            head: page.head,
        });
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::store::AppendMessage;
    use messenger_core::{Body, ClientMsgId, DeviceId, UserId};
    use messenger_store::{EmbeddedStore, Store};

    use super::*;

    /// Long enough that an entry written now stays young however slow the test machine is.
    const VOID_AFTER: Duration = Duration::from_secs(60);

    fn chat() -> ConversationId {
        ConversationId::new("g:holes").unwrap()
    }

    fn entry(seq: u64, sent_at: Timestamp) -> Arc<Message> {
        Arc::new(Message {
            conversation: chat(),
            seq: Seq(seq),
            sender: UserId::new("alice").unwrap(),
            sender_device: DeviceId::new("phone").unwrap(),
            client_msg_id: ClientMsgId::new(format!("m{seq}")).unwrap(),
            sent_at,
            body: Body::text(format!("m{seq}")),
        })
    }

    /// A time `ago` before now.
    fn ago(ago: Duration) -> Timestamp {
        Timestamp(Timestamp::now().as_millis() - u64::try_from(ago.as_millis()).unwrap())
    }

    fn old() -> Timestamp {
        ago(Duration::from_secs(3600))
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store<EmbeddedStore>,
    }

    impl Fixture {
        async fn with(entries: &[(u64, Timestamp)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db")).unwrap());
            for (seq, sent_at) in entries {
                call(
                    &store,
                    AppendMessage {
                        message: entry(*seq, *sent_at),
                    },
                )
                .await
                .unwrap();
            }
            Fixture { _dir: dir, store }
        }

        fn writes(&self) -> u64 {
            self.store.backend().commit_stats().writes
        }

        async fn read(&self, after: u64, limit: usize, overdue: u64) -> Contiguous {
            read_after(
                &self.store,
                ReadRange {
                    conversation: chat(),
                    after: Seq(after),
                    until: None,
                    limit,
                },
                VOID_AFTER,
                Seq(overdue),
            )
            .await
            .unwrap()
        }
    }

    /// Seqs, with `v` after a void.
    fn shape(messages: &[Arc<Message>]) -> Vec<String> {
        messages
            .iter()
            .map(|message| {
                let void = if message.is_void() { "v" } else { "" };
                format!("{}{void}", message.seq)
            })
            .collect()
    }

    #[tokio::test]
    async fn dead_holes_are_resolved_together_in_one_write() {
        let fixture =
            Fixture::with(&[(1, old()), (2, old()), (6, old()), (7, old()), (10, old())]).await;
        let before = fixture.writes();
        let page = fixture.read(0, 100, 0).await;
        assert_eq!(
            shape(&page.messages),
            ["1", "2", "3v", "4v", "5v", "6", "7", "8v", "9v", "10"]
        );
        assert_eq!(page.waiting, None);
        assert_eq!(page.head, Seq(10));
        assert_eq!(fixture.writes() - before, 1, "one write for five holes");
        // They are stored: the next reader finds them.
        let again = fixture.read(0, 100, 0).await;
        assert_eq!(shape(&again.messages), shape(&page.messages));
        assert_eq!(fixture.writes() - before, 1, "nothing left to write");
    }

    #[tokio::test]
    async fn a_young_hole_stops_the_page_and_is_not_voided() {
        let fixture = Fixture::with(&[(1, old()), (2, old()), (5, Timestamp::now())]).await;
        let before = fixture.writes();
        let page = fixture.read(0, 100, 0).await;
        assert_eq!(shape(&page.messages), ["1", "2"]);
        let waiting = page.waiting.expect("stops before the hole");
        assert_eq!((waiting.first, waiting.last), (Seq(3), Seq(4)));
        assert!(waiting.dead_in > Duration::ZERO && waiting.dead_in <= VOID_AFTER);
        assert_eq!(fixture.writes(), before, "nothing voided");
    }

    #[tokio::test]
    async fn dead_holes_before_a_young_one_are_resolved_and_the_page_stops_there() {
        let fixture = Fixture::with(&[(1, old()), (3, old()), (6, Timestamp::now())]).await;
        let page = fixture.read(0, 100, 0).await;
        assert_eq!(shape(&page.messages), ["1", "2v", "3"]);
        let waiting = page.waiting.expect("stops before 4..=5");
        assert_eq!((waiting.first, waiting.last), (Seq(4), Seq(5)));
    }

    #[tokio::test]
    async fn holes_watched_long_enough_are_resolved_whatever_the_clocks() {
        // The entries after the holes come from a clock far ahead of ours.
        let ahead = Timestamp(Timestamp::now().as_millis() + 36_000_000);
        let fixture = Fixture::with(&[(1, old()), (4, ahead), (7, ahead)]).await;
        let young = fixture.read(0, 100, 0).await;
        assert_eq!(shape(&young.messages), ["1"]);
        assert!(
            young.waiting.expect("waiting").dead_in <= VOID_AFTER,
            "a clock ahead never makes a reader wait longer than its own timer"
        );
        // The reader watched up to seq 4 for `void_after`: the hole below it is dead, the one
        // after it (allocated later, as far as the reader knows) still waits.
        let page = fixture.read(0, 100, 4).await;
        assert_eq!(shape(&page.messages), ["1", "2v", "3v", "4"]);
        assert_eq!(
            page.waiting.map(|w| (w.first, w.last)),
            Some((Seq(5), Seq(6)))
        );
        let page = fixture.read(0, 100, 7).await;
        assert_eq!(
            shape(&page.messages),
            ["1", "2v", "3v", "4", "5v", "6v", "7"]
        );
    }

    #[tokio::test]
    async fn an_overdue_mark_inside_a_hole_resolves_only_its_part() {
        let fixture = Fixture::with(&[(1, old()), (6, Timestamp::now())]).await;
        let page = fixture.read(0, 100, 3).await;
        assert_eq!(shape(&page.messages), ["1", "2v", "3v"]);
        assert_eq!(
            page.waiting.map(|w| (w.first, w.last)),
            Some((Seq(4), Seq(5)))
        );
    }

    #[tokio::test]
    async fn a_full_page_ends_at_its_last_entry() {
        let fixture =
            Fixture::with(&[(1, old()), (3, old()), (5, old()), (9, Timestamp::now())]).await;
        // Three entries read: 1, 3, 5; the young hole after 5 is beyond the page.
        let page = fixture.read(0, 3, 0).await;
        assert_eq!(shape(&page.messages), ["1", "2v", "3", "4v", "5"]);
        assert_eq!(page.waiting, None);
    }

    #[tokio::test]
    async fn history_after_never_skips_and_waits_only_when_it_would_answer_nothing() {
        let fixture = Fixture::with(&[(1, old()), (4, old()), (6, Timestamp::now())]).await;
        let first = history_after(&fixture.store, chat(), Seq::ZERO, 100, VOID_AFTER)
            .await
            .unwrap();
        assert_eq!(shape(&first.messages), ["1", "2v", "3v", "4"]);
        assert_eq!(first.head, Seq(6));
        // The next page starts at the young hole: it waits for it, at most `void_after`.
        let short = Duration::from_millis(200);
        let next = history_after(&fixture.store, chat(), Seq(4), 100, short)
            .await
            .unwrap();
        assert_eq!(shape(&next.messages), ["5v", "6"]);
        // Limits hold, voids included.
        let limited = history_after(&fixture.store, chat(), Seq::ZERO, 2, VOID_AFTER)
            .await
            .unwrap();
        assert_eq!(shape(&limited.messages), ["1", "2v"]);
        // Past the head: empty, nothing to wait for.
        let done = history_after(&fixture.store, chat(), Seq(6), 100, VOID_AFTER)
            .await
            .unwrap();
        assert!(done.messages.is_empty());
    }

    #[tokio::test]
    async fn a_hole_filled_while_history_waits_answers_the_entry() {
        let fixture = Fixture::with(&[(1, old()), (3, Timestamp::now())]).await;
        let writer = {
            let store = fixture.store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(POLL).await;
                call(
                    &store,
                    AppendMessage {
                        message: entry(2, Timestamp::now()),
                    },
                )
                .await
                .unwrap();
            })
        };
        // Time to spare: the writer lands long before the hole could be voided.
        let page = history_after(&fixture.store, chat(), Seq(1), 100, VOID_AFTER)
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(shape(&page.messages), ["2", "3"]);
    }

    #[tokio::test]
    async fn history_before_runs_without_a_hole_up_to_before() {
        let now = Timestamp::now();
        let fixture =
            Fixture::with(&[(1, old()), (2, old()), (4, old()), (7, now), (8, now)]).await;
        // From the head: the young hole 5..=6 cuts the page; it starts after it.
        let latest = history_before(&fixture.store, chat(), None, 100, VOID_AFTER)
            .await
            .unwrap();
        assert_eq!(shape(&latest.messages), ["7", "8"]);
        // Scrolling back from 7: the hole is at the top now; the page waits for it, then
        // everything below resolves.
        let short = Duration::from_millis(200);
        let older = history_before(&fixture.store, chat(), Some(Seq(7)), 100, short)
            .await
            .unwrap();
        assert_eq!(shape(&older.messages), ["1", "2", "3v", "4", "5v", "6v"]);
        // The latest `limit` entries, voids counted.
        let limited = history_before(&fixture.store, chat(), Some(Seq(7)), 3, short)
            .await
            .unwrap();
        assert_eq!(shape(&limited.messages), ["4", "5v", "6v"]);
        // Before the first entry: the start of the log.
        let start = history_before(&fixture.store, chat(), Some(Seq(1)), 100, short)
            .await
            .unwrap();
        assert!(start.messages.is_empty());
    }

    #[test]
    fn dead_in_is_bounded_by_void_after() {
        let now = Timestamp::now();
        assert_eq!(dead_in(&entry(1, old()), now, VOID_AFTER), None);
        let young = dead_in(&entry(1, now), now, VOID_AFTER).expect("young");
        assert_eq!(young, VOID_AFTER);
        let ahead = Timestamp(now.as_millis() + 36_000_000);
        assert_eq!(dead_in(&entry(1, ahead), now, VOID_AFTER), Some(VOID_AFTER));
    }
}
