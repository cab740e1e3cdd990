//! Logs of a real mediagate carrying a sipp call (namespace lab, tests/data/lab.toml): with
//! `[log] format = "json"` every line is a JSON object and the call's lines carry its span
//! (call id and SIP Call-ID); with `redact = true` the dialled number never appears, while the
//! human format without redaction shows it, with the span in front. Needs root; fails (never
//! skips) without it.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::Value;

const DIALLED: &str = "+4930123";

/// One short call from the PBX through mediagate to an answering ITSP sipp, with `log` as the
/// `[log]` section; returns mediagate's log and the Call-ID the caller used.
fn logged_call(test: &str, log: &str) -> (String, String) {
    let lab = Lab::new(test);
    let mut uas = Sipp::spawn(&lab, "itsp", SippOpts::new(lab.it(), "uas_echo", IT_IP));
    uas.settle();
    let mut mg = Mediagate::start(&lab, &format!("{}\n[log]\n{log}\n", config(30)));
    let uac = short_call(&lab, &mg, "pbx", DIALLED, (5060, SIPP_MEDIA_PORT));
    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let call_id = uac
        .messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .expect("the caller's INVITE");
    let st = mg.stop().expect("mediagate was running");
    assert!(st.success(), "mediagate exit: {st}");
    (fs::read_to_string(&mg.log).unwrap(), call_id)
}

#[test]
fn json_lines_carry_the_call_span_and_redaction_hides_the_number() {
    require_root_and_tools();
    let (log, call_id) = logged_call("logs_json", "format = \"json\"\nredact = true");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    let of_call: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["sip_call_id"] == call_id.as_str())
        .collect();
    let said: Vec<String> = of_call.iter().map(|l| message(l)).collect();
    for expected in ["new call", "answered", "hang-up"] {
        assert!(
            said.iter().any(|m| m == expected),
            "no `{expected}` line in the call's span {said:?}\n{log}"
        );
    }
    for l in &of_call {
        assert_eq!(l["span"]["name"], "call", "{l}");
        assert!(
            l["span"]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("c-")),
            "{l}"
        );
    }
    let new_call = of_call
        .iter()
        .find(|l| message(l) == "new call")
        .expect("new call line");
    assert_eq!(new_call["fields"]["called"], "+xxxxx23", "{new_call}");
    assert!(
        !log.contains("4930123"),
        "the dialled number is in the redacted log:\n{log}"
    );
}

#[test]
fn human_lines_show_the_span_and_the_number_without_redaction() {
    require_root_and_tools();
    let (log, call_id) = logged_call("logs_human", "format = \"human\"\nlevel = \"info\"");
    let new_call = log
        .lines()
        .find(|l| l.contains("new call"))
        .unwrap_or_else(|| panic!("no new call line:\n{log}"));
    assert!(
        new_call.contains(&format!("call{{sip_call_id={call_id} id=c-1}}")),
        "{new_call}"
    );
    assert!(
        new_call.contains(&format!("called={DIALLED}")),
        "{new_call}"
    );
    assert!(serde_json::from_str::<Value>(new_call).is_err());
}

#[test]
fn log_level_changes_with_a_reload() {
    require_root_and_tools();
    let lab = Lab::new("logs_level");
    let mut uas = Sipp::spawn(&lab, "itsp", SippOpts::new(lab.it(), "uas_echo", IT_IP));
    uas.settle();
    let quiet = format!("{}\n[log]\nlevel = \"warn\"\n", config(30));
    let mut mg = Mediagate::start(&lab, &quiet);
    short_call(&lab, &mg, "first", DIALLED, (5060, SIPP_MEDIA_PORT));
    mg.assert_idle(Duration::from_secs(5));
    let log = fs::read_to_string(&mg.log).unwrap();

    fs::write(&mg.config_path, quiet.replace("\"warn\"", "\"info\"")).unwrap();
    mg.sighup();
    if std::env::var_os("RUST_LOG").is_some() {
        // The environment's level wins over the file, at start and on reload.
        mg.wait_log(
            Duration::from_secs(5),
            "log.level not applied: RUST_LOG sets the level",
        );
    } else {
        assert!(
            !log.contains("new call"),
            "an info line at level warn:\n{log}"
        );
        mg.wait_log(Duration::from_secs(5), "log level changed");
        short_call(&lab, &mg, "second", DIALLED, (5060, SIPP_MEDIA_PORT));
        mg.wait_log(Duration::from_secs(5), "new call");
    }
    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    assert!(mg.stop().expect("running").success());
}
