//! The pure protocol layer of Halley: names, ids and messages, with no I/O.
//!
//! - [`Channel`] is a validated, Bayeux-shaped channel name (`/chat/room`) that a message can be
//!   published to; [`Pattern`] is what a subscriber asks for, which may end in the wildcards `*`
//!   (one segment) or `**` (any depth).
//! - [`MessageId`] is the resumable position of a message: the history epoch it belongs to and its
//!   offset in that epoch. Clients treat its text form as opaque.
//! - [`Message`] is `{channel, id, data}` with `data` kept as compact JSON text, so that fan-out to
//!   thousands of subscribers encodes nothing twice; [`Payload`] is the data before it has an id.
//! - [`bayeux`] is the Bayeux 1.0 message model ([`bayeux::BayeuxMessage`]), batch parsing and
//!   the `code:args:message` errors.
//! - [`inbox`] derives a client's private address from its secret.
//!
//! Invariant: this crate does no I/O and knows nothing of tokio, hyper or Redis, so that everything
//! in it can be unit-tested and fuzzed in isolation.

pub mod bayeux;
mod channel;
mod id;
pub mod inbox;
mod message;

pub use channel::{CHANNEL_MAX_LEN, Channel, ChannelError, Pattern};
pub use id::{IdError, MessageId};
pub use message::{
    BINARY_KEY, Binary, MAX_CONTENT_TYPE, MAX_DEPTH, MAX_TYPE_LEN, Message, Meta, Payload,
    PayloadError, is_binary_type, push_json_string, valid_type,
};
