//! Every CQL statement of the ScyllaDB store, as text, with the consistency it runs at.
//!
//! The statements are prepared once when the store connects ([`Statements::prepare`]). Each
//! constant documents its consistency level: `C` is the configured
//! [`consistency`](super::ScyllaConfig::consistency) (default `LOCAL_QUORUM`) and `S` the
//! configured [`serial_consistency`](super::ScyllaConfig::serial_consistency) (default
//! `LOCAL_SERIAL`), used for the Paxos phase of lightweight transactions.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::config::ScyllaConfig;
use super::error::ScyllaError;

/// Seqs per partition of `messages`: a partition holds seqs `bucket * 1024 ..= bucket * 1024 + 1023`.
pub(crate) const BUCKET_SIZE: u64 = 1024;

/// The partition (bucket) of `messages` that holds `seq`.
pub(crate) fn bucket(seq: u64) -> u64 {
    seq / BUCKET_SIZE
}

/// The message columns, in the order the codec reads them (checked against each select).
#[cfg(test)]
const MESSAGE_COLUMNS: &str =
    "conversation, seq, sender, sender_device, client_msg_id, sent_at, body";

/// Conditional append (LWT, `S` then `C`): a seq is written once, never overwritten. Not
/// applied: the answer carries the row that holds the seq.
pub(crate) const INSERT_MESSAGE: &str = "INSERT INTO messages \
     (conversation, bucket, seq, sender, sender_device, client_msg_id, sent_at, body) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";

/// One entry by seq (`C`).
pub(crate) const SELECT_MESSAGE: &str = "SELECT conversation, seq, sender, sender_device, \
     client_msg_id, sent_at, body FROM messages WHERE conversation = ? AND bucket = ? AND seq = ?";

/// Entries of one bucket with `after < seq <= until`, ascending, paged (`C`).
pub(crate) const SELECT_RANGE: &str = "SELECT conversation, seq, sender, sender_device, \
     client_msg_id, sent_at, body FROM messages \
     WHERE conversation = ? AND bucket = ? AND seq > ? AND seq <= ? \
     ORDER BY seq ASC LIMIT ?";

/// Entries of one bucket with `seq <= until`, descending, paged (`C`).
pub(crate) const SELECT_BEFORE: &str = "SELECT conversation, seq, sender, sender_device, \
     client_msg_id, sent_at, body FROM messages \
     WHERE conversation = ? AND bucket = ? AND seq <= ? \
     ORDER BY seq DESC LIMIT ?";

/// Replaces an entry's body (LWT, `S` then `C`): only if it is still the body that was read (a
/// media entry leaving `pending`, an edited or deleted message).
pub(crate) const SET_BODY_IF: &str = "UPDATE messages SET body = ? \
     WHERE conversation = ? AND bucket = ? AND seq = ? IF body = ?";

/// Claims an idempotency key for a seq (LWT, `S` then `C`). Not applied: the answer carries
/// the seq the key was given before.
pub(crate) const CLAIM_KEY: &str = "INSERT INTO message_keys \
     (conversation, sender, client_msg_id, seq) VALUES (?, ?, ?, ?) IF NOT EXISTS";

/// Moves a stale claim (its seq holds another entry) to a new seq (LWT, `S` then `C`).
pub(crate) const MOVE_KEY: &str = "UPDATE message_keys SET seq = ? \
     WHERE conversation = ? AND sender = ? AND client_msg_id = ? IF seq = ?";

/// Releases a claim whose append was refused (LWT, `S` then `C`): only if it still points at
/// the refused seq.
pub(crate) const RELEASE_KEY: &str = "DELETE FROM message_keys \
     WHERE conversation = ? AND sender = ? AND client_msg_id = ? IF seq = ?";

/// The seq a key was given (`C`).
pub(crate) const SELECT_KEY: &str = "SELECT seq FROM message_keys \
     WHERE conversation = ? AND sender = ? AND client_msg_id = ?";

/// Raises the head (`C`, no LWT): the write timestamp is the seq, so the highest seq wins.
pub(crate) const RAISE_HEAD: &str =
    "UPDATE heads USING TIMESTAMP ? SET head = ? WHERE conversation = ?";

/// A conversation's head (`C`).
pub(crate) const SELECT_HEAD: &str = "SELECT head FROM heads WHERE conversation = ?";

/// Creates a conversation once (LWT, `S` then `C`). Not applied: the answer carries the
/// stored facts.
pub(crate) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
     (id, kind, title, created_by, created_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS";

/// A conversation's facts (`C`).
pub(crate) const SELECT_CONVERSATION: &str =
    "SELECT id, kind, title, created_by, created_at FROM conversations WHERE id = ?";

/// Adds a member or sets its role, in the membership batch (`C`, logged batch); the write
/// timestamp is the seq of the membership change (0 at creation).
pub(crate) const INSERT_MEMBER: &str =
    "INSERT INTO members (conversation, user_id, role) VALUES (?, ?, ?) USING TIMESTAMP ?";

/// The same membership in the per-user index, in the same batch and with the same timestamp.
pub(crate) const INSERT_MEMBER_BY_USER: &str = "INSERT INTO members_by_user \
     (user_id, conversation, role) VALUES (?, ?, ?) USING TIMESTAMP ?";

/// Removes a member, in the membership batch (`C`, logged batch), at the change's seq.
pub(crate) const DELETE_MEMBER: &str =
    "DELETE FROM members USING TIMESTAMP ? WHERE conversation = ? AND user_id = ?";

/// Removes the membership from the per-user index, in the same batch.
pub(crate) const DELETE_MEMBER_BY_USER: &str =
    "DELETE FROM members_by_user USING TIMESTAMP ? WHERE user_id = ? AND conversation = ?";

/// A conversation's members, by user id (`C`; one partition).
pub(crate) const SELECT_MEMBERS: &str = "SELECT user_id, role FROM members WHERE conversation = ?";

/// A user's conversations with the role (`C`; one partition).
pub(crate) const SELECT_USER_CONVERSATIONS: &str =
    "SELECT conversation, role FROM members_by_user WHERE user_id = ?";

/// Raises the delivered watermark (`C`, no LWT): write timestamp = the seq, so the highest
/// watermark wins.
pub(crate) const RAISE_DELIVERED: &str = "UPDATE receipts USING TIMESTAMP ? \
     SET delivered_seq = ? WHERE conversation = ? AND user_id = ?";

/// Raises the read and delivered watermarks (read implies delivered), same rule.
pub(crate) const RAISE_READ: &str = "UPDATE receipts USING TIMESTAMP ? \
     SET delivered_seq = ?, read_seq = ? WHERE conversation = ? AND user_id = ?";

/// One user's watermarks in a conversation (`C`).
pub(crate) const SELECT_RECEIPT: &str = "SELECT delivered_seq, read_seq FROM receipts \
     WHERE conversation = ? AND user_id = ?";

/// Every watermark of a conversation (`C`; one partition).
pub(crate) const SELECT_RECEIPTS: &str =
    "SELECT user_id, delivered_seq, read_seq FROM receipts WHERE conversation = ?";

/// Raises last seen (`C`, no LWT): write timestamp = the milliseconds, so the latest wins.
pub(crate) const RAISE_LAST_SEEN: &str =
    "UPDATE last_seen USING TIMESTAMP ? SET seen_at = ? WHERE user_id = ?";

/// One user's last seen (`C`).
pub(crate) const SELECT_LAST_SEEN: &str = "SELECT seen_at FROM last_seen WHERE user_id = ?";

/// The schema version (`C`).
pub(crate) const SELECT_SCHEMA_VERSION: &str = "SELECT version FROM schema_version WHERE name = ?";

/// Records the schema version (`C`).
pub(crate) const UPSERT_SCHEMA_VERSION: &str =
    "INSERT INTO schema_version (name, version) VALUES (?, ?)";

/// Whether a statement is a lightweight transaction (runs Paxos at the serial consistency).
fn is_lwt(statement: &str) -> bool {
    statement.contains(" IF NOT EXISTS")
        || statement.contains(" IF seq = ")
        || statement.contains(" IF body = ")
}

/// Every statement of the store, prepared on one session with its consistency levels.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) insert_message: PreparedStatement,
    pub(crate) select_message: PreparedStatement,
    pub(crate) select_range: PreparedStatement,
    pub(crate) select_before: PreparedStatement,
    pub(crate) claim_key: PreparedStatement,
    pub(crate) move_key: PreparedStatement,
    pub(crate) release_key: PreparedStatement,
    pub(crate) select_key: PreparedStatement,
    pub(crate) raise_head: PreparedStatement,
    pub(crate) select_head: PreparedStatement,
    pub(crate) insert_conversation: PreparedStatement,
    pub(crate) select_conversation: PreparedStatement,
    pub(crate) insert_member: PreparedStatement,
    pub(crate) insert_member_by_user: PreparedStatement,
    pub(crate) delete_member: PreparedStatement,
    pub(crate) delete_member_by_user: PreparedStatement,
    pub(crate) select_members: PreparedStatement,
    pub(crate) select_user_conversations: PreparedStatement,
    pub(crate) raise_delivered: PreparedStatement,
    pub(crate) raise_read: PreparedStatement,
    pub(crate) select_receipt: PreparedStatement,
    pub(crate) select_receipts: PreparedStatement,
    pub(crate) raise_last_seen: PreparedStatement,
    pub(crate) select_last_seen: PreparedStatement,
    pub(crate) set_body_if: PreparedStatement,
}

impl Statements {
    /// Prepares every statement on `session` (whose keyspace is the store's).
    pub(crate) async fn prepare(
        session: &Session,
        config: &ScyllaConfig,
    ) -> Result<Self, ScyllaError> {
        let prepare = |text: &'static str| prepare(session, config, text);
        Ok(Self {
            insert_message: prepare(INSERT_MESSAGE).await?,
            select_message: prepare(SELECT_MESSAGE).await?,
            select_range: prepare(SELECT_RANGE).await?,
            select_before: prepare(SELECT_BEFORE).await?,
            claim_key: prepare(CLAIM_KEY).await?,
            move_key: prepare(MOVE_KEY).await?,
            release_key: prepare(RELEASE_KEY).await?,
            select_key: prepare(SELECT_KEY).await?,
            raise_head: prepare(RAISE_HEAD).await?,
            select_head: prepare(SELECT_HEAD).await?,
            insert_conversation: prepare(INSERT_CONVERSATION).await?,
            select_conversation: prepare(SELECT_CONVERSATION).await?,
            insert_member: prepare(INSERT_MEMBER).await?,
            insert_member_by_user: prepare(INSERT_MEMBER_BY_USER).await?,
            delete_member: prepare(DELETE_MEMBER).await?,
            delete_member_by_user: prepare(DELETE_MEMBER_BY_USER).await?,
            select_members: prepare(SELECT_MEMBERS).await?,
            select_user_conversations: prepare(SELECT_USER_CONVERSATIONS).await?,
            raise_delivered: prepare(RAISE_DELIVERED).await?,
            raise_read: prepare(RAISE_READ).await?,
            select_receipt: prepare(SELECT_RECEIPT).await?,
            select_receipts: prepare(SELECT_RECEIPTS).await?,
            raise_last_seen: prepare(RAISE_LAST_SEEN).await?,
            select_last_seen: prepare(SELECT_LAST_SEEN).await?,
            set_body_if: prepare(SET_BODY_IF).await?,
        })
    }
}

/// Prepares one statement with its consistency, serial consistency, page size and
/// idempotence (plain writes with an explicit timestamp and reads may be retried or sent
/// speculatively by the driver; lightweight transactions may not).
pub(crate) async fn prepare(
    session: &Session,
    config: &ScyllaConfig,
    text: &'static str,
) -> Result<PreparedStatement, ScyllaError> {
    let mut statement = session.prepare(text).await?;
    statement.set_consistency(config.consistency);
    let lwt = is_lwt(text);
    statement.set_serial_consistency(lwt.then_some(config.serial_consistency));
    statement.set_is_idempotent(!lwt);
    statement.set_page_size(config.page_size.max(1));
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 27] = [
        INSERT_MESSAGE,
        SELECT_MESSAGE,
        SELECT_RANGE,
        SELECT_BEFORE,
        CLAIM_KEY,
        MOVE_KEY,
        RELEASE_KEY,
        SELECT_KEY,
        RAISE_HEAD,
        SELECT_HEAD,
        INSERT_CONVERSATION,
        SELECT_CONVERSATION,
        INSERT_MEMBER,
        INSERT_MEMBER_BY_USER,
        DELETE_MEMBER,
        DELETE_MEMBER_BY_USER,
        SELECT_MEMBERS,
        SELECT_USER_CONVERSATIONS,
        RAISE_DELIVERED,
        RAISE_READ,
        SELECT_RECEIPT,
        SELECT_RECEIPTS,
        RAISE_LAST_SEEN,
        SELECT_LAST_SEEN,
        SELECT_SCHEMA_VERSION,
        UPSERT_SCHEMA_VERSION,
        SET_BODY_IF,
    ];

    /// The tables of the schema file, with their key columns (partition key first).
    fn table_of(statement: &str) -> &str {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let after = |keyword: &str| {
            words
                .iter()
                .position(|word| word.eq_ignore_ascii_case(keyword))
                .and_then(|at| words.get(at + 1))
                .copied()
                .unwrap_or("")
        };
        match words
            .first()
            .map(|word| word.to_ascii_uppercase())
            .as_deref()
        {
            Some("INSERT") => after("INTO"),
            Some("UPDATE") => after("UPDATE"),
            Some("SELECT" | "DELETE") => after("FROM"),
            _ => "",
        }
    }

    fn bind_markers(statement: &str) -> usize {
        statement.matches('?').count()
    }

    #[test]
    fn every_statement_names_a_table_of_the_schema() {
        let schema = super::super::schema::statements();
        for statement in ALL {
            let table = table_of(statement);
            assert!(!table.is_empty(), "{statement}");
            assert!(
                schema
                    .iter()
                    .any(|created| created
                        .contains(&format!("CREATE TABLE IF NOT EXISTS {table} ("))),
                "{table} is not created by schema.cql"
            );
        }
    }

    #[test]
    fn reads_and_key_writes_address_whole_partition_keys() {
        // Messages are always addressed by (conversation, bucket): never a scan.
        for statement in [SELECT_MESSAGE, SELECT_RANGE, SELECT_BEFORE] {
            assert!(
                statement.contains("WHERE conversation = ? AND bucket = ?"),
                "{statement}"
            );
            assert!(!statement.contains("ALLOW FILTERING"));
        }
        for statement in [CLAIM_KEY, MOVE_KEY, RELEASE_KEY, SELECT_KEY] {
            assert!(statement.contains("message_keys"));
            for column in ["conversation", "sender", "client_msg_id"] {
                assert!(statement.contains(column), "{statement} misses {column}");
            }
        }
        for statement in ALL {
            assert!(!statement.contains("ALLOW FILTERING"), "{statement}");
            assert!(
                !statement.contains(" IN ("),
                "{statement}: multi-partition IN"
            );
        }
    }

    #[test]
    fn the_log_and_creation_are_conditional() {
        assert!(INSERT_MESSAGE.ends_with("IF NOT EXISTS"));
        assert!(CLAIM_KEY.ends_with("IF NOT EXISTS"));
        assert!(INSERT_CONVERSATION.ends_with("IF NOT EXISTS"));
        assert!(MOVE_KEY.ends_with("IF seq = ?"));
        assert!(RELEASE_KEY.ends_with("IF seq = ?"));
        assert!(SET_BODY_IF.ends_with("IF body = ?"));
        for statement in [
            INSERT_MESSAGE,
            CLAIM_KEY,
            MOVE_KEY,
            RELEASE_KEY,
            INSERT_CONVERSATION,
            SET_BODY_IF,
        ] {
            assert!(is_lwt(statement), "{statement}");
        }
        // Nothing else pays for Paxos.
        let lwts = ALL.iter().filter(|statement| is_lwt(statement)).count();
        assert_eq!(lwts, 6);
        // The log is only ever written conditionally: inserted if the seq is free, or a media
        // entry's body moved only from the body that was read. No plain write touches it.
        for statement in ALL {
            if table_of(statement) == "messages" && !statement.starts_with("SELECT") {
                assert!(
                    statement.contains("IF NOT EXISTS") || statement.ends_with("IF body = ?"),
                    "{statement}"
                );
            }
        }
    }

    #[test]
    fn monotonic_values_are_written_with_a_derived_timestamp() {
        for statement in [
            RAISE_HEAD,
            RAISE_DELIVERED,
            RAISE_READ,
            RAISE_LAST_SEEN,
            INSERT_MEMBER,
            INSERT_MEMBER_BY_USER,
            DELETE_MEMBER,
            DELETE_MEMBER_BY_USER,
        ] {
            assert!(statement.contains("USING TIMESTAMP ?"), "{statement}");
            assert!(!is_lwt(statement), "{statement}");
        }
        // Every write to these tables carries an explicit timestamp: one write with the
        // server's clock (microseconds since 1970) would beat every seq forever.
        for statement in ALL {
            let table = table_of(statement);
            let stamped = [
                "heads",
                "receipts",
                "last_seen",
                "members",
                "members_by_user",
            ];
            if stamped.contains(&table) && !statement.starts_with("SELECT") {
                assert!(statement.contains("USING TIMESTAMP"), "{statement}");
            }
        }
        // Read implies delivered: both watermarks move in one write.
        assert!(RAISE_READ.contains("delivered_seq = ?, read_seq = ?"));
    }

    #[test]
    fn bind_markers_match_the_values_the_store_binds() {
        let expected = [
            (INSERT_MESSAGE, 8),
            (SELECT_MESSAGE, 3),
            (SELECT_RANGE, 5),
            (SELECT_BEFORE, 4),
            (CLAIM_KEY, 4),
            (MOVE_KEY, 5),
            (RELEASE_KEY, 4),
            (SELECT_KEY, 3),
            (RAISE_HEAD, 3),
            (SELECT_HEAD, 1),
            (INSERT_CONVERSATION, 5),
            (SELECT_CONVERSATION, 1),
            (INSERT_MEMBER, 4),
            (INSERT_MEMBER_BY_USER, 4),
            (DELETE_MEMBER, 3),
            (DELETE_MEMBER_BY_USER, 3),
            (SELECT_MEMBERS, 1),
            (SELECT_USER_CONVERSATIONS, 1),
            (RAISE_DELIVERED, 4),
            (RAISE_READ, 5),
            (SELECT_RECEIPT, 2),
            (SELECT_RECEIPTS, 1),
            (RAISE_LAST_SEEN, 3),
            (SELECT_LAST_SEEN, 1),
            (SELECT_SCHEMA_VERSION, 1),
            (UPSERT_SCHEMA_VERSION, 2),
            (SET_BODY_IF, 5),
        ];
        assert_eq!(expected.len(), ALL.len());
        for (statement, markers) in expected {
            assert_eq!(bind_markers(statement), markers, "{statement}");
        }
    }

    #[test]
    fn range_reads_are_ordered_and_limited() {
        assert!(SELECT_RANGE.contains("ORDER BY seq ASC LIMIT ?"));
        assert!(SELECT_BEFORE.contains("ORDER BY seq DESC LIMIT ?"));
        assert!(SELECT_MESSAGE.contains(MESSAGE_COLUMNS));
        assert!(SELECT_RANGE.contains(MESSAGE_COLUMNS));
        assert!(SELECT_BEFORE.contains(MESSAGE_COLUMNS));
    }

    #[test]
    fn buckets_hold_1024_consecutive_seqs() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(1023), 0);
        assert_eq!(bucket(1024), 1);
        assert_eq!(bucket(2047), 1);
        assert_eq!(bucket(2048), 2);
        let max = i64::MAX as u64;
        assert_eq!(bucket(max), max / 1024);
        // Every seq of a bucket maps back to it.
        for seq in 5 * BUCKET_SIZE..6 * BUCKET_SIZE {
            assert_eq!(bucket(seq), 5);
        }
    }
}
