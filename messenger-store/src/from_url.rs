//! A store chosen by URL at run time (as object_store's `parse_url`): [`connect`].

use std::path::{Path, PathBuf};

use messenger_core::{Error, ErrorKind};

use crate::embedded::{Durability, EmbeddedConfig, EmbeddedStore};
use crate::{DynStore, Store};

/// Opens or connects to the store `url` names, as a [`DynStore`].
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `embedded:PATH` | [`EmbeddedStore`] on the SQLite file `PATH` (its directory is created if missing) | always built |
/// | `embedded:PATH?durability=relaxed` | the same with [`Durability::Relaxed`] (`durability=full` is the default) | always built |
/// | `mysql://USER:PASSWORD@HOST:PORT/DATABASE` | `mysql::MysqlStore` (MySQL 8 or MariaDB) | `mysql` |
/// | `scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE]` | `scylla::ScyllaStore` (keyspace default `messenger`) | `scylla` |
///
/// The schema is created or migrated as the backend's own constructor does. Everything after
/// the first `?` of an `embedded:` URL is options, so `PATH` holds no `?`.
///
/// ```
/// use messenger_core::store::GetHead;
/// use messenger_core::{call, ConversationId, Seq};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let url = format!("embedded:{}?durability=relaxed", dir.path().join("messages.db").display());
/// let store = messenger_store::connect(&url).await?;
/// let head = call(&store, GetHead { conversation: ConversationId::new("g:lunch")? }).await?;
/// assert_eq!(head, Seq::ZERO);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// `InvalidRequest` for an unknown scheme, an `embedded:` URL without a path or with an
/// unknown option, and a scheme whose feature this build lacks (the message names the
/// feature); `Unavailable` when the embedded store's directory cannot be created; otherwise
/// what the backend's constructor returns ([`EmbeddedStore::open_with`],
/// `MysqlStore::connect`, `ScyllaStore::connect`).
pub async fn connect(url: &str) -> Result<DynStore, Error> {
    if let Some(rest) = url.strip_prefix("embedded:") {
        return embedded(rest).await;
    }
    if url.starts_with("mysql://") {
        return mysql(url).await;
    }
    if let Some(rest) = url.strip_prefix("scylla://") {
        return scylla(rest).await;
    }
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    Err(invalid(format!(
        "unknown store URL scheme {scheme:?}: use embedded:PATH, mysql://... or scylla://..."
    )))
}

/// `embedded:PATH[?durability=full|relaxed]`.
async fn embedded(path_and_options: &str) -> Result<DynStore, Error> {
    let (path, options) = path_and_options
        .split_once('?')
        .unwrap_or((path_and_options, ""));
    if path.is_empty() {
        return Err(invalid(
            "an embedded: store URL names no file (embedded:PATH)",
        ));
    }
    let mut config = EmbeddedConfig::new(PathBuf::from(path));
    for option in options.split('&').filter(|option| !option.is_empty()) {
        config.durability = match option.split_once('=') {
            Some(("durability", "full")) => Durability::Full,
            Some(("durability", "relaxed")) => Durability::Relaxed,
            _ => {
                return Err(invalid(format!(
                    "unknown embedded store option {option:?} (durability=full|relaxed)"
                )));
            }
        };
    }
    let store = tokio::task::spawn_blocking(move || {
        create_parent(&config.path)?;
        EmbeddedStore::open_with(config)
    })
    .await
    .map_err(|err| {
        Error::new(ErrorKind::Unexpected, "opening the embedded store panicked")
            .with_backend("embedded")
            .with_source(err)
    })??;
    Ok(Store::new_dyn(store))
}

fn create_parent(path: &Path) -> Result<(), Error> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|err| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot create {}", parent.display()),
                )
                .with_backend("embedded")
                .with_source(err)
            })
        }
        _ => Ok(()),
    }
}

#[cfg(feature = "mysql")]
async fn mysql(url: &str) -> Result<DynStore, Error> {
    Ok(Store::new_dyn(
        crate::mysql::MysqlStore::connect(url).await?,
    ))
}

#[cfg(not(feature = "mysql"))]
async fn mysql(_url: &str) -> Result<DynStore, Error> {
    Err(missing_feature("mysql://", "mysql"))
}

/// `scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE]`.
#[cfg(feature = "scylla")]
async fn scylla(nodes_and_keyspace: &str) -> Result<DynStore, Error> {
    let (nodes, keyspace) = nodes_and_keyspace
        .split_once('/')
        .unwrap_or((nodes_and_keyspace, ""));
    let nodes: Vec<&str> = nodes
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .collect();
    if nodes.is_empty() {
        return Err(invalid(
            "a scylla:// store URL names no node (scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE])",
        ));
    }
    let mut config = crate::scylla::ScyllaConfig::new(nodes);
    if !keyspace.is_empty() {
        keyspace.clone_into(&mut config.keyspace);
    }
    Ok(Store::new_dyn(
        crate::scylla::ScyllaStore::connect(config).await?,
    ))
}

#[cfg(not(feature = "scylla"))]
async fn scylla(_nodes_and_keyspace: &str) -> Result<DynStore, Error> {
    Err(missing_feature("scylla://", "scylla"))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRequest, message)
}

#[cfg(any(not(feature = "mysql"), not(feature = "scylla")))]
fn missing_feature(scheme: &str, feature: &str) -> Error {
    invalid(format!(
        "{scheme} store URLs need the `{feature}` feature of messenger-store, which this build lacks"
    ))
}

#[cfg(test)]
mod tests {
    use messenger_core::store::{AppendMessage, GetHead, ReadRange};
    use messenger_core::{
        Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call,
    };

    use super::*;

    fn message(chat: &ConversationId, seq: u64) -> Message {
        Message {
            conversation: chat.clone(),
            seq: Seq(seq),
            sender: UserId::new("alice").unwrap(),
            sender_device: DeviceId::new("phone").unwrap(),
            client_msg_id: ClientMsgId::new(format!("m-{seq}")).unwrap(),
            sent_at: Timestamp::now(),
            body: Body::text("hi"),
        }
    }

    /// The file is created (with its missing directory) and keeps what was written across a
    /// reopen through another URL form.
    #[tokio::test]
    async fn embedded_url_opens_a_file_that_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/messages.db");
        let chat = ConversationId::new("g:lunch").unwrap();
        {
            let store = connect(&format!("embedded:{}", path.display()))
                .await
                .unwrap();
            let message = std::sync::Arc::new(message(&chat, 1));
            let appended = call(&store, AppendMessage { message }).await.unwrap();
            assert!(!appended.duplicate);
        }
        assert!(path.exists(), "the store file is where the URL says");
        let store = connect(&format!("embedded:{}?durability=relaxed", path.display()))
            .await
            .unwrap();
        let head = call(
            &store,
            GetHead {
                conversation: chat.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(head, Seq(1));
        let page = call(
            &store,
            ReadRange {
                conversation: chat,
                after: Seq::ZERO,
                until: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
        assert_eq!(page.messages.len(), 1);
    }

    #[tokio::test]
    async fn bad_urls_are_invalid_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        for url in [
            "embedded:".to_owned(),
            "embedded:?durability=full".to_owned(),
            format!("embedded:{}?durability=sometimes", path.display()),
            format!("embedded:{}?fsync=off", path.display()),
            "postgres://localhost/chat".to_owned(),
            "messages.db".to_owned(),
        ] {
            let err = connect(&url).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{url}: {err}");
        }
        assert!(!path.exists(), "a refused URL creates nothing");
    }

    #[cfg(not(feature = "scylla"))]
    #[tokio::test]
    async fn a_scheme_whose_feature_is_off_names_the_feature() {
        let err = connect("scylla://127.0.0.1:9042").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(err.to_string().contains("`scylla` feature"), "{err}");
    }

    #[cfg(not(feature = "mysql"))]
    #[tokio::test]
    async fn mysql_without_its_feature_names_the_feature() {
        let err = connect("mysql://root@127.0.0.1/chat").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(err.to_string().contains("`mysql` feature"), "{err}");
    }

    #[cfg(feature = "scylla")]
    #[tokio::test]
    async fn a_scylla_url_without_nodes_is_refused_before_connecting() {
        let err = connect("scylla:///chat").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    }
}
