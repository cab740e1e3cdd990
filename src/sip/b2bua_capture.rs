//! What the HEP capture (`signalling::hep`) asks of the B2BUA: the running configuration, whose
//! trunks say where a peer's messages are captured, and the Call-ID that correlates a media
//! stream's RTCP with the SIP of its call leg.
//!
//! A child module of `b2bua` (it reaches the core's fields) in its own file.

use std::sync::Arc;

use super::B2bua;
use crate::config::Config;
use crate::media::session::Side;
use crate::media::StreamId;

impl B2bua {
    /// The running configuration: the trunks in their slots, with the peers DNS resolved (what
    /// the HEP capture looks a message's trunk up in).
    pub fn running_config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The Call-ID of the leg whose peer sends to media stream `stream` (the correlation id of
    /// the RTCP captured on it), when the stream is one of a SIP call's.
    pub fn call_id_of_stream(&self, stream: StreamId) -> Option<&str> {
        self.calls.values().find_map(|c| {
            c.media.side_of(stream).map(|side| match side {
                Side::A => c.a.call_id.as_str(),
                Side::B => c.b.call_id.as_str(),
            })
        })
    }
}
