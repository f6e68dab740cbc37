//! A terminal chat client for the messenger reference server.
//!
//! ```text
//! terminal-client --url ws://127.0.0.1:8080/ws --token alice:phone
//! ```
//!
//! Type `/help` for the commands; any other line is sent to the current conversation.

use std::time::Duration;

use clap::Parser;
use messenger_core::{Body, ConversationId, Error, Message, Role, Seq, Timestamp, UserId};
use messenger_socket::client::{Client, ClientConfig, ClientEvent, HistoryRange};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A terminal chat client for the messenger reference server"
)]
struct Args {
    /// The server's WebSocket endpoint.
    #[arg(long, env = "MESSENGER_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The token (in the server's dev auth mode: `user:device`).
    #[arg(long, env = "MESSENGER_TOKEN")]
    token: String,
}

const HELP: &str = "\
commands:
  /dm USER               open the direct chat with USER and switch to it
  /group TITLE USER...   create a group and switch to it
  /add USER...           add users to the current group
  /remove USER           remove a user from the current group
  /leave                 leave the current group
  /role USER ROLE        set a role (member, admin, owner)
  /switch CONV           make CONV the current conversation
  /list                  list conversations with unread counts
  /history [N]           show the last N entries (default 20)
  /lastseen USER...      show online state and last seen
  /watch USER...         get presence updates for users
  /read                  mark the current conversation read
  /reply N TEXT          reply to message #N
  /edit N TEXT           replace the text of your message #N
  /delete N              delete message #N for everyone
  /react N EMOJI         react to message #N
  /unreact N EMOJI       take your reaction back
  /quit                  leave the program
anything else is sent as text to the current conversation";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let (client, mut events) = Client::connect(ClientConfig::new(args.url, args.token)).await?;
    println!(
        "connected as {}/{} — /help for commands",
        client.user(),
        client.device()
    );
    let mut current: Option<ConversationId> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(ClientEvent::Closed { reason }) => {
                    match reason {
                        Some(reason) => println!("* closed: {reason}"),
                        None => println!("* closed"),
                    }
                    return Ok(());
                }
                Some(event) => print_event(&event),
                None => return Ok(()),
            },
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let line = line.trim();
                    if line == "/quit" {
                        break;
                    }
                    if !line.is_empty() {
                        if let Err(err) = command(&client, &mut current, line).await {
                            println!("! {err}");
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    client.close().await;
    Ok(())
}

/// Runs one input line.
async fn command(
    client: &Client,
    current: &mut Option<ConversationId>,
    line: &str,
) -> Result<(), Error> {
    let mut words = line.split_whitespace();
    let Some(name) = line.starts_with('/').then(|| words.next()).flatten() else {
        let conversation = require(current)?;
        // Sends run in the background so the prompt stays responsive while offline.
        let pending = client.send_text(&conversation, line);
        tokio::spawn(async move {
            if let Err(err) = pending.await {
                println!("! not sent: {err}");
            }
        });
        return Ok(());
    };
    let rest: Vec<&str> = words.collect();
    match (name, rest.as_slice()) {
        ("/help", _) => println!("{HELP}"),
        ("/dm", [user]) => {
            let info = client.open_direct(&UserId::new(user)?).await?;
            println!("* now in {}", info.conversation.id);
            *current = Some(info.conversation.id);
        }
        ("/group", [title, users @ ..]) => {
            let info = client.create_group(*title, &users_of(users)?).await?;
            println!("* created group {} ({})", info.conversation.id, title);
            *current = Some(info.conversation.id);
        }
        ("/add", users) if !users.is_empty() => {
            let seq = client
                .add_members(&require(current)?, &users_of(users)?, None)
                .await?;
            println!("* added at #{seq}");
        }
        ("/remove", [user]) => {
            let seq = client
                .remove_member(&require(current)?, &UserId::new(user)?)
                .await?;
            println!("* removed at #{seq}");
        }
        ("/leave", []) => {
            let seq = client.leave(&require(current)?).await?;
            println!("* left at #{seq}");
            *current = None;
        }
        ("/role", [user, role]) => {
            let Some(role) = Role::parse(role) else {
                println!("! roles: member, admin, owner");
                return Ok(());
            };
            let seq = client
                .set_role(&require(current)?, &UserId::new(user)?, role)
                .await?;
            println!("* role changed at #{seq}");
        }
        ("/switch", [conversation]) => {
            *current = Some(ConversationId::new(conversation)?);
            println!("* now in {conversation}");
        }
        ("/list", []) => {
            for summary in client.conversations().await? {
                let conversation = &summary.conversation;
                let title = conversation.title.as_deref().unwrap_or("");
                println!(
                    "  {} {title} (head #{}, {} unread)",
                    conversation.id, summary.head, summary.unread
                );
            }
        }
        ("/history", args) => {
            let limit = match args {
                [] => 20,
                [n] => n.parse().unwrap_or(20),
                _ => 20,
            };
            let conversation = require(current)?;
            let mut page = client
                .history(&conversation, HistoryRange::Latest, Some(limit))
                .await?;
            page.messages.sort_by_key(|message| message.seq);
            for message in &page.messages {
                print_message(message);
            }
        }
        ("/lastseen", users) if !users.is_empty() => {
            for presence in client.last_seen(&users_of(users)?).await? {
                println!(
                    "  {} {}",
                    presence.user,
                    online_text(presence.online, presence.last_seen)
                );
            }
        }
        ("/watch", users) if !users.is_empty() => {
            client.subscribe_presence(&users_of(users)?).await?;
            println!("* watching {}", users.join(" "));
        }
        ("/read", []) => {
            let conversation = require(current)?;
            let seq = client
                .cursors()
                .get(&conversation)
                .copied()
                .unwrap_or_default();
            client.read(&conversation, seq).await?;
            println!("* read up to #{seq}");
        }
        ("/reply", [seq, text @ ..]) if !text.is_empty() => {
            let pending = client.reply_text(&require(current)?, seq_of(seq)?, text.join(" "));
            report(pending, "reply");
        }
        ("/edit", [seq, text @ ..]) if !text.is_empty() => {
            let pending = client.edit(&require(current)?, seq_of(seq)?, text.join(" "));
            report(pending, "edit");
        }
        ("/react", [seq, emoji]) => {
            let pending = client.react(&require(current)?, seq_of(seq)?, *emoji);
            report(pending, "reaction");
        }
        ("/unreact", [seq, emoji]) => {
            let pending = client.unreact(&require(current)?, seq_of(seq)?, *emoji);
            report(pending, "unreaction");
        }
        ("/delete", [seq]) => {
            let pending = client.delete(&require(current)?, seq_of(seq)?);
            report(pending, "delete");
        }
        _ => println!("! unknown command or wrong arguments; /help lists them"),
    }
    Ok(())
}

/// Waits for a send in the background (the prompt stays responsive while offline).
fn report(
    pending: impl std::future::Future<Output = Result<messenger_socket::client::Sent, Error>>
    + Send
    + 'static,
    what: &'static str,
) {
    tokio::spawn(async move {
        if let Err(err) = pending.await {
            println!("! {what} not sent: {err}");
        }
    });
}

fn seq_of(word: &str) -> Result<Seq, Error> {
    word.trim_start_matches('#').parse().map(Seq).map_err(|_| {
        Error::new(
            messenger_core::ErrorKind::InvalidRequest,
            format!("{word:?} is not a message number"),
        )
    })
}

fn require(current: &Option<ConversationId>) -> Result<ConversationId, Error> {
    current.clone().ok_or_else(|| {
        Error::new(
            messenger_core::ErrorKind::InvalidRequest,
            "no current conversation: /dm, /group or /switch first",
        )
    })
}

fn users_of(names: &[&str]) -> Result<Vec<UserId>, Error> {
    names
        .iter()
        .map(|name| UserId::new(name).map_err(Error::from))
        .collect()
}

fn print_event(event: &ClientEvent) {
    match event {
        ClientEvent::Message(message) => print_message(message),
        ClientEvent::Receipt {
            conversation,
            receipts,
        } => println!(
            "[{conversation}] {} delivered #{} read #{}",
            receipts.user, receipts.delivered, receipts.read
        ),
        ClientEvent::Typing {
            conversation,
            user,
            active,
            ..
        } => {
            let what = if *active {
                "is typing…"
            } else {
                "stopped typing"
            };
            println!("[{conversation}] {user} {what}");
        }
        ClientEvent::Presence {
            user,
            online,
            last_seen,
        } => println!("* {user} {}", online_text(*online, *last_seen)),
        ClientEvent::Synced(conversations) => {
            let unread: u64 = conversations.iter().map(|summary| summary.unread).sum();
            println!(
                "* synced: {} conversations, {unread} unread",
                conversations.len()
            );
        }
        ClientEvent::Connected { user, device, .. } => println!("* online as {user}/{device}"),
        ClientEvent::Disconnected { reason, retry_in } => match retry_in {
            Some(delay) => println!("* disconnected ({reason}); retrying in {delay:?}"),
            None => println!("* disconnected ({reason}); restart with a fresh token"),
        },
        other => println!("* {other:?}"),
    }
}

fn print_message(message: &Message) {
    let prefix = format!(
        "[{} #{}] {}",
        message.conversation, message.seq, message.sender
    );
    match &message.body {
        Body::Text {
            text,
            reply_to,
            edits,
            reactions,
            ..
        } => {
            if let Some(quote) = reply_to {
                println!(
                    "{prefix} ↳ #{} {}: {}",
                    quote.seq, quote.sender, quote.excerpt
                );
            }
            let edited = if *edits > 0 { " (edited)" } else { "" };
            println!("{prefix}: {text}{edited}{}", reactions_text(reactions));
        }
        Body::Edit { target, text } => println!("{prefix} edited #{target}: {text}"),
        Body::React { target, emoji } => println!("{prefix} reacted {emoji} to #{target}"),
        Body::Unreact { target, emoji } => println!("{prefix} took back {emoji} on #{target}"),
        Body::Delete { target } => println!("{prefix} deleted #{target}"),
        Body::Deleted { by, .. } => println!("{prefix}: (deleted by {by})"),
        Body::GroupCreated { title, members } => {
            let names: Vec<String> = members.iter().map(|m| m.user.to_string()).collect();
            println!("{prefix} created \"{title}\" with {}", names.join(", "));
        }
        Body::MembersAdded { users, role } => {
            let names: Vec<String> = users.iter().map(ToString::to_string).collect();
            println!("{prefix} added {} as {}", names.join(", "), role.as_str());
        }
        Body::MemberRemoved { user } => println!("{prefix} removed {user}"),
        Body::MemberLeft => println!("{prefix} left"),
        Body::RoleChanged { user, role } => {
            println!("{prefix} made {user} {}", role.as_str());
        }
        Body::Void => {}
        other => println!("{prefix}: {other:?}"),
    }
}

fn reactions_text(reactions: &[messenger_core::Reaction]) -> String {
    let counts: Vec<String> = reactions
        .iter()
        .map(|reaction| format!("{} {}", reaction.emoji, reaction.users.len()))
        .collect();
    if counts.is_empty() {
        String::new()
    } else {
        format!("  [{}]", counts.join(", "))
    }
}

fn online_text(online: bool, last_seen: Option<Timestamp>) -> String {
    if online {
        return "is online".into();
    }
    match last_seen {
        Some(at) => {
            let ago = Timestamp::now().as_millis().saturating_sub(at.as_millis()) / 1000;
            if ago == 0 {
                "was last seen just now".into()
            } else {
                format!("was last seen {:?} ago", Duration::from_secs(ago))
            }
        }
        None => "has never been seen".into(),
    }
}
