//! `mediagate status` and `mediagate calls`: the `/status` document printed as plain-text
//! tables, so an operator on the box reads trunk health and the calls up without `jq`. Works
//! on the JSON alone (fields that are absent print as `-`), so it reads the `/status` of a
//! newer or older mediagate as far as the fields agree.

use std::time::SystemTime;

use serde_json::Value;

/// Columns of left-aligned text, each as wide as its widest cell.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
}

/// A JSON value as a cell: strings bare, numbers as JSON writes them, null/absent as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// Seconds since an RFC 3339 time, as `1h02m03s` / `4m05s` / `6s`; `-` when unreadable.
fn age(since: &Value, now: SystemTime) -> String {
    let Some(t) = since
        .as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
    else {
        return "-".into();
    };
    let s = now.duration_since(t).map_or(0, |d| d.as_secs());
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Every stream of a call (RTP and its RTCP) over all legs.
fn streams(call: &Value) -> impl Iterator<Item = &Value> {
    array(&call["legs"])
        .iter()
        .flat_map(|l| array(&l["streams"]))
        .flat_map(|s| [s, &s["rtcp"]])
        .filter(|s| s.is_object())
}

/// The calls table: id, trunks (or NG tags), numbers, state, duration, tiers, packets.
fn calls_into(status: &Value, now: SystemTime, out: &mut String) {
    let mut t = Table::new(&[
        "CALL", "SOURCE", "FROM", "TO", "CALLING", "CALLED", "STATE", "DURATION", "TIER",
        "RX PKTS", "TX PKTS", "DROPS",
    ]);
    for c in array(&status["calls"]) {
        let legs = array(&c["legs"]);
        let leg = |i: usize| {
            legs.get(i).map_or("-".into(), |l| {
                cell(if l["trunk"].is_null() {
                    &l["tag"]
                } else {
                    &l["trunk"]
                })
            })
        };
        let mut tiers: Vec<String> = streams(c).map(|s| cell(&s["tier"])).collect();
        tiers.sort();
        tiers.dedup();
        let sum = |k: &str| streams(c).filter_map(|s| s[k].as_u64()).sum::<u64>();
        t.row(vec![
            cell(&c["id"]),
            cell(&c["source"]),
            leg(0),
            leg(1),
            cell(&c["calling"]),
            cell(&c["called"]),
            cell(&c["state"]),
            age(&c["started"], now),
            if tiers.is_empty() {
                "-".into()
            } else {
                tiers.join(",")
            },
            sum("rx_packets").to_string(),
            sum("tx_packets").to_string(),
            sum("drops").to_string(),
        ]);
    }
    t.render(out);
}

/// `mediagate calls`: one line per active call.
pub fn calls(status: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    calls_into(status, now, &mut out);
    out
}

/// `mediagate status`: a summary line, then trunks, peers, calls and the data plane.
pub fn status(status: &Value, now: SystemTime) -> String {
    let mut out = format!(
        "calls up: {}   media ports free: {}/{}   SIP transactions: {}   data plane: {}\n\n",
        cell(&status["active_calls"]),
        cell(&status["ports"]["free"]),
        cell(&status["ports"]["total"]),
        cell(&status["transactions"]),
        cell(&status["dataplane"]["tier"]),
    );
    let mut trunks = Table::new(&[
        "TRUNK",
        "KIND",
        "CALLS",
        "DRAINING",
        "REGISTRATION",
        "EXPIRES",
        "LAST ERROR",
    ]);
    let mut peers = Table::new(&["TRUNK", "PEER", "TRANSPORT", "STATE", "FOR", "RTT MS"]);
    for tr in array(&status["trunks"]) {
        let reg = &tr["registration"];
        trunks.row(vec![
            cell(&tr["name"]),
            cell(&tr["kind"]),
            cell(&tr["active_calls"]),
            cell(&tr["draining"]),
            cell(&reg["state"]),
            cell(&reg["expires_at"]),
            cell(&reg["last_error"]),
        ]);
        for p in array(&tr["peers"]) {
            peers.row(vec![
                cell(&tr["name"]),
                cell(&p["address"]),
                cell(&p["transport"]),
                cell(&p["state"]),
                age(&p["since"], now),
                cell(&p["rtt_ms"]),
            ]);
        }
    }
    trunks.render(&mut out);
    out.push('\n');
    peers.render(&mut out);
    out.push('\n');
    calls_into(status, now, &mut out);
    dataplane_into(&status["dataplane"], &mut out);
    out
}

/// The XDP program's devices and counters and the AF_XDP workers, when those tiers run.
fn dataplane_into(dp: &Value, out: &mut String) {
    if let Some(devices) = dp["devices"].as_array() {
        out.push('\n');
        let mut t = Table::new(&["XDP DEVICE", "MODE"]);
        for d in devices {
            t.row(vec![cell(&d["device"]), cell(&d["mode"])]);
        }
        t.render(out);
    }
    if let Some(counters) = dp["counters"].as_object() {
        out.push('\n');
        let mut t = Table::new(&["XDP OUTCOME", "PACKETS"]);
        for (k, v) in counters {
            t.row(vec![k.clone(), cell(v)]);
        }
        t.render(out);
    }
    if let Some(workers) = dp["afxdp"]["workers"].as_array() {
        out.push('\n');
        let mut t = Table::new(&[
            "CORE",
            "RX",
            "TX",
            "DROPPED",
            "NO NEIGHBOUR",
            "ITERATIONS",
            "P99 US",
        ]);
        for w in workers {
            t.row(vec![
                cell(&w["core"]),
                cell(&w["rx"]),
                cell(&w["tx"]),
                cell(&w["dropped"]),
                cell(&w["no_neighbour"]),
                cell(&w["iterations"]),
                cell(&w["latency"]["p99_us"]),
            ]);
        }
        t.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn tables_align_and_sum_a_calls_streams() {
        let now = humantime::parse_rfc3339("2026-11-26T12:01:05Z").unwrap();
        let stream = |rx: u64| {
            json!({"tier": "socket", "rx_packets": rx, "tx_packets": 1, "drops": 0,
                                      "rtcp": {"tier": "socket", "rx_packets": 1, "tx_packets": 0, "drops": 2}})
        };
        let st = json!({
            "active_calls": 1, "ports": {"total": 500, "free": 498}, "transactions": 0,
            "dataplane": {"tier": "socket"},
            "trunks": [{"name": "itsp", "kind": "itsp", "active_calls": 1, "draining": false,
                        "registration": null,
                        "peers": [{"address": "10.99.2.2:5060", "transport": "UDP", "state": "up",
                                   "since": "2026-11-26T11:00:00Z", "rtt_ms": 0.4}]}],
            "calls": [{"id": "c-0", "source": "sip", "state": "confirmed", "calling": "sipp",
                       "called": "+4930123", "started": "2026-11-26T12:00:00Z",
                       "legs": [{"trunk": "pbx", "streams": [stream(10)]},
                                {"trunk": "itsp", "streams": [stream(20)]}]}],
        });
        let calls = calls(&st, now);
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 2, "{calls}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "c-0",
                "sip",
                "pbx",
                "itsp",
                "sipp",
                "+4930123",
                "confirmed",
                "1m05s",
                "socket",
                "32",
                "2",
                "4"
            ]
        );
        // Header and row columns start at the same offsets.
        assert_eq!(lines[0].find("CALLED"), lines[1].find("+4930123"));
        let full = status(&st, now + Duration::from_secs(3600));
        assert!(
            full.starts_with("calls up: 1   media ports free: 498/500"),
            "{full}"
        );
        assert!(
            full.contains("itsp   10.99.2.2:5060  UDP        up     2h01m05s  0.4"),
            "{full}"
        );
    }

    #[test]
    fn absent_fields_print_as_dashes() {
        let out = status(&json!({}), SystemTime::now());
        assert!(
            out.starts_with("calls up: -   media ports free: -/-"),
            "{out}"
        );
        assert_eq!(
            calls(&json!({"calls": [{}]}), SystemTime::now())
                .lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next(),
            Some("-")
        );
    }
}
