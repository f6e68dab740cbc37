//! The journal of pending uploads: one small file per media entry still waiting for its
//! bytes, with its deadline, so expiry survives a restart.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use messenger_core::{ConversationId, Seq, Timestamp};
use serde::{Deserialize, Serialize};

/// A media entry waiting for its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingUpload {
    pub(crate) conversation: ConversationId,
    pub(crate) seq: Seq,
    /// When it becomes `failed` if not uploaded.
    pub(crate) deadline: Timestamp,
}

/// The directory of pending uploads and its in-memory copy.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    entries: Mutex<BTreeMap<String, PendingUpload>>,
}

/// The file-system-safe name of a media entry: the conversation id in hex, then the seq.
pub(crate) fn entry_key(conversation: &ConversationId, seq: Seq) -> String {
    let mut key = String::with_capacity(conversation.as_str().len() * 2 + 21);
    for byte in conversation.as_str().bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key.push('-');
    key.push_str(&seq.get().to_string());
    key
}

impl Journal {
    /// Opens (creating) `dir` and loads every entry in it; unreadable files are skipped
    /// with a warning.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        for file in std::fs::read_dir(dir)? {
            let path = file?.path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("json") {
                continue;
            }
            let loaded = std::fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<PendingUpload>(&bytes).map_err(|err| err.to_string())
                });
            match loaded {
                Ok(entry) => {
                    entries.insert(entry_key(&entry.conversation, entry.seq), entry);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "skipping a bad pending-upload file");
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Records `entry` (durably: written to a temporary file, synced, renamed).
    pub(crate) async fn insert(&self, entry: PendingUpload) -> io::Result<()> {
        let key = entry_key(&entry.conversation, entry.seq);
        let known = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .is_some_and(|known| known == &entry);
        if known {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        let path = self.path(&key);
        let temporary = self.dir.join(format!("{key}.tmp"));
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })
        .await
        .map_err(io::Error::other)??;
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry);
        Ok(())
    }

    /// Forgets an entry (finished or failed).
    pub(crate) async fn remove(&self, conversation: &ConversationId, seq: Seq) {
        let key = entry_key(conversation, seq);
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        match tokio::fs::remove_file(self.path(&key)).await {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(error = %err, "cannot remove a pending-upload file"),
        }
    }

    /// Entries whose deadline passed at `now`.
    pub(crate) fn overdue(&self, now: Timestamp) -> Vec<PendingUpload> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|entry| entry.deadline <= now)
            .cloned()
            .collect()
    }

    /// How many uploads are pending.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let conversation = ConversationId::new("dm:alice:bob").unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal
            .insert(PendingUpload {
                conversation: conversation.clone(),
                seq: Seq(4),
                deadline: Timestamp(1_000),
            })
            .await
            .unwrap();
        journal
            .insert(PendingUpload {
                conversation: conversation.clone(),
                seq: Seq(5),
                deadline: Timestamp(3_000),
            })
            .await
            .unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.len(), 2);
        let overdue = journal.overdue(Timestamp(2_000));
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].seq, Seq(4));
        journal.remove(&conversation, Seq(4)).await;
        drop(journal);
        assert_eq!(Journal::open(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn keys_are_file_names() {
        let key = entry_key(&ConversationId::new("dm:a:b").unwrap(), Seq(12));
        assert_eq!(key, "646d3a613a62-12");
    }
}
