//! Reads: a small pool of read-only connections used from `spawn_blocking`.
//!
//! In WAL mode readers never wait for the writer and see the last committed state; each read
//! runs in one read transaction, so a page and its head come from the same snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use messenger_core::store::{ConversationInfo, FindMessage, MessagePage, ReadBefore, ReadRange};
use messenger_core::{ConversationSummary, Member, Message, Receipts, Seq, Timestamp, UserId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::Semaphore;

use super::codec::{self, CONVERSATION_COLUMNS, MESSAGE_COLUMNS, RawConversation, RawMessage};
use super::error::EmbeddedError;

/// The read connections and a permit per connection.
#[derive(Debug)]
pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    path: PathBuf,
    busy_timeout: Duration,
}

impl ReadPool {
    pub(crate) fn open(
        path: PathBuf,
        size: usize,
        busy_timeout: Duration,
    ) -> Result<Arc<Self>, EmbeddedError> {
        let size = size.max(1);
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(open_reader(&path, busy_timeout)?);
        }
        Ok(Arc::new(Self {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
            path,
            busy_timeout,
        }))
    }

    /// Runs `read` on an idle connection on tokio's blocking pool.
    ///
    /// A connection lost to a panic is replaced by a new one on the next read.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T, EmbeddedError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, EmbeddedError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| EmbeddedError::CommitterGone)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match taken {
                Some(conn) => conn,
                None => open_reader(&pool.path, pool.busy_timeout)?,
            };
            let result = read(&conn);
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await?
    }
}

fn open_reader(path: &PathBuf, busy_timeout: Duration) -> Result<Connection, EmbeddedError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Keeps a prepared statement's plan whatever values are bound to it (SQLite's query planner
/// stability guarantee). The bundled SQLite is built with `SQLITE_ENABLE_STAT4`, which
/// otherwise recompiles a cached statement whenever a parameter the planner looked at gets a
/// new value — every `sync` of a different user: 13% of the server's CPU in a handshake storm
/// (`sqlite3Reprepare`), gone with this. Our tables are read through their primary keys and
/// unique indexes, so the plan never depends on the values.
pub(super) fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn decode_all(raws: Vec<RawMessage>) -> Result<Vec<Arc<Message>>, EmbeddedError> {
    raws.into_iter()
        .map(|raw| raw.decode().map(Arc::new))
        .collect()
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn bound(seq: Option<Seq>) -> i64 {
    seq.map_or(i64::MAX, |seq| i64::try_from(seq.get()).unwrap_or(i64::MAX))
}

pub(crate) fn find_message(
    conn: &Connection,
    request: &FindMessage,
) -> Result<Option<Arc<Message>>, EmbeddedError> {
    Ok(codec::message_by_key(
        conn,
        request.conversation.as_str(),
        request.sender.as_str(),
        request.client_msg_id.as_str(),
    )?
    .map(Arc::new))
}

pub(crate) fn read_range(
    conn: &Connection,
    request: &ReadRange,
) -> Result<MessagePage, EmbeddedError> {
    let tx = conn.unchecked_transaction()?;
    let conversation = request.conversation.as_str();
    let after = i64::try_from(request.after.get()).unwrap_or(i64::MAX);
    let raws = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4"
        ))?
        .query_map(
            params![
                conversation,
                after,
                bound(request.until),
                limit(request.limit)
            ],
            RawMessage::from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let head = codec::head(&tx, conversation)?;
    tx.finish()?;
    Ok(MessagePage {
        messages: decode_all(raws)?,
        head,
    })
}

pub(crate) fn read_before(
    conn: &Connection,
    request: &ReadBefore,
) -> Result<MessagePage, EmbeddedError> {
    let tx = conn.unchecked_transaction()?;
    let conversation = request.conversation.as_str();
    let mut raws = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ))?
        .query_map(
            params![conversation, bound(request.before), limit(request.limit)],
            RawMessage::from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    raws.reverse();
    let head = codec::head(&tx, conversation)?;
    tx.finish()?;
    Ok(MessagePage {
        messages: decode_all(raws)?,
        head,
    })
}

fn members(conn: &Connection, conversation: &str) -> Result<Vec<Member>, EmbeddedError> {
    let rows = conn
        .prepare_cached("SELECT user, role FROM members WHERE conversation = ?1 ORDER BY user")?
        .query_map(params![conversation], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(user, role)| {
            Ok(Member {
                user: codec::parse_id(&user)?,
                role: codec::parse_role(&role)?,
            })
        })
        .collect()
}

pub(crate) fn conversation(
    conn: &Connection,
    id: &str,
) -> Result<Option<ConversationInfo>, EmbeddedError> {
    let tx = conn.unchecked_transaction()?;
    let Some(conversation) = codec::conversation(&tx, id)? else {
        return Ok(None);
    };
    let members = members(&tx, id)?;
    let head = codec::head(&tx, id)?;
    tx.finish()?;
    Ok(Some(ConversationInfo {
        conversation,
        members,
        head,
    }))
}

pub(crate) fn user_conversations(
    conn: &Connection,
    user: &str,
) -> Result<Vec<ConversationSummary>, EmbeddedError> {
    let columns = CONVERSATION_COLUMNS
        .split(", ")
        .map(|column| format!("c.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let member = crate::unread::Member {
        conversation: "m.conversation",
        user: "m.user",
        quoted_user: "'\"' || m.user || '\"'",
        read: "coalesce(r.read, 0)",
        head: "coalesce(h.head, 0)",
    };
    let (unread, mentions) = (member.unread(), member.mentions());
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {columns}, m.role, coalesce(h.head, 0), \
                    coalesce(r.delivered, 0), coalesce(r.read, 0), {unread}, {mentions} \
             FROM members m \
             JOIN conversations c ON c.id = m.conversation \
             LEFT JOIN heads h ON h.conversation = m.conversation \
             LEFT JOIN receipts r ON r.conversation = m.conversation AND r.user = m.user \
             WHERE m.user = ?1 ORDER BY c.id"
        ))?
        .query_map(params![user], |row| {
            Ok((
                RawConversation::from_row(row, 0)?,
                row.get::<_, String>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, i64>(9)?,
                row.get::<_, i64>(10)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(conversation, role, head, delivered, read, unread, mentions)| {
                let head = codec::seq_from_sql(head)?;
                let read = codec::seq_from_sql(read)?;
                Ok(ConversationSummary {
                    conversation: conversation.decode()?,
                    role: codec::parse_role(&role)?,
                    head,
                    delivered: codec::seq_from_sql(delivered)?,
                    read,
                    unread: codec::from_sql("unread", unread)?,
                    mentions: codec::from_sql("mentions", mentions)?,
                })
            },
        )
        .collect()
}

pub(crate) fn receipts(
    conn: &Connection,
    conversation: &str,
) -> Result<Vec<Receipts>, EmbeddedError> {
    let rows = conn
        .prepare_cached(
            "SELECT m.user, coalesce(r.delivered, 0), coalesce(r.read, 0) \
             FROM members m \
             LEFT JOIN receipts r ON r.conversation = m.conversation AND r.user = m.user \
             WHERE m.conversation = ?1 ORDER BY m.user",
        )?
        .query_map(params![conversation], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(user, delivered, read)| {
            Ok(Receipts {
                user: codec::parse_id(&user)?,
                delivered: codec::seq_from_sql(delivered)?,
                read: codec::seq_from_sql(read)?,
            })
        })
        .collect()
}

pub(crate) fn last_seen(
    conn: &Connection,
    users: Vec<UserId>,
) -> Result<Vec<(UserId, Option<Timestamp>)>, EmbeddedError> {
    let mut select = conn.prepare_cached("SELECT at FROM last_seen WHERE user = ?1")?;
    let mut seen = Vec::with_capacity(users.len());
    for user in users {
        let at: Option<i64> = select
            .query_row(params![user.as_str()], |row| row.get(0))
            .optional()?;
        let at = at
            .map(|at| codec::from_sql("at", at).map(Timestamp))
            .transpose()?;
        seen.push((user, at));
    }
    Ok(seen)
}
