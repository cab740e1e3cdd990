//! Configuration reload on SIGHUP with real sipp peers in the namespace lab (tests/data/lab.toml):
//! a call up keeps its media and completes while a reload changes the ITSP trunk's outbound
//! translation; the next call is translated by the new file; a restart-only change (media
//! ports) is reported and not applied; an invalid file is refused with its FILE:LINE: key
//! error in the log and calls keep being routed by the running configuration; `/metrics`
//! counts both reloads. A reload that removes the ITSP trunk and adds (and lists first) a
//! `carrier` trunk on a second ITSP address: the call up on the removed trunk keeps its media
//! and completes, new calls go to the new trunk, which is probed, and `/status` and
//! `/metrics` list the new trunks only. Needs root; fails (never skips) without it. And the
//! same in the sans-IO core, where a call in set-up fails over after a reload: its next INVITE
//! still follows the configuration the call started with; and a trunk kept across a reload that
//! reorders the list and adds a trunk keeps its peer health, drain and occupying call.

mod common;
mod sansio;

use std::fs;
use std::time::Duration;

use common::*;
use mediagate::metrics::prometheus::parse_exposition;
use serde_json::Value;

const DIALLED: &str = "+4930123";

/// What the reload adds to the ITSP trunk (the last `[[trunk]]`, before the routes).
const PREFIX_RULE: &str = "[[trunk.translate]]\nfield = \"called\"\ndirection = \"out\"\n\
                           match = '^\\+(\\d+)$'\nreplace = \"0099$1\"\n\n";

/// `base` with the prefix rule on the ITSP trunk (the last one, before the routes).
fn with_prefix_rule(base: &str) -> String {
    let at = base.find("[[route]]").expect("the config has routes");
    let (trunks, routes) = base.split_at(at);
    format!("{trunks}{PREFIX_RULE}{routes}")
}

/// The lab config with the prefix rule on the ITSP trunk and a wider media port range (which
/// needs a restart, so it must not be applied).
fn reloaded_config() -> String {
    with_prefix_rule(&config(30)).replace("30000-30999", "30000-31999")
}

/// Distinct INVITEs (by Call-ID) the callee received, in order: their Request-URIs.
fn invites_received(uas: &Sipp) -> Vec<String> {
    let mut seen = Vec::new();
    let mut uris = Vec::new();
    for m in uas
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
    {
        let id = m.header("Call-ID").unwrap_or_default();
        if !seen.contains(&id) {
            seen.push(id);
            uris.push(m.start_line().to_string());
        }
    }
    uris
}

/// RTP packets mediagate received on every stream of call `id`.
fn call_rx_packets(st: &Value, id: &str) -> u64 {
    let Some(call) = st["calls"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
    else {
        return 0;
    };
    call["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["streams"].as_array().into_iter().flatten())
        .map(|s| s["rx_packets"].as_u64().unwrap_or(0))
        .sum()
}

/// A call from the PBX up with media, then a SIGHUP loading `config`: the call must live
/// through the reload.
struct CallAcrossReload {
    sipp: Sipp,
    /// The call's id in `/status`.
    id: String,
    /// Its packets received when the reload was done.
    rx_at_reload: u64,
}

impl CallAcrossReload {
    fn start(lab: &Lab, mg: &Mediagate, config: &str) -> CallAcrossReload {
        let remote = format!("{MG_GW_IP}:5060");
        let sipp = Sipp::spawn(
            lab,
            "first",
            SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
                .caller(DIALLED, &remote)
                .args(&["-m", "1"])
                .timeout(30),
        );
        let (flowing, st) = mg.wait_status(Duration::from_secs(8), |st| {
            media_flowing(st, 1, Dataplane::Socket)
        });
        assert!(flowing, "call 1 media did not flow: {st:#}");
        let id = st["calls"][0]["id"].as_str().expect("call id").to_string();
        fs::write(&mg.config_path, config).unwrap();
        mg.sighup();
        mg.wait_log(Duration::from_secs(5), "configuration reloaded");
        let rx_at_reload = call_rx_packets(&mg.status(), &id);
        CallAcrossReload {
            sipp,
            id,
            rx_at_reload,
        }
    }

    /// Waits for the call's media to go on through its ports after the reload; the status then.
    fn assert_media_goes_on(&self, mg: &Mediagate) -> Value {
        let (grew, st) = mg.wait_status(Duration::from_secs(5), |st| {
            call_rx_packets(st, &self.id) > self.rx_at_reload
        });
        assert!(grew, "call 1 media stopped after the reload: {st:#}");
        st
    }
}

fn metric(mg: &Mediagate, key: &str) -> f64 {
    let (_, text) = mg.http_get("/metrics", &[]).expect("GET /metrics");
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
}

#[test]
fn sighup_reloads_for_new_calls_and_refuses_an_invalid_file() {
    require_root_and_tools();
    let lab = Lab::new("reload");
    let mut uas = Sipp::spawn(
        &lab,
        "itsp",
        SippOpts::new(lab.it(), "uas_echo", IT_IP)
            .args(&["-rtp_echo"])
            .timeout(60),
    );
    uas.settle();
    let mut mg = Mediagate::start(&lab, &config(30));

    // Call 1 up with RTP both ways, then a valid reload: new translation for new calls, a
    // restart-only change reported.
    let mut first = CallAcrossReload::start(&lab, &mg, &reloaded_config());
    let log = mg.log_tail(40);
    assert!(
        log.contains("change only with a restart") && log.contains("media.ports"),
        "the restart-only change is not reported:\n{log}"
    );

    // Call 2 goes out translated by the new rule.
    short_call(&lab, &mg, "second", DIALLED, (5070, 6100));
    let invites = invites_received(&uas);
    assert_eq!(invites.len(), 2, "{invites:?}\n{}", uas.describe());
    assert_eq!(invites[0], "INVITE sip:+4930123@10.99.2.2:5060 SIP/2.0");
    assert_eq!(invites[1], "INVITE sip:00994930123@10.99.2.2:5060 SIP/2.0");

    // Call 1 is untouched: its media keeps flowing through the same ports, and it completes.
    let st = first.assert_media_goes_on(&mg);
    assert_eq!(
        st["ports"]["total"], 500,
        "media.ports must keep its running value until a restart"
    );
    first.sipp.assert_ok(Some(&mg));

    // An invalid file: refused with FILE:LINE: key, the running configuration stays.
    let bad = reloaded_config().replace("max_calls = 100", "max_calls = \"lots\"");
    let line = 1 + bad[..bad.find("max_calls").unwrap()].matches('\n').count();
    fs::write(&mg.config_path, &bad).unwrap();
    mg.sighup();
    let error = format!("{}:{line}: sip.max_calls", mg.config_path.display());
    mg.wait_log(Duration::from_secs(5), &error);
    assert!(
        mg.log_tail(20).contains("configuration NOT reloaded"),
        "{}",
        mg.log_tail(20)
    );
    short_call(&lab, &mg, "third", DIALLED, (5070, 6100));
    let invites = invites_received(&uas);
    assert_eq!(invites.len(), 3, "{invites:?}");
    assert_eq!(invites[2], "INVITE sip:00994930123@10.99.2.2:5060 SIP/2.0");

    assert_eq!(
        metric(&mg, "mediagate_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(&mg, "mediagate_config_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(metric(&mg, "mediagate_config_last_reload_successful"), 0.0);

    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let st = mg.stop().expect("mediagate was running");
    assert!(st.success(), "mediagate exit when stopped: {st}");
}

/// The lab config with the ITSP trunk replaced by `carrier` (peer `IT2_IP`, probed every two
/// seconds), listed before the PBX trunk, and the routes following it.
fn carrier_config() -> String {
    let base = config(30);
    let itsp = format!(
        "[[trunk]]\nname = \"itsp\"\nkind = \"itsp\"\npeers = [\"udp:{IT_IP}:5060\"]\n\
         local = \"udp:{MG_IT_IP}:5060\"\n\n"
    );
    let first_trunk = base.find("[[trunk]]").expect("the config has trunks");
    assert!(
        base.contains(&itsp),
        "tests/data/lab.toml changed shape:\n{base}"
    );
    let carrier = itsp
        .replace("\"itsp\"\nkind", "\"carrier\"\nkind")
        .replace(IT_IP, IT2_IP)
        .replace(
            "\n\n",
            "\noptions_interval_s = 2\noptions_timeout_s = 1\n\n",
        );
    let text = base
        .replace(&itsp, "")
        .replace("[\"itsp\"]", "[\"carrier\"]");
    format!("{}{carrier}{}", &text[..first_trunk], &text[first_trunk..])
}

/// Names of the trunks `/status` lists.
fn status_trunks(st: &Value) -> Vec<String> {
    st["trunks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_reload_adds_and_removes_trunks_while_a_call_is_up() {
    require_root_and_tools();
    let lab = Lab::new("retrunk");
    lab.add_it_addr(&format!("{IT2_IP}/24"));
    let peer = |name: &str, ip: &str| {
        let p = Sipp::spawn(
            &lab,
            name,
            SippOpts::new(lab.it(), "uas_echo", ip)
                .args(&["-rtp_echo"])
                .timeout(60),
        );
        p.settle();
        p
    };
    let mut itsp = peer("itsp", IT_IP);
    let mut carrier = peer("carrier", IT2_IP);
    let mut mg = Mediagate::start(&lab, &config(30));

    // Call 1 on the ITSP trunk, media flowing, across the reload.
    let mut first = CallAcrossReload::start(&lab, &mg, &carrier_config());

    // The new list, and the new trunk probed (its peer answers OPTIONS).
    let (up, st) = mg.wait_status(Duration::from_secs(5), |st| {
        st["trunks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "carrier"))
            .is_some_and(|t| t["peers"][0]["state"] == "up")
    });
    assert!(up, "the added trunk is not probed up: {st:#}");
    assert_eq!(status_trunks(&st), ["pbx", "carrier"]);
    let call = st["calls"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == first.id));
    let call = call.unwrap_or_else(|| panic!("call 1 gone after the reload: {st:#}"));
    assert_eq!(call["legs"][1]["trunk"], "itsp", "{call:#}");

    // Call 2 goes to the new trunk.
    short_call(&lab, &mg, "second", DIALLED, (5070, 6100));
    assert_eq!(
        invites_received(&carrier).len(),
        1,
        "{}",
        carrier.describe()
    );

    // Call 1 keeps its media through its ports and completes on the removed trunk.
    first.assert_media_goes_on(&mg);
    first.sipp.assert_ok(Some(&mg));
    assert_eq!(invites_received(&itsp).len(), 1, "{}", itsp.describe());

    let (_, text) = mg.http_get("/metrics", &[]).expect("GET /metrics");
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let trunks: std::collections::BTreeSet<_> = samples
        .keys()
        .filter(|k| k.starts_with("mediagate_trunk_active_calls{"))
        .cloned()
        .collect();
    assert_eq!(
        trunks.into_iter().collect::<Vec<_>>(),
        [
            "mediagate_trunk_active_calls{trunk=\"carrier\"}",
            "mediagate_trunk_active_calls{trunk=\"pbx\"}"
        ],
        "{text}"
    );
    assert_eq!(
        samples.get("mediagate_calls_started_total{trunk=\"pbx\"}"),
        Some(&2.0),
        "the kept trunk keeps its counter:\n{text}"
    );
    assert_eq!(
        samples.get(
            "mediagate_trunk_peer_up{peer=\"10.99.2.3:5060\",transport=\"udp\",trunk=\"carrier\"}"
        ),
        Some(&1.0),
        "{text}"
    );

    mg.assert_idle(Duration::from_secs(5));
    for p in [&mut itsp, &mut carrier] {
        let st = p.stop();
        assert!(st.success(), "callee sipp failed: {st}\n{}", p.describe());
    }
    let st = mg.stop().expect("mediagate was running");
    assert!(st.success(), "mediagate exit when stopped: {st}");
}

/// The Request-URI of the one INVITE in `out` sent to `to`.
fn invite_uri_to(out: &[mediagate::sip::transaction::Transmit], to: &str) -> String {
    let invites: Vec<String> = out
        .iter()
        .filter(|t| t.target.remote.to_string() == to && t.message.is_request())
        .map(|t| t.message.to_bytes())
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|l| l.starts_with("INVITE "))
        .collect();
    assert_eq!(invites.len(), 1, "one INVITE to {to} expected: {out:#?}");
    invites[0].clone()
}

#[test]
fn a_call_in_set_up_keeps_its_configuration_across_a_reload() {
    use std::sync::Arc;
    // The ITSP trunk with a second peer to fail over to.
    let old_text = sansio::LAB.replace(
        "\"udp:10.99.2.2:5060\"]",
        "\"udp:10.99.2.2:5060\", \"udp:10.99.2.3:5060\"]",
    );
    let mut h = sansio::Harness::with_config(&old_text);
    let out = h.send(sansio::parse(sansio::INVITE), h.pbx);
    assert_eq!(
        invite_uri_to(&out, "10.99.2.2:5060"),
        "INVITE sip:+4930123@10.99.2.2:5060 SIP/2.0"
    );
    let first = out
        .iter()
        .find(|t| t.target.remote == h.itsp.remote)
        .unwrap()
        .message
        .clone();

    let old = mediagate::config::parse("lab.toml", &old_text).unwrap();
    let new = mediagate::config::parse("lab.toml", &with_prefix_rule(&old_text)).unwrap();
    let merged = mediagate::config::live::merge(&old, new, &[]).unwrap();
    assert!(
        merged.restart_needed.is_empty(),
        "{:?}",
        merged.restart_needed
    );
    h.core.reconfigure(Arc::new(merged.config), &[], &[], h.now);

    // The first peer refuses: the call fails over with its own (old) translation.
    let busy = mediagate::sip::dialog::response_to(&first, 503, "Busy", Some("b1"));
    let out = h.send(busy, h.itsp);
    assert_eq!(
        invite_uri_to(&out, "10.99.2.3:5060"),
        "INVITE sip:+4930123@10.99.2.3:5060 SIP/2.0"
    );

    // A new call takes the new rule.
    let second = sansio::INVITE
        .replace("pbx-call-1", "pbx-call-2")
        .replace("z9hG4bK-pbx-1", "z9hG4bK-pbx-2");
    let out = h.send(sansio::parse(&second), h.pbx);
    assert_eq!(
        invite_uri_to(&out, "10.99.2.2:5060"),
        "INVITE sip:00994930123@10.99.2.2:5060 SIP/2.0"
    );
}

/// In the sans-IO core: a reload that lists the ITSP trunk first and adds a `spare` trunk keeps
/// the ITSP trunk's state (peer health from its probes, drain, the call occupying it) and starts
/// the new trunk fresh (not draining, no call, its peer not probed yet).
#[test]
fn a_kept_trunk_keeps_its_state_across_a_reload_that_reorders_and_adds() {
    let itsp = "name = \"itsp\"\nkind = \"itsp\"\npeers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"\n";
    let probed = format!("{itsp}options_interval_s = 10\n");
    let running_text = sansio::LAB.replace(itsp, &probed);
    assert_ne!(
        running_text,
        sansio::LAB,
        "tests/data/lab.toml changed shape"
    );
    let mut h = sansio::Harness::with_config(&running_text);
    let out = h.advance(Duration::ZERO);
    let probe = out
        .iter()
        .find(|t| t.target.remote == h.itsp.remote)
        .expect("an OPTIONS probe to the ITSP")
        .message
        .clone();
    h.send(
        mediagate::sip::dialog::response_to(&probe, 200, "OK", Some("p1")),
        h.itsp,
    );
    h.send(sansio::parse(sansio::INVITE), h.pbx);
    h.core.set_draining("itsp", true).unwrap();

    // The file: itsp first, then pbx, then a new trunk.
    let (head, rest) = running_text.split_once("[[trunk]]").unwrap();
    let (pbx, rest) = rest.split_once("[[trunk]]").unwrap();
    let (itsp_block, routes) = rest.split_once("[[route]]").unwrap();
    let spare = "name = \"spare\"\nkind = \"itsp\"\npeers = [\"udp:10.99.2.3:5060\"]\nlocal = \"udp:10.99.2.1:5060\"\n\n";
    let file =
        format!("{head}[[trunk]]{itsp_block}[[trunk]]{pbx}[[trunk]]\n{spare}[[route]]{routes}");
    let running = mediagate::config::parse("lab.toml", &running_text).unwrap();
    let new = mediagate::config::parse("lab.toml", &file).unwrap();
    let m = mediagate::config::live::merge(&running, new, &h.core.free_trunk_slots()).unwrap();
    assert_eq!(
        (m.added.as_slice(), m.removed.as_slice()),
        (&[2][..], &[][..])
    );
    h.core
        .reconfigure(std::sync::Arc::new(m.config), &m.added, &m.removed, h.now);

    let st = h.status();
    let trunk = |name: &str| {
        st["trunks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no trunk {name}: {st:#}"))
            .clone()
    };
    let (itsp, spare) = (trunk("itsp"), trunk("spare"));
    assert_eq!(itsp["draining"], true, "{itsp:#}");
    assert_eq!(itsp["active_calls"], 1, "{itsp:#}");
    assert_eq!(itsp["peers"][0]["state"], "up", "{itsp:#}");
    assert_eq!(spare["draining"], false, "{spare:#}");
    assert_eq!(spare["active_calls"], 0, "{spare:#}");
    assert_eq!(spare["peers"][0]["state"], "unprobed", "{spare:#}");
}
