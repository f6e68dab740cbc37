//! Conversations and their members: direct conversations, groups, and membership changes,
//! which are sequenced into the conversation like messages so every member sees joins and
//! leaves in the same order as messages.

use std::sync::Arc;

use messenger_core::auth::Identity;
use messenger_core::protocol::ErrorCode;
use messenger_core::store::{ConversationInfo, CreateConversation, GetConversation};
use messenger_core::{
    Body, Conversation, ConversationId, ConversationKind, Error, Member, Message, Role, Seq,
    Timestamp, UserId, call,
};

use super::pipeline::Pending;
use super::{
    AddMembers, Backends, CreateGroup, Engine, LeaveGroup, OpenDirect, RemoveMember, SetRole,
    random_client_msg_id, random_suffix,
};

impl<B: Backends> Engine<B> {
    /// Appends a membership change as the next entry of `info`'s conversation and fans it out
    /// to the members (and `extra_recipients`: users just added).
    async fn commit_change(
        &self,
        actor: &Identity,
        info: &ConversationInfo,
        body: Body,
        extra_recipients: &[UserId],
    ) -> Result<Arc<Message>, Error> {
        let conversation = info.conversation.id.clone();
        let seq = self.next_seq(&conversation).await?;
        let mut recipients: Vec<UserId> = info.members.iter().map(|m| m.user.clone()).collect();
        for user in extra_recipients {
            if !recipients.contains(user) {
                recipients.push(user.clone());
            }
        }
        let pending = Pending {
            message: Arc::new(Message {
                conversation,
                seq,
                sender: actor.user.clone(),
                sender_device: actor.device.clone(),
                client_msg_id: random_client_msg_id("op")?,
                sent_at: Timestamp::now(),
                body,
            }),
            recipients: recipients.into(),
            amendment: None,
        };
        let mut stored = self.store_pending(pending).await?;
        self.deliver_stored(&mut stored).await;
        Ok(stored.message)
    }

    /// The conversation as stored now (not from the cache).
    pub(crate) async fn fresh_conversation(
        &self,
        id: &ConversationId,
    ) -> Result<ConversationInfo, Error> {
        call(
            self.services().store(),
            GetConversation {
                conversation: id.clone(),
            },
        )
        .await?
        .ok_or_else(|| Error::refused(ErrorCode::NotFound, format!("no conversation {id}")))
    }

    pub(crate) async fn open_direct(&self, request: OpenDirect) -> Result<ConversationInfo, Error> {
        let OpenDirect { actor, other } = request;
        let id = ConversationId::direct(&actor.user, &other)?;
        let members = vec![
            Member {
                user: actor.user.clone(),
                role: Role::Member,
            },
            Member {
                user: other,
                role: Role::Member,
            },
        ];
        call(
            self.services().store(),
            CreateConversation {
                conversation: Conversation {
                    id: id.clone(),
                    kind: ConversationKind::Direct,
                    title: None,
                    created_by: actor.user.clone(),
                    created_at: Timestamp::now(),
                },
                members,
            },
        )
        .await?;
        self.invalidate(&id);
        self.fresh_conversation(&id).await
    }

    pub(crate) async fn create_group(
        &self,
        request: CreateGroup,
    ) -> Result<ConversationInfo, Error> {
        let CreateGroup {
            actor,
            title,
            members: others,
        } = request;
        let limits = &self.config().limits;
        if title.is_empty() {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "a group needs a title",
            ));
        }
        if title.len() > messenger_core::MAX_TITLE_BYTES {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!(
                    "a title has at most {} bytes",
                    messenger_core::MAX_TITLE_BYTES
                ),
            ));
        }
        let mut members = vec![Member {
            user: actor.user.clone(),
            role: Role::Owner,
        }];
        for user in others {
            if !members.iter().any(|m| m.user == user) {
                members.push(Member {
                    user,
                    role: Role::Member,
                });
            }
        }
        if members.len() > limits.max_group_members {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!("a group has at most {} members", limits.max_group_members),
            ));
        }
        let id = ConversationId::new(format!("g:{}", random_suffix()))?;
        let conversation = Conversation {
            id: id.clone(),
            kind: ConversationKind::Group,
            title: Some(title.clone()),
            created_by: actor.user.clone(),
            created_at: Timestamp::now(),
        };
        call(
            self.services().store(),
            CreateConversation {
                conversation: conversation.clone(),
                members: members.clone(),
            },
        )
        .await?;
        let info = ConversationInfo {
            conversation,
            members: members.clone(),
            head: Seq::ZERO,
        };
        self.commit_change(&actor, &info, Body::GroupCreated { title, members }, &[])
            .await?;
        self.fresh_conversation(&id).await
    }

    /// A group `actor` is a member of, read fresh (membership changes never trust the cache).
    async fn group(
        &self,
        actor: &Identity,
        id: &ConversationId,
    ) -> Result<(Arc<ConversationInfo>, Role), Error> {
        self.invalidate(id);
        let (info, role) = self.membership(id, &actor.user).await?;
        if info.conversation.kind != ConversationKind::Group {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "direct conversations have no membership changes",
            ));
        }
        Ok((info, role))
    }

    pub(crate) async fn add_members(&self, request: AddMembers) -> Result<Seq, Error> {
        let AddMembers {
            actor,
            conversation,
            users,
            role,
        } = request;
        if role == Role::Owner {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "members are added as member or admin; ownership moves with set_role",
            ));
        }
        let (info, my_role) = self.group(&actor, &conversation).await?;
        let allowed = match role {
            Role::Member => my_role >= Role::Admin,
            Role::Admin | Role::Owner => my_role == Role::Owner,
        };
        if !allowed {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                format!("a {} cannot add a {}", my_role.as_str(), role.as_str()),
            ));
        }
        let mut new_users: Vec<UserId> = Vec::new();
        for user in users {
            if info.role_of(&user).is_some() {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("{user} is already a member"),
                ));
            }
            if !new_users.contains(&user) {
                new_users.push(user);
            }
        }
        if new_users.is_empty() {
            return Err(Error::refused(ErrorCode::InvalidRequest, "no users to add"));
        }
        let limit = self.config().limits.max_group_members;
        if info.members.len() + new_users.len() > limit {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!("a group has at most {limit} members"),
            ));
        }
        let body = Body::MembersAdded {
            users: new_users.clone(),
            role,
        };
        Ok(self
            .commit_change(&actor, &info, body, &new_users)
            .await?
            .seq)
    }

    pub(crate) async fn remove_member(&self, request: RemoveMember) -> Result<Seq, Error> {
        let RemoveMember {
            actor,
            conversation,
            user,
        } = request;
        let (info, my_role) = self.group(&actor, &conversation).await?;
        if user == actor.user {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "use leave to leave a group",
            ));
        }
        let Some(their_role) = info.role_of(&user) else {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                format!("{user} is not a member"),
            ));
        };
        let allowed = match my_role {
            Role::Owner => true,
            Role::Admin => their_role == Role::Member,
            Role::Member => false,
        };
        if !allowed {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                format!(
                    "a {} cannot remove a {}",
                    my_role.as_str(),
                    their_role.as_str()
                ),
            ));
        }
        let body = Body::MemberRemoved { user };
        Ok(self.commit_change(&actor, &info, body, &[]).await?.seq)
    }

    pub(crate) async fn leave(&self, request: LeaveGroup) -> Result<Seq, Error> {
        let LeaveGroup {
            actor,
            conversation,
        } = request;
        let (info, my_role) = self.group(&actor, &conversation).await?;
        if my_role == Role::Owner && info.members.len() > 1 {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "the owner must transfer ownership (set_role ... owner) before leaving",
            ));
        }
        Ok(self
            .commit_change(&actor, &info, Body::MemberLeft, &[])
            .await?
            .seq)
    }

    pub(crate) async fn set_role(&self, request: SetRole) -> Result<Seq, Error> {
        let SetRole {
            actor,
            conversation,
            user,
            role,
        } = request;
        let (info, my_role) = self.group(&actor, &conversation).await?;
        if my_role != Role::Owner {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "only the owner changes roles",
            ));
        }
        if user == actor.user {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "the owner's role changes by transferring ownership",
            ));
        }
        match info.role_of(&user) {
            None => {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("{user} is not a member"),
                ));
            }
            // A change that changes nothing is refused, as adding an existing member is: it
            // would put an entry in every member's log (and unread count) that says nothing.
            Some(current) if current == role => {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("{user} is already {}", role.as_str()),
                ));
            }
            Some(_) => {}
        }
        let body = Body::RoleChanged { user, role };
        Ok(self.commit_change(&actor, &info, body, &[]).await?.seq)
    }
}
