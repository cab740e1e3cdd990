//! The NG protocol server fed raw datagrams, as Kamailio's rtpengine module sends them: every
//! command, the retransmission cache, load limit, and malformed input answered with errors.

mod sansio;

use std::time::{Duration, SystemTime};

use mediagate::control::bencode::Value;
use mediagate::media::Command;
use sansio::ng::{answer, bstr, offer, result, sdp_of, Ng, ANSWER_SDP, OFFER_SDP};

#[test]
fn ping() {
    let mut ng = Ng::new();
    assert_eq!(result(&ng.send(b"d7:command4:pinge")), "pong");
}

#[test]
fn offer_answer_query_delete() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    let direction = "9:directionl8:internal8:externale";
    let r = ng.send(&offer("call-1", direction));
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_callee = sdp_of(&r);
    let m = &to_callee.media()[0];
    assert_eq!(
        m.rtp.ip().to_string(),
        "203.0.113.5",
        "external interface advertises its NAT address"
    );
    let Some(Value::Bytes(raw)) = r.get("sdp") else {
        unreachable!()
    };
    let text = String::from_utf8_lossy(raw);
    assert!(
        !text.contains("rtcp-mux") && !text.contains("ice-ufrag"),
        "{text}"
    );
    assert!(
        text.contains("a=rtpmap:8 PCMA/8000"),
        "unknown lines kept: {text}"
    );

    let r = ng.send(&answer("call-1"));
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_caller = sdp_of(&r);
    assert_eq!(to_caller.media()[0].rtp.ip().to_string(), "10.99.1.1");
    assert_eq!(ng.ports_free(), total - 2);

    let q = ng.send(b"d7:call-id6:call-17:command5:querye");
    assert_eq!(result(&q), "ok", "{q:?}");
    let tags = q.get("tags").expect("tags");
    for tag in ["ft", "tt"] {
        let t = tags
            .get(tag)
            .unwrap_or_else(|| panic!("tag {tag} in {q:?}"));
        let Some(Value::List(medias)) = t.get("medias") else {
            panic!("medias")
        };
        let Some(Value::List(streams)) = medias[0].get("streams") else {
            panic!("streams")
        };
        assert_eq!(streams.len(), 2, "RTP and RTCP");
        assert!(
            streams[0]
                .get("local port")
                .and_then(Value::as_int)
                .unwrap()
                >= 30000
        );
        assert!(streams[0]
            .get("stats")
            .and_then(|s| s.get("packets"))
            .is_some());
    }
    assert!(q.get("totals").and_then(|t| t.get("RTP")).is_some());

    let list = ng.send(b"d7:command4:liste");
    assert_eq!(list.get("calls").map(Value::strings), Some(vec!["call-1"]));

    let d = ng.send(b"d7:call-id6:call-17:command6:deletee");
    assert_eq!(result(&d), "ok");
    assert_eq!(ng.ports_free(), total, "ports back in the pool at once");
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-17:command5:querye")),
        "error"
    );
    let again = ng.send(b"d7:call-id6:call-17:command6:deletee");
    assert_eq!(result(&again), "ok");
    assert!(
        again.get("warning").is_some(),
        "unknown call on delete: ok with a warning"
    );
    // The /metrics counters: one call created (the answer re-uses it), one released (the
    // second delete found nothing).
    let t = ng.server.totals();
    assert_eq!((t.calls_created, t.calls_deleted), (1, 1));
    assert_eq!(
        (t.offers, t.answers, t.deletes),
        (1, 1, 1),
        "deletes of known calls"
    );
}

#[test]
fn retransmission_is_answered_from_the_cache() {
    let mut ng = Ng::new();
    let first = ng.send_with("same", &offer("call-r", ""));
    let free = ng.ports_free();
    let second = ng.send_with("same", &offer("call-r", ""));
    assert_eq!(first, second);
    assert_eq!(ng.ports_free(), free, "not executed twice");
    let commands: Vec<Command> = ng.media.borrow_mut().take_commands();
    let adds = commands
        .iter()
        .filter(|c| matches!(c, Command::Add(_)))
        .count();
    assert_eq!(adds, 4, "one call's streams: RTP and RTCP on each side");
}

#[test]
fn delete_delay_keeps_the_call_until_it_expires() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    ng.send(&offer("call-d", ""));
    let r = ng.send(b"d7:call-id6:call-d7:command6:delete12:delete-delayi2ee");
    assert_eq!(result(&r), "ok");
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-d7:command5:querye")),
        "ok",
        "still there"
    );
    ng.now += Duration::from_secs(3);
    ng.server.handle_timeout(ng.now);
    assert_eq!(ng.ports_free(), total);
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-d7:command5:querye")),
        "error"
    );
}

#[test]
fn load_limit_when_over_max_calls() {
    let mut ng = Ng::new();
    assert_eq!(result(&ng.send(&offer("a", ""))), "ok");
    assert_eq!(result(&ng.send(&offer("b", ""))), "ok");
    assert_eq!(result(&ng.send(&offer("c", ""))), "load limit");
}

#[test]
fn bad_input_gets_error_replies_and_leaves_nothing_behind() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"d7:command", "decode"),
        (b"le", "dictionary"),
        (b"d4:spam4:eggse", "command"),
        (b"d7:command5:bogose", "Unrecognized"),
        (b"d7:command5:offere", "call-id"),
        (b"d7:call-id1:x7:command5:offer8:from-tag1:fe", "SDP"),
        (
            b"d7:call-id1:x7:command5:offer8:from-tag1:f3:sdp5:hello",
            "decode",
        ),
        (
            b"d7:call-id1:x7:command5:offer8:from-tag1:f3:sdp5:helloe",
            "parse SDP",
        ),
        (
            b"d7:call-id1:x7:command6:answer8:from-tag1:f6:to-tag1:t3:sdp3:v=0e",
            "Unknown call",
        ),
        (b"d7:call-id1:x7:command5:querye", "Unknown call"),
    ];
    for (body, reason) in cases {
        let r = ng.send(body);
        assert_eq!(
            result(&r),
            "error",
            "{}: {r:?}",
            String::from_utf8_lossy(body)
        );
        let why = r
            .get("error-reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            why.contains(reason),
            "{}: reason {why:?}",
            String::from_utf8_lossy(body)
        );
    }
    let savp = offer("s", "");
    let savp = String::from_utf8(savp)
        .unwrap()
        .replace("RTP/AVP", "RTP/SAVP");
    let savp = savp.replace(
        &format!("{}:", OFFER_SDP.len()),
        &format!("{}:", OFFER_SDP.len() + 1),
    );
    let r = ng.send(savp.as_bytes());
    assert_eq!(result(&r), "error", "{r:?}");
    assert_eq!(ng.ports_free(), total);
    assert!(ng
        .server
        .handle(b"no-space-here", 0, ng.now, SystemTime::now())
        .is_none());
}

#[test]
fn latching_flags_reach_the_data_plane() {
    use mediagate::media::LatchMode;
    for (flag, mode) in [
        ("", LatchMode::Symmetric),
        ("5:flagsl10:asymmetrice", LatchMode::Asymmetric),
        ("5:flagsl14:media-handovere", LatchMode::Handover),
    ] {
        let mut ng = Ng::new();
        assert_eq!(result(&ng.send(&offer("f", flag))), "ok");
        let commands = ng.media.borrow_mut().take_commands();
        let modes: Vec<LatchMode> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Add(spec) => Some(spec.latch.mode),
                _ => None,
            })
            .collect();
        assert_eq!(modes, vec![mode; 4], "flag {flag:?}");
    }
}

#[test]
fn statistics() {
    let mut ng = Ng::new();
    ng.send(&offer("x", ""));
    let s = ng.send(b"d7:command10:statisticse");
    let own = s
        .get("statistics")
        .and_then(|v| v.get("currentstatistics"))
        .and_then(|v| v.get("sessionsown"))
        .and_then(Value::as_int);
    assert_eq!(own, Some(1));
}

/// `label` as rtpengine 10.5 keeps it: an offer's names the from-tag's participant, an
/// answer's the to-tag's, a later offer relabels; `query` shows it per tag. `set-label` is not
/// applied by offer/answer, and `from-label` does not select anything in `query`.
#[test]
fn labels_name_participants_in_query() {
    let mut ng = Ng::new();
    let labelled = |body: Vec<u8>, label: &str| {
        String::from_utf8(body).unwrap().replacen(
            "8:from-tag",
            &format!("5:label{}8:from-tag", bstr(label)),
            1,
        )
    };
    let r = ng.send(labelled(offer("lab", ""), "caller").as_bytes());
    assert_eq!(result(&r), "ok", "{r:?}");
    let r = ng.send(labelled(answer("lab"), "callee").as_bytes());
    assert_eq!(result(&r), "ok", "{r:?}");
    let label_of = |q: &Value, tag: &str| {
        q.get("tags")
            .and_then(|t| t.get(tag))
            .and_then(|t| t.get("label"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let q = ng.send(b"d7:call-id3:lab7:command5:querye");
    assert_eq!(label_of(&q, "ft").as_deref(), Some("caller"), "{q:?}");
    assert_eq!(label_of(&q, "tt").as_deref(), Some("callee"), "{q:?}");

    let relabel = String::from_utf8(offer("lab", "9:set-label1:x")).unwrap();
    let relabel = relabel.replacen(
        "8:from-tag",
        &format!("5:label{}8:from-tag", bstr("moved")),
        1,
    );
    assert_eq!(result(&ng.send(relabel.as_bytes())), "ok");
    let q = ng.send(b"d7:call-id3:lab7:command5:query10:from-label6:calleee");
    assert_eq!(label_of(&q, "ft").as_deref(), Some("moved"), "{q:?}");
    assert!(
        q.get("tags").and_then(|t| t.get("tt")).is_some(),
        "from-label selects nothing"
    );

    let unlabelled = ng.send(&offer("plain", ""));
    assert_eq!(result(&unlabelled), "ok");
    let q = ng.send(b"d7:call-id5:plain7:command5:querye");
    assert_eq!(
        label_of(&q, "ft"),
        None,
        "no label key without a label: {q:?}"
    );
}

/// `address family`: IP6 puts the interface's IPv6 address into the SDP the message produces;
/// a family the interface has no address of, or an unknown family, is an error that leaves no
/// ports behind.
#[test]
fn address_family_selects_the_interface_address() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    let r = ng.send(&offer("v6", "14:address family3:IP6"));
    assert_eq!(result(&r), "ok", "{r:?}");
    assert_eq!(sdp_of(&r).media()[0].rtp.ip().to_string(), "fd00:99:1::1");
    let Some(Value::Bytes(raw)) = r.get("sdp") else {
        unreachable!()
    };
    assert!(String::from_utf8_lossy(raw).contains("c=IN IP6 fd00:99:1::1\r\n"));
    // The answer keeps the caller's side on IPv4 (the offer's family) unless asked.
    let r = ng.send(&answer("v6"));
    assert_eq!(sdp_of(&r).media()[0].rtp.ip().to_string(), "10.99.1.1");
    let v6_answer = String::from_utf8(answer("v6")).unwrap().replacen(
        "8:from-tag",
        "14:address family3:IP68:from-tag",
        1,
    );
    let r = ng.send(v6_answer.as_bytes());
    assert_eq!(result(&r), "ok", "{r:?}");
    assert_eq!(sdp_of(&r).media()[0].rtp.ip().to_string(), "fd00:99:1::1");
    assert_eq!(
        ng.ports_free(),
        total - 2,
        "the moved side's old port is free"
    );
    // A re-offer without the key follows the offer's family again.
    let r = ng.send(&offer("v6", ""));
    assert_eq!(sdp_of(&r).media()[0].rtp.ip().to_string(), "10.99.1.1");
    assert_eq!(ng.ports_free(), total - 2);
    ng.send(b"d7:call-id2:v67:command6:deletee");
    assert_eq!(ng.ports_free(), total);

    for (extra, reason) in [
        (
            "9:directionl8:internal8:externale14:address family3:IP6",
            "No address of family IPv6 on interface 'external'",
        ),
        ("14:address family3:IPX", "Unknown address family 'IPX'"),
    ] {
        let r = ng.send(&offer("bad-family", extra));
        assert_eq!(result(&r), "error", "{r:?}");
        let why = r
            .get("error-reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(why.contains(reason), "{why}");
        assert_eq!(ng.ports_free(), total, "no port leaked");
    }
    let answer_v6_ext =
        String::from_utf8(offer("ext", "9:directionl8:external8:internale")).unwrap();
    assert_eq!(result(&ng.send(answer_v6_ext.as_bytes())), "ok");
    let before = ng.ports_free();
    let bad = format!(
        "d14:address family3:IP67:call-id3:ext7:command6:answer8:from-tag{}3:sdp{}6:to-tag{}e",
        bstr("ft"),
        bstr(ANSWER_SDP),
        bstr("tt")
    );
    let r = ng.send(bad.as_bytes());
    assert_eq!(
        result(&r),
        "error",
        "the caller faces external: no IPv6 there: {r:?}"
    );
    assert_eq!(ng.ports_free(), before, "a refused answer changes no ports");
}

fn answer_from(call: &str, to_tag: &str, ip: &str, port: u16) -> Vec<u8> {
    let sdp = ANSWER_SDP
        .replace("10.99.2.2", ip)
        .replace("m=audio 7000", &format!("m=audio {port}"));
    format!(
        "d7:call-id{}7:command6:answer8:from-tag{}3:sdp{}6:to-tag{}e",
        bstr(call),
        bstr("ft"),
        bstr(&sdp),
        bstr(to_tag)
    )
    .into_bytes()
}

/// SIP forking: two answers with different to-tags to one offer. The first takes the ports
/// the offer advertised, the second gets new ports on both sides (its own port toward the
/// caller); each branch relays between its own pair. Deleting one to-tag ends that branch and
/// frees its ports; deleting the last ends the call.
#[test]
fn forked_answers_get_branches_of_their_own() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    assert_eq!(result(&ng.send(&offer("fork", ""))), "ok");
    ng.media.borrow_mut().take_commands();
    let one = ng.send(&answer_from("fork", "b1", "10.99.2.2", 7000));
    assert_eq!(result(&one), "ok", "{one:?}");
    assert_eq!(ng.ports_free(), total - 2);
    let two = ng.send(&answer_from("fork", "b2", "10.99.2.3", 8000));
    assert_eq!(result(&two), "ok", "{two:?}");
    assert_eq!(
        ng.ports_free(),
        total - 4,
        "a second branch: new ports on both sides"
    );
    let (p1, p2) = (sdp_of(&one).media()[0].rtp, sdp_of(&two).media()[0].rtp);
    assert_eq!(p1.ip(), p2.ip());
    assert_ne!(
        p1.port(),
        p2.port(),
        "each branch's answer names its own caller-side port"
    );

    // The second branch's streams pair with each other: caller side ↔ b2's side.
    let commands = ng.media.borrow_mut().take_commands();
    let adds: Vec<(u64, u64, u16)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Add(s) => Some((s.id, s.peer, s.local.port())),
            _ => None,
        })
        .collect();
    assert_eq!(adds.len(), 4, "{adds:?}");
    let caller_rtp = adds
        .iter()
        .find(|a| a.2 == p2.port())
        .expect("caller-side RTP");
    assert!(adds
        .iter()
        .any(|a| a.0 == caller_rtp.1 && a.1 == caller_rtp.0));
    assert!(commands.iter().any(|c| matches!(c,
        Command::Renegotiate { sdp: Some(a), .. } if a.to_string() == "10.99.2.3:8000")));

    let q = ng.send(b"d7:call-id4:fork7:command5:querye");
    let tags = |q: &Value| -> Vec<String> {
        let Some(Value::Dict(d)) = q.get("tags") else {
            return Vec::new();
        };
        d.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(tags(&q), ["b1", "b2", "ft"], "{q:?}");
    let offerer_port = q
        .get("tags")
        .and_then(|t| t.get("ft"))
        .and_then(|t| t.get("medias"))
        .and_then(|m| match m {
            Value::List(l) => l.first(),
            _ => None,
        })
        .and_then(|m| match m.get("streams") {
            Some(Value::List(l)) => l.first(),
            _ => None,
        })
        .and_then(|s| s.get("local port"))
        .and_then(Value::as_int);
    assert_eq!(
        offerer_port,
        Some(i64::from(p2.port())),
        "toward the latest answer"
    );

    // A re-answer of the first branch stays on its ports.
    let again = ng.send(&answer_from("fork", "b1", "10.99.2.2", 7002));
    assert_eq!(sdp_of(&again).media()[0].rtp, p1);
    assert_eq!(ng.ports_free(), total - 4);

    let d = ng.send(b"d7:call-id4:fork7:command6:delete8:from-tag2:ft6:to-tag2:b2e");
    assert_eq!(result(&d), "ok", "{d:?}");
    assert_eq!(ng.ports_free(), total - 2, "the branch's ports are back");
    let q = ng.send(b"d7:call-id4:fork7:command5:querye");
    assert_eq!(tags(&q), ["b1", "ft"], "{q:?}");
    let d = ng.send(b"d7:call-id4:fork7:command6:delete8:from-tag2:ft6:to-tag2:b1e");
    assert_eq!(result(&d), "ok");
    assert_eq!(ng.ports_free(), total, "the last branch ends the call");
    assert_eq!(
        result(&ng.send(b"d7:call-id4:fork7:command5:querye")),
        "error"
    );

    // Before any answer, a to-tag (a failed INVITE's) deletes the call; after the forks, a
    // delete with the from-tag alone ends every branch.
    assert_eq!(result(&ng.send(&offer("failed", ""))), "ok");
    let d = ng.send(b"d7:call-id6:failed7:command6:delete8:from-tag2:ft6:to-tag3:486e");
    assert!(d.get("warning").is_none(), "{d:?}");
    assert_eq!(ng.ports_free(), total);
    assert_eq!(result(&ng.send(&offer("all", ""))), "ok");
    ng.send(&answer_from("all", "b1", "10.99.2.2", 7000));
    ng.send(&answer_from("all", "b2", "10.99.2.3", 8000));
    ng.send(b"d7:call-id3:all7:command6:delete8:from-tag2:fte");
    assert_eq!(ng.ports_free(), total, "every branch's ports back");
}

/// A forked call that times out or is deleted with a delay frees every branch's ports.
#[test]
fn forked_call_ending_by_delay_frees_every_branch() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    ng.send(&offer("fd", ""));
    ng.send(&answer_from("fd", "b1", "10.99.2.2", 7000));
    ng.send(&answer_from("fd", "b2", "10.99.2.3", 8000));
    let r = ng.send(b"d7:call-id2:fd7:command6:delete12:delete-delayi1ee");
    assert_eq!(result(&r), "ok");
    ng.now += Duration::from_secs(2);
    ng.server.handle_timeout(ng.now);
    assert_eq!(ng.ports_free(), total);
}

#[test]
fn loop_protect_marks_the_sdp_and_leaves_a_marked_one_alone_and_rtcp_lines_can_be_omitted() {
    use mediagate::control::bencode::dict;
    let mut ng = Ng::new();
    let with_rtcp = OFFER_SDP.replace("a=sendrecv\r\n", "a=rtcp:6001\r\na=sendrecv\r\n");
    let request = |call: &str, sdp: &[u8], flags: &[&str]| {
        dict([
            ("call-id", call.into()),
            ("command", "offer".into()),
            (
                "flags",
                Value::List(flags.iter().map(|f| (*f).into()).collect()),
            ),
            ("from-tag", "ft".into()),
            ("sdp", Value::Bytes(sdp.to_vec())),
        ])
        .encode()
    };
    let reply = ng.send(&request(
        "lp-1",
        with_rtcp.as_bytes(),
        &["loop protect", "no-rtcp-attribute"],
    ));
    assert_eq!(result(&reply), "ok", "{reply:?}");
    let Some(Value::Bytes(out)) = reply.get("sdp") else {
        panic!("no sdp")
    };
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        !text.contains("a=rtcp:"),
        "no-rtcp-attribute (spaces or hyphens): {text}"
    );
    let marker = text
        .lines()
        .find(|l| l.starts_with("a=rtpengine:"))
        .expect("marker");
    assert!(
        text.find(marker).unwrap() < text.find("m=audio").unwrap(),
        "session level: {text}"
    );
    // The marked SDP comes back (a signalling loop): returned untouched, no call made.
    let free = ng.ports_free();
    let looped = ng.send(&request("lp-2", out, &["loop-protect"]));
    assert_eq!(result(&looped), "ok");
    assert_eq!(looped.get("sdp"), Some(&Value::Bytes(out.clone())));
    assert_eq!(ng.ports_free(), free, "no ports for the looped offer");
    // Without the flag the marker means nothing: the SDP is anchored again.
    let again = ng.send(&request("lp-3", out, &[]));
    assert_ne!(again.get("sdp"), Some(&Value::Bytes(out.clone())));
    assert!(ng.ports_free() < free);
}
