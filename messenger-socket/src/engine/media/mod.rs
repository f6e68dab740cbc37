//! The engine's side of media messages: config, object storage, upload tickets, the journal of
//! pending uploads, and status changes (`ready`, `failed`) sequenced like any entry. The HTTP
//! endpoints that receive and serve the bytes are the edge's ([`crate::media`]).

mod commit;
mod pending;
mod ticket;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use messenger_core::protocol::{ErrorCode, NewMedia, UploadTicket};
use messenger_core::{Body, Error, MediaBody, MediaStatus, Message, Seq, Timestamp};
pub use object_store::ObjectStore;

pub(crate) use self::commit::Committed;
pub(crate) use self::pending::entry_key;
use self::pending::{Journal, PendingUpload};
use self::ticket::TicketSigner;
#[cfg(fuzzing)]
pub(crate) use self::ticket::TicketSigner as FuzzTicketSigner;
pub(crate) use self::ticket::{TicketClaims, TicketError};
use super::{Backends, Engine};

/// How media uploads and downloads behave. Every field has a documented default.
#[derive(Clone)]
#[non_exhaustive]
pub struct MediaConfig {
    /// Local directory for staged uploads (`staging/`) and the journal of pending uploads
    /// (`pending/`). No default: given to [`MediaConfig::new`].
    pub dir: PathBuf,
    /// The base of the upload and download URLs handed to clients (for example
    /// `https://chat.example.com`, or a CDN's URL for downloads: see `docs/media.md`).
    pub public_url: String,
    /// Largest media in bytes. Default: 2 GiB.
    pub max_bytes: u64,
    /// How long a ticket is valid; a media entry not uploaded by then becomes `failed`.
    /// Default: 15 minutes.
    pub ticket_ttl: Duration,
    /// The HS256 secret that signs tickets. Default: `None`, a random secret per process
    /// (tickets then do not survive a restart; uploads still expire and fail as usual).
    pub secret: Option<Vec<u8>>,
    /// How often expired uploads are looked for. Default: 1 s.
    pub sweep_interval: Duration,
    /// `Cache-Control: private, max-age=...` of downloads (objects never change). Default:
    /// one year.
    pub download_max_age: Duration,
}

impl fmt::Debug for MediaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaConfig")
            .field("dir", &self.dir)
            .field("public_url", &self.public_url)
            .field("max_bytes", &self.max_bytes)
            .field("ticket_ttl", &self.ticket_ttl)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("sweep_interval", &self.sweep_interval)
            .field("download_max_age", &self.download_max_age)
            .finish()
    }
}

impl MediaConfig {
    /// Media staged under `dir`, served under `public_url`, with the defaults.
    pub fn new(dir: impl Into<PathBuf>, public_url: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            max_bytes: 2 * 1024 * 1024 * 1024,
            ticket_ttl: Duration::from_secs(15 * 60),
            secret: None,
            sweep_interval: Duration::from_secs(1),
            download_max_age: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// An object store on the local file system, rooted at `dir` (created if missing).
///
/// # Errors
/// When `dir` cannot be created or opened.
pub fn local_storage(dir: impl AsRef<Path>) -> std::io::Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir.as_ref())?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.as_ref())
        .map_err(std::io::Error::other)?;
    Ok(Arc::new(store))
}

/// The object store `url` names (as object_store's `parse_url`, which it uses):
///
/// - `file:///PATH`: the local file system under the absolute `PATH` (created if missing),
///   as [`local_storage`];
/// - `s3://BUCKET[/PREFIX][?KEY=VALUE&...]` (feature `s3`): S3 or an S3-compatible server,
///   objects under `PREFIX` when given. Settings come from the usual `AWS_*` variables
///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`...), then
///   from the query, whose keys are `object_store`'s S3 option names with or without their
///   `aws_` prefix: `endpoint=http://HOST:PORT` (an `http://` endpoint allows plain HTTP),
///   `region=R`, `skip_signature=true`... For example
///   `s3://media?endpoint=http://127.0.0.1:9010&region=us-east-1`.
///
/// # Errors
/// `InvalidInput` when `url` is not a URL, names another kind of store, has an unknown query
/// key, or is `s3://` in a build without the `s3` feature; otherwise what creating the
/// directory or building the client returns.
pub fn storage_from_url(url: &str) -> std::io::Result<Arc<dyn ObjectStore>> {
    use object_store::ObjectStoreScheme;

    let parsed = url::Url::parse(url)
        .map_err(|err| invalid_input(format!("{url:?} is not an object store URL: {err}")))?;
    let (scheme, prefix) =
        ObjectStoreScheme::parse(&parsed).map_err(|err| invalid_input(err.to_string()))?;
    match (scheme, parsed.scheme()) {
        (ObjectStoreScheme::Local, _) => {
            if parsed.query().is_some() {
                return Err(invalid_input("a file:// object store URL takes no options"));
            }
            let dir = parsed
                .to_file_path()
                .map_err(|()| invalid_input(format!("{url:?} names no local directory")))?;
            local_storage(dir)
        }
        (ObjectStoreScheme::AmazonS3, "s3") => s3_storage(&parsed, prefix),
        _ => Err(invalid_input(format!(
            "{url:?}: media objects go to file:///PATH or s3://BUCKET"
        ))),
    }
}

fn invalid_input(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message.into())
}

/// `s3://BUCKET[/PREFIX][?KEY=VALUE&...]` through `object_store::parse_url_opts`.
#[cfg(feature = "s3")]
fn s3_storage(
    url: &url::Url,
    prefix: object_store::path::Path,
) -> std::io::Result<Arc<dyn ObjectStore>> {
    use object_store::aws::AmazonS3ConfigKey;

    // What `AmazonS3Builder::from_env` reads, then the URL's options over it.
    let mut options: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key.starts_with("AWS_"))
        .collect();
    for (key, value) in url.query_pairs() {
        let known = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>();
        if known.is_err() {
            return Err(invalid_input(format!(
                "unknown S3 URL parameter {key:?} (endpoint, region, or another object_store S3 option)"
            )));
        }
        if matches!(known, Ok(AmazonS3ConfigKey::Endpoint)) && value.starts_with("http://") {
            options.push(("aws_allow_http".to_owned(), "true".to_owned()));
        }
        options.push((key.into_owned(), value.into_owned()));
    }
    let mut bucket = url.clone();
    bucket.set_query(None);
    let (store, _) =
        object_store::parse_url_opts(&bucket, options).map_err(std::io::Error::other)?;
    if prefix.as_ref().is_empty() {
        Ok(Arc::from(store))
    } else {
        Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store, prefix,
        )))
    }
}

#[cfg(not(feature = "s3"))]
fn s3_storage(
    _url: &url::Url,
    _prefix: object_store::path::Path,
) -> std::io::Result<Arc<dyn ObjectStore>> {
    Err(invalid_input(
        "s3:// media stores need the `s3` feature of messenger-socket, which this build lacks",
    ))
}

/// The media side of a node: config, ticket signer, storage, journal, uploads in progress.
pub(crate) struct MediaState {
    pub(crate) config: MediaConfig,
    pub(crate) signer: TicketSigner,
    pub(crate) storage: Arc<dyn ObjectStore>,
    pub(crate) journal: Journal,
    pub(crate) staging: PathBuf,
    busy: Mutex<HashSet<String>>,
}

impl fmt::Debug for MediaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaState")
            .field("config", &self.config)
            .field("storage", &self.storage.to_string())
            .finish_non_exhaustive()
    }
}

/// Marks one media entry's upload as running; dropped when the request ends.
pub(crate) struct BusyGuard<'a> {
    state: &'a MediaState,
    key: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.state
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl MediaState {
    pub(crate) fn open(
        config: MediaConfig,
        storage: Arc<dyn ObjectStore>,
    ) -> std::io::Result<Self> {
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => {
                use rand::RngCore;
                let mut secret = vec![0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                secret
            }
        };
        let staging = config.dir.join("staging");
        std::fs::create_dir_all(&staging)?;
        let journal = Journal::open(&config.dir.join("pending"))?;
        Ok(Self {
            signer: TicketSigner::new(&secret),
            storage,
            journal,
            staging,
            busy: Mutex::new(HashSet::new()),
            config,
        })
    }

    /// Claims the upload of `key`, unless a request is already uploading it.
    pub(crate) fn claim(&self, key: &str) -> Option<BusyGuard<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(key.to_owned()) {
            return None;
        }
        Some(BusyGuard {
            state: self,
            key: key.to_owned(),
        })
    }

    pub(crate) fn staging_path(&self, key: &str) -> PathBuf {
        self.staging.join(format!("{key}.part"))
    }

    pub(crate) fn upload_url(&self, message: &Message) -> String {
        format!(
            "{}/media/uploads/{}/{}",
            self.config.public_url, message.conversation, message.seq
        )
    }

    pub(crate) fn download_url(
        &self,
        conversation: &messenger_core::ConversationId,
        seq: Seq,
    ) -> String {
        format!(
            "{}/media/files/{conversation}/{seq}",
            self.config.public_url
        )
    }
}

/// The object's path in the store: `media/<conversation in hex>/<seq>`.
pub(crate) fn object_path(key: &str) -> object_store::path::Path {
    let (conversation, seq) = key.rsplit_once('-').unwrap_or((key, "0"));
    object_store::path::Path::from(format!("media/{conversation}/{seq}"))
}

impl<B: Backends> Engine<B> {
    /// Removes the bytes of a media message deleted for everyone from the object store. Best
    /// effort: the download endpoint refuses a deleted entry whatever the storage still holds.
    pub(crate) async fn forget_media(&self, message: &Message) {
        let Some(state) = self.media() else { return };
        let path = object_path(&pending::entry_key(&message.conversation, message.seq));
        match object_store::ObjectStoreExt::delete(&state.storage, &path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => {
                tracing::warn!(error = %err, %path, "cannot remove a deleted message's media");
            }
        }
    }

    /// Checks a `media` body a device sent and turns it into a pending media entry's body.
    pub(crate) fn accept_media(&self, media: NewMedia) -> Result<Body, Error> {
        let Some(state) = self.media() else {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "this server takes no media",
            ));
        };
        let max = state.config.max_bytes;
        if media.size == 0 {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "media size must be at least 1 byte",
            ));
        }
        if media.size > max {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!("media is {} bytes; the limit is {max}", media.size),
            ));
        }
        if media.name.trim().is_empty() {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "a media name must not be empty",
            ));
        }
        // Over its limit, as a text or a title over theirs: `too_large`.
        if media.name.len() > messenger_core::MAX_MEDIA_NAME_BYTES {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!(
                    "a media name has at most {} bytes",
                    messenger_core::MAX_MEDIA_NAME_BYTES
                ),
            ));
        }
        if !is_mime(&media.mime) {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                format!("{:?} is not a media type (type/subtype)", media.mime),
            ));
        }
        let sha256 = match media.sha256 {
            Some(hash) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(hash.to_ascii_lowercase())
            }
            Some(_) => {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    "sha256 must be 64 hex digits",
                ));
            }
            None => None,
        };
        Ok(Body::Media(Box::new(MediaBody {
            name: media.name,
            mime: media.mime.to_ascii_lowercase(),
            size: media.size,
            sha256,
            width: media.width,
            height: media.height,
            duration_ms: media.duration_ms,
            status: MediaStatus::Pending,
            url: None,
            reason: None,
            reply_to: None,
            reactions: Vec::new(),
        })))
    }
}

fn deadline_of(state: &MediaState, message: &Message) -> Timestamp {
    let ttl = u64::try_from(state.config.ticket_ttl.as_millis()).unwrap_or(u64::MAX);
    Timestamp(message.sent_at.as_millis().saturating_add(ttl))
}

impl<B: Backends> Engine<B> {
    /// Records a media entry's upload deadline in the journal. Called before the entry is
    /// appended (so a crash right after the append still leaves a deadline on disk) and again
    /// once it is stored (its seq may have changed on a conflict). A recorded seq that ends up
    /// holding no pending media entry is dropped by the sweeper.
    pub(crate) async fn record_pending_media(&self, message: &Message) {
        let Some(state) = self.media() else { return };
        if !matches!(&message.body, Body::Media(media) if media.status == MediaStatus::Pending) {
            return;
        }
        let entry = PendingUpload {
            conversation: message.conversation.clone(),
            seq: message.seq,
            deadline: deadline_of(state, message),
        };
        if let Err(err) = state.journal.insert(entry).await {
            tracing::warn!(error = %err, "cannot record a pending upload");
        }
    }

    /// The upload ticket of a stored media entry still pending (also for a retried send), after
    /// recording the pending upload in the journal. `None` for any other entry.
    pub(crate) async fn upload_ticket(&self, message: &Message) -> Option<UploadTicket> {
        let state = self.media()?;
        let Body::Media(media) = &message.body else {
            return None;
        };
        if media.status != MediaStatus::Pending {
            return None;
        }
        let expires_at = deadline_of(state, message);
        if expires_at <= Timestamp::now() {
            // The sweeper fails it; a retried send gets no ticket that is already dead.
            return None;
        }
        self.record_pending_media(message).await;
        let claims = TicketClaims::new(
            &message.conversation,
            message.seq,
            &message.sender,
            media.size,
            &media.mime,
            media.sha256.as_deref(),
            expires_at,
        );
        let ticket = match state.signer.sign(&claims) {
            Ok(ticket) => ticket,
            Err(err) => {
                tracing::error!(error = %err, "cannot sign an upload ticket");
                return None;
            }
        };
        Some(UploadTicket {
            url: state.upload_url(message),
            ticket,
            expires_at,
        })
    }
}

/// Fails every upload whose ticket expired, every [`MediaConfig::sweep_interval`], until
/// the node shuts down. Uploads pending at the last stop are in the journal, so the ones
/// that expired meanwhile fail on the first round.
pub async fn run_sweeper<B: Backends>(node: Engine<B>) {
    let Some(interval) = node.media().map(|state| state.config.sweep_interval) else {
        return;
    };
    let mut shutdown = node.shutdown_signal();
    loop {
        sweep(&node).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn sweep<B: Backends>(node: &Engine<B>) {
    let Some(state) = node.media() else { return };
    for overdue in state.journal.overdue(Timestamp::now()) {
        let key = pending::entry_key(&overdue.conversation, overdue.seq);
        // An upload finishing right now decides with the store's conditional write.
        let outcome = node
            .commit_media_status(
                &overdue.conversation,
                overdue.seq,
                MediaStatus::Failed,
                None,
                Some("upload expired".to_owned()),
            )
            .await;
        match outcome {
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    messenger_core::ErrorKind::NotFound | messenger_core::ErrorKind::InvalidRequest
                ) =>
            {
                tracing::warn!(error = %err, "a pending upload names no media entry; dropping it");
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot fail an expired upload; trying again");
                continue;
            }
        }
        state
            .journal
            .remove(&overdue.conversation, overdue.seq)
            .await;
        if state.claim(&key).is_some() {
            let _ = tokio::fs::remove_file(state.staging_path(&key)).await;
        }
    }
}

/// Whether `value` looks like `type/subtype`.
pub(crate) fn is_mime(value: &str) -> bool {
    let Some((kind, subtype)) = value.split_once('/') else {
        return false;
    };
    let token = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    token(kind) && token(subtype)
}

#[cfg(test)]
mod tests {
    use super::is_mime;

    #[test]
    fn mime_types_are_tokens() {
        assert!(is_mime("image/png"));
        assert!(is_mime(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ));
        assert!(!is_mime("image"));
        assert!(!is_mime("image/png; charset=x"));
        assert!(!is_mime("/png"));
    }
}
