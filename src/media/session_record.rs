//! A call's media as a plain record, for the call-state journal that lets calls survive a
//! restart (`media.handover`): [`CallMedia::record`] writes down what the data plane needs to
//! relay the call again and what the SDP rewrite needs to go on answering offers consistently
//! (the same ports, stream ids, `o=` session id and version, last description sent);
//! [`CallMedia::adopt`] rebuilds the call's media from it in a new process, claiming the exact
//! ports.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{CallMedia, LegMedia, MediaCtx, Side};
use crate::media::{LatchMode, StreamId};

/// Everything [`CallMedia::adopt`] needs to rebuild a call's media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The first stream id of each media line (A RTP, A RTCP, B RTP, B RTCP follow it).
    pub line_ids: Vec<StreamId>,
    /// The media type of each line (`audio`, `image`, ...).
    pub kinds: Vec<String>,
    /// Whether each line is enabled, from the latest offer.
    pub enabled: Vec<bool>,
    pub latch: LatchMode,
    /// Leg A, then leg B.
    pub legs: [LegRecord; 2],
}

/// One leg's media in a [`MediaRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegRecord {
    pub local_ip: IpAddr,
    pub advertised: Option<IpAddr>,
    pub signalling_ip: IpAddr,
    pub session_id: u64,
    pub session_version: u64,
    /// The description last sent toward this leg (SDP is text; non-UTF-8 bytes are replaced).
    pub last_sdp: Option<String>,
    /// Per media line: the pair's RTP port and where its RTP and RTCP streams send.
    pub pairs: Vec<Option<PairRecord>>,
}

/// One media line's port pair on one leg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub port: u16,
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    /// The RTP clock rate of the negotiated codec (0: unknown), for jitter.
    pub clock_rate: u32,
}

/// Why a recorded call's media could not be adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error("media port {0} is outside the range or already taken")]
    PortTaken(u16),
    #[error("the record's media lines do not agree with each other")]
    Inconsistent,
}

impl CallMedia {
    /// The call's media as a record for the call-state journal.
    pub fn record(&self) -> MediaRecord {
        let leg = |l: &LegMedia| LegRecord {
            local_ip: l.local_ip,
            advertised: l.advertised,
            signalling_ip: l.signalling_ip,
            session_id: l.session_id,
            session_version: l.session_version,
            last_sdp: l
                .last_sdp
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            pairs: l
                .pairs
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| PairRecord {
                        port: p.port,
                        rtp: p.rtp.remote(),
                        rtcp: p.rtcp.remote(),
                        clock_rate: p.rtp.clock_rate(),
                    })
                })
                .collect(),
        };
        MediaRecord {
            line_ids: self.line_ids.clone(),
            kinds: self.kinds.clone(),
            enabled: self.enabled.clone(),
            latch: self.latch_mode,
            legs: [leg(&self.legs[0]), leg(&self.legs[1])],
        }
    }

    /// Rebuilds a call's media from its record: claims its exact ports (all or none), queues
    /// `Command::Add` for every stream with the recorded destinations (learning re-opens, so
    /// the peers latch again on their first packet), and keeps the stream ids out of the
    /// counter's way.
    pub fn adopt(rec: &MediaRecord, ctx: &mut MediaCtx) -> Result<CallMedia, AdoptError> {
        let lines = rec.line_ids.len();
        if rec.kinds.len() != lines
            || rec.enabled.len() != lines
            || rec.legs.iter().any(|l| l.pairs.len() > lines)
        {
            return Err(AdoptError::Inconsistent);
        }
        let ports: Vec<u16> = rec
            .legs
            .iter()
            .flat_map(|l| l.pairs.iter().flatten().map(|p| p.port))
            .collect();
        for (i, &port) in ports.iter().enumerate() {
            if port % 2 != 0 || !ctx.pool.claim(port) {
                ports[..i].iter().for_each(|&p| ctx.pool.release(p));
                return Err(AdoptError::PortTaken(port));
            }
        }
        let mut media = CallMedia {
            line_ids: rec.line_ids.clone(),
            kinds: rec.kinds.clone(),
            legs: [0, 1].map(|i| {
                let l = &rec.legs[i];
                LegMedia {
                    advertised: l.advertised,
                    session_id: l.session_id,
                    session_version: l.session_version,
                    last_sdp: l.last_sdp.as_ref().map(|s| s.clone().into_bytes()),
                    ..LegMedia::new(l.local_ip, l.signalling_ip)
                }
            }),
            enabled: rec.enabled.clone(),
            latch_mode: rec.latch,
        };
        if let Some(&last) = rec.line_ids.iter().max() {
            *ctx.next_stream = (*ctx.next_stream).max(last + 4);
        }
        for (side, l) in [(Side::A, &rec.legs[0]), (Side::B, &rec.legs[1])] {
            for (line, pair) in l.pairs.iter().enumerate() {
                if let Some(p) = pair {
                    media.install_pair(side, line, p.port, ctx);
                    let installed = media.legs[side.index()].pairs[line]
                        .as_ref()
                        .expect("installed");
                    installed.rtp.set_clock_rate(p.clock_rate);
                }
            }
            let remotes: Vec<_> = l
                .pairs
                .iter()
                .map(|p| p.as_ref().map(|p| [p.rtp, p.rtcp]))
                .collect();
            media.restore(side, &remotes, ctx);
        }
        Ok(media)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::session::Resources;
    use crate::media::Command;
    use crate::sdp::Sdp;
    use std::time::Instant;

    const OFFER: &str = "v=0\r\no=a 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
    const ANSWER: &str = "v=0\r\no=b 1 1 IN IP4 10.1.0.2\r\ns=-\r\nc=IN IP4 10.1.0.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answered(res: &mut Resources) -> CallMedia {
        let now = Instant::now();
        let mut m = CallMedia::new(
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.1.0.1"),
            ip("10.1.0.2"),
        );
        m.anchor(
            Side::A,
            &Sdp::parse(OFFER.as_bytes()).unwrap(),
            &mut res.ctx(now),
        )
        .unwrap();
        m.anchor(
            Side::B,
            &Sdp::parse(ANSWER.as_bytes()).unwrap(),
            &mut res.ctx(now),
        )
        .unwrap();
        m
    }

    #[test]
    fn adopted_media_keeps_ports_ids_and_destinations() {
        let old = Resources::shared(30000, 30099);
        let rec = answered(&mut old.borrow_mut()).record();
        let text = serde_json::to_string(&rec).unwrap();
        let rec: MediaRecord = serde_json::from_str(&text).unwrap();

        let new = Resources::shared(30000, 30099);
        let mut res = new.borrow_mut();
        let media = CallMedia::adopt(&rec, &mut res.ctx(Instant::now())).unwrap();
        assert_eq!(media.record(), rec, "a record survives adoption unchanged");
        assert_eq!(res.pool.free(), res.pool.total() - 2);
        let commands = res.take_commands();
        let added: Vec<(StreamId, SocketAddr)> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Add(s) => Some((s.id, s.local)),
                _ => None,
            })
            .collect();
        assert_eq!(
            added,
            [
                (1, "10.0.0.1:30000".parse().unwrap()),
                (2, "10.0.0.1:30001".parse().unwrap()),
                (3, "10.1.0.1:30002".parse().unwrap()),
                (4, "10.1.0.1:30003".parse().unwrap()),
            ]
        );
        assert!(commands.iter().any(|c| matches!(c,
            Command::Renegotiate { id: 3, sdp: Some(a) } if *a == "10.1.0.2:5000".parse().unwrap())));
        // A new call does not reuse the adopted ports or stream ids.
        drop(res);
        let other = answered(&mut new.borrow_mut()).record();
        assert_eq!(other.line_ids, [5]);
        assert!(other.legs[0].pairs[0].as_ref().unwrap().port >= 30004);
    }

    #[test]
    fn a_taken_port_refuses_the_whole_call() {
        let old = Resources::shared(30000, 30099);
        let rec = answered(&mut old.borrow_mut()).record();
        let new = Resources::shared(30000, 30099);
        let mut res = new.borrow_mut();
        assert!(res.pool.claim(30002));
        let err = CallMedia::adopt(&rec, &mut res.ctx(Instant::now())).unwrap_err();
        assert_eq!(err, AdoptError::PortTaken(30002));
        assert_eq!(res.pool.free(), res.pool.total() - 1, "30000 given back");
        assert!(res.take_commands().is_empty());
        let outside = Resources::shared(40000, 40099);
        let err = CallMedia::adopt(&rec, &mut outside.borrow_mut().ctx(Instant::now()));
        assert_eq!(err.unwrap_err(), AdoptError::PortTaken(30000));
    }
}
