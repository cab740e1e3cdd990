//! Mid-call re-INVITEs through mediagate between real peers (issue 7): sipp calls held with
//! `a=sendonly` and resumed with `a=sendrecv` by either side, with RTP relayed through mediagate
//! afterwards and an INFO (DTMF) relayed; a baresip-to-baresip call held and resumed.
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it. Logs, sipp traces and captures of
//! a failed test are kept under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

fn attr(m: &SipMsg, name: &str) -> bool {
    m.body().lines().any(|l| l.trim() == format!("a={name}"))
}

fn cseq_of(m: &SipMsg) -> String {
    m.header("CSeq").unwrap_or_default()
}

/// The received INVITEs of a sipp run (initial and re-INVITEs), in order.
fn invites(s: &Sipp) -> Vec<SipMsg> {
    s.received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect()
}

/// The received 200s to INVITEs of a sipp run, one per CSeq, in order.
fn invite_oks(s: &Sipp) -> Vec<SipMsg> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for m in s.received() {
        let cseq = cseq_of(&m);
        if m.status_code() == Some(200) && cseq.ends_with("INVITE") && !seen.contains(&cseq) {
            seen.push(cseq);
            out.push(m);
        }
    }
    out
}

/// A call placed from `from`'s side, held and resumed by the caller (re-INVITEs on mediagate's
/// caller leg, relayed on the callee leg), with the pcap played after the resume and echoed.
fn hold_and_resume(test: &str, from: Origin, dataplane: Dataplane) {
    let lab = Lab::new(test);
    let (caller, callee) = sides(&lab, from);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_hold_resume", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config_with(30, dataplane));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_hold_resume", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    // RTP flows after the resume: both legs latched.
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| {
        media_flowing(st, 1, dataplane)
    });
    assert_rtp_call_status(&st, 1, dataplane);
    assert!(
        flowing,
        "no RTP after the resume: {st:#}\n{}",
        mg.log_tail(40)
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // The callee saw three INVITEs in mediagate's dialog: initial, hold, resume.
    let inv = invites(&uas);
    assert_eq!(inv.len(), 3, "{}", uas.describe());
    let call_id = inv[0].header("Call-ID").unwrap();
    for (i, m) in inv.iter().enumerate() {
        assert_eq!(m.header("Call-ID").as_deref(), Some(call_id.as_str()));
        assert_eq!(cseq_of(m), format!("{} INVITE", i + 1));
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(callee.mg_ip),
            "{}",
            m.text
        );
        assert!(
            !m.text.contains(caller.peer_ip),
            "caller address leaked:\n{}",
            m.text
        );
        assert_eq!(
            m.sdp_audio_port(),
            inv[0].sdp_audio_port(),
            "same anchor port"
        );
    }
    assert_ne!(
        call_id,
        invites_sent_call_id(&uac),
        "the callee leg has its own Call-ID"
    );
    assert!(attr(&inv[1], "sendonly"), "hold offer: {}", inv[1].text);
    assert!(attr(&inv[2], "sendrecv"), "resume offer: {}", inv[2].text);
    assert_eq!(
        uas.received()
            .iter()
            .filter(|m| m.is_request("ACK"))
            .count(),
        3,
        "every ACK relayed end to end\n{}",
        uas.describe()
    );

    // The caller saw the answers anchored on mediagate's port, hold then resume.
    let oks = invite_oks(&uac);
    assert_eq!(oks.len(), 3, "{}", uac.describe());
    for m in &oks {
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(caller.mg_ip),
            "{}",
            m.text
        );
        assert!(
            !m.text.contains(callee.peer_ip),
            "callee address leaked:\n{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), oks[0].sdp_audio_port());
    }
    assert!(attr(&oks[1], "recvonly"), "hold answer: {}", oks[1].text);
    assert!(attr(&oks[2], "sendrecv"), "resume answer: {}", oks[2].text);

    // Media after the resume: the pcap relayed to the callee, its echo back to the caller,
    // each from the port mediagate advertised on that side.
    let caller_port = oks[0].sdp_audio_port().unwrap();
    let callee_port = inv[0].sdp_audio_port().unwrap();
    assert_media_flowed_and_stop(
        (&caller, caller_port, &mut caller_cap),
        (&callee, callee_port, &mut callee_cap),
        mg,
        &lab,
    );
}

fn invites_sent_call_id(s: &Sipp) -> String {
    s.messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .expect("caller sent an INVITE")
}

#[test]
fn caller_on_pbx_holds_and_resumes_with_rtp_after() {
    hold_and_resume("hold_gw", Origin::Gw, Dataplane::Socket);
}

#[test]
fn kernel_tier_caller_holds_and_resumes_with_rtp_after() {
    hold_and_resume("hold_kernel", Origin::Gw, Dataplane::Kernel);
}

#[test]
fn caller_on_itsp_holds_and_resumes_with_rtp_after() {
    hold_and_resume("hold_it", Origin::Itsp, Dataplane::Socket);
}

/// The requests of `method` a sipp run received, in order.
fn requests(s: &Sipp, method: &str) -> Vec<SipMsg> {
    s.received()
        .into_iter()
        .filter(|m| m.is_request(method))
        .collect()
}

/// The callee holds and resumes (re-INVITEs on mediagate's callee leg, relayed on the caller
/// leg in mediagate's dialog with the caller), RTP flows after the resume, and the caller's
/// INFO (DTMF) reaches the callee.
#[test]
fn callee_holds_and_resumes_and_info_is_relayed() {
    let lab = Lab::new("held_by_callee");
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_holds", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_held", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(
        flowing,
        "no RTP after the resume: {st:#}\n{}",
        mg.log_tail(40)
    );
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    // The caller got the callee's re-INVITEs in its own dialog with mediagate.
    let own_call_id = invites_sent_call_id(&uac);
    let reinv = requests(&uac, "INVITE");
    assert_eq!(reinv.len(), 2, "{}", uac.describe());
    let caller_port = invite_oks(&uac)[0].sdp_audio_port().unwrap();
    for (i, m) in reinv.iter().enumerate() {
        assert_eq!(m.header("Call-ID").as_deref(), Some(own_call_id.as_str()));
        assert_eq!(cseq_of(m), format!("{} INVITE", i + 1));
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(caller.mg_ip),
            "{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), Some(caller_port));
        assert!(
            !m.text.contains(callee.peer_ip),
            "callee address leaked:\n{}",
            m.text
        );
    }
    assert!(attr(&reinv[0], "sendonly") && attr(&reinv[1], "sendrecv"));
    assert_eq!(requests(&uac, "ACK").len(), 2, "ACKs relayed end to end");
    // The callee got the caller's answers, anchored.
    let oks = invite_oks(&uas);
    assert_eq!(oks.len(), 2, "{}", uas.describe());
    let callee_port = requests(&uas, "INVITE")[0].sdp_audio_port().unwrap();
    for m in &oks {
        assert_eq!(
            m.sdp_conn_addr().as_deref(),
            Some(callee.mg_ip),
            "{}",
            m.text
        );
        assert_eq!(m.sdp_audio_port(), Some(callee_port));
        assert!(
            !m.text.contains(caller.peer_ip),
            "caller address leaked:\n{}",
            m.text
        );
    }
    assert!(attr(&oks[0], "recvonly") && attr(&oks[1], "sendrecv"));
    // INFO relayed with its body, the 200 back.
    let info = requests(&uas, "INFO");
    assert_eq!(info.len(), 1, "{}", uas.describe());
    assert!(info[0].body().contains("Signal=5"), "{}", info[0].text);
    assert_eq!(
        info[0].header("Content-Type").as_deref(),
        Some("application/dtmf-relay")
    );
    assert!(!info[0].text.contains(caller.peer_ip));

    assert_media_flowed_and_stop(
        (&caller, caller_port, &mut caller_cap),
        (&callee, callee_port, &mut callee_cap),
        mg,
        &lab,
    );
}

// ---------------------------------------------------------------------------
// baresip to baresip
// ---------------------------------------------------------------------------

/// A headless baresip 1.0.0 in a lab namespace: PCMA, a WAV tone as microphone (`aufile`;
/// `ausine` only runs at 48 kHz), `aubridge` as the (discarding) player (the only player module
/// without a sound device), auto-answer, driven over `ctrl_tcp` on the namespace's loopback
/// (`dial`, `hold`, `resume`, `hangup` come from the `menu` module). The account's user must be
/// the Request-URI user of incoming calls.
struct Baresip {
    ns: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Baresip {
    fn start(lab: &Lab, name: &str, ns: String, ip: &str, user: &str) -> Baresip {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("baresip").is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`baresip` not found in PATH; install with `apt-get install -y baresip`"
        );
        let dir = lab.path(&format!("baresip-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let wav = dir.join("tone.wav");
        write_tone(&wav, 60);
        let wav = wav.display();
        std::fs::write(
            dir.join("config"),
            format!(
                "sip_listen {ip}:5060\n\
                 audio_player aubridge,{name}\n\
                 audio_alert aubridge,{name}\n\
                 audio_source aufile,{wav}\n\
                 rtp_ports 6000-6099\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\n\
                 module aufile.so\n\
                 module aubridge.so\n\
                 module_app account.so\n\
                 module_app menu.so\n\
                 module_app ctrl_tcp.so\n\
                 ctrl_tcp_listen 127.0.0.1:4444\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts"),
            format!("<sip:{user}@{ip}>;regint=0;answermode=auto;audio_codecs=PCMA\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("log.txt")).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "baresip", "-f"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn baresip");
        let b = Baresip { ns, child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.try_command("reginfo", "").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "baresip {name} did not start:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log.txt")).unwrap_or_default()
    }

    /// One `ctrl_tcp` command (netstring JSON); the response text.
    fn try_command(&self, command: &str, params: &str) -> Result<String, String> {
        const CLIENT: &str = r#"
import json, socket, sys
s = socket.create_connection(("127.0.0.1", 4444), timeout=3)
m = json.dumps({"command": sys.argv[1], "params": sys.argv[2], "token": "t"})
s.sendall(f"{len(m)}:{m},".encode())
buf = b""
while b'"response"' not in buf:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
print(buf.decode(errors="replace"))
"#;
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "python3", "-c", CLIENT, command, params,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn command(&self, command: &str, params: &str) -> String {
        self.try_command(command, params)
            .unwrap_or_else(|e| panic!("baresip {command}: {e}\n{}", self.log()))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("baresip log {}:\n{}", self.dir.display(), self.log());
        }
    }
}

/// A WAV file of `seconds` of a 440 Hz tone, 8 kHz mono 16 bit (baresip's `aufile` source; it
/// hangs up when the file ends).
fn write_tone(path: &std::path::Path, seconds: u32) {
    let samples = 8000 * seconds;
    let mut w = Vec::with_capacity(44 + 2 * samples as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + 2 * samples).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(2 * samples).to_le_bytes());
    for i in 0..samples {
        let v = (f64::from(i) * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0;
        w.extend_from_slice(&(v as i16).to_le_bytes());
    }
    std::fs::write(path, w).unwrap();
}

/// Received RTP packets on each leg's streams of the only call, from `/status`.
fn rx_per_leg(st: &serde_json::Value) -> Vec<u64> {
    st["calls"][0]["legs"]
        .as_array()
        .map(|legs| {
            legs.iter()
                .map(|l| {
                    l["streams"]
                        .as_array()
                        .map(|ss| {
                            ss.iter()
                                .map(|s| s["rx_packets"].as_u64().unwrap_or(0))
                                .sum()
                        })
                        .unwrap_or(0)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIP seen on an interface, as tcpdump's ASCII dump; tcpdump stopped on drop.
struct SipCapture {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl SipCapture {
    fn start(lab: &Lab, ns: &str, iface: &str, name: &str) -> SipCapture {
        let out = lab.path(&format!("sip-{name}.txt"));
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-U", "-nn", "-l", "-A", "-s0", "-i", iface,
            ])
            .arg("udp port 5060")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(1000));
        SipCapture { child, out }
    }

    /// Stops tcpdump (after a short drain) and returns what it saw.
    fn text(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(500));
        self.stop();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for SipCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// baresip calls baresip through mediagate, puts the call on hold and resumes it: the callee
/// sees mediagate's re-INVITEs with `a=sendonly` then `a=sendrecv`, the call stays up, and RTP
/// flows both ways through mediagate after the resume.
#[test]
fn baresip_to_baresip_hold_and_resume() {
    let lab = Lab::new("baresip_hold");
    let callee = Baresip::start(&lab, "callee", lab.it(), IT_IP, "+4930123");
    let mut mg = Mediagate::start(&lab, &config(30));
    let caller = Baresip::start(&lab, "caller", lab.gw(), GW_IP, "100");
    let mut cap = SipCapture::start(&lab, &lab.it(), &lab.it_if(), "callee");

    caller.command("dial", &format!("sip:+4930123@{MG_GW_IP}"));
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(flowing, "no RTP in the call: {st:#}\n{}", mg.log_tail(40));

    caller.command("hold", "");
    std::thread::sleep(Duration::from_secs(2));
    let st = mg.status();
    assert_eq!(st["active_calls"], 1, "call dropped on hold: {st:#}");
    caller.command("resume", "");
    std::thread::sleep(Duration::from_secs(1));
    let before = rx_per_leg(&mg.status());
    std::thread::sleep(Duration::from_secs(2));
    let st = mg.status();
    let after = rx_per_leg(&st);
    assert_eq!(st["active_calls"], 1, "{st:#}");
    assert_eq!(after.len(), 2, "{st:#}");
    for (leg, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > &(b + 50),
            "leg {leg}: RTP after resume {b} -> {a}\n{st:#}"
        );
    }

    caller.command("hangup", "");
    mg.assert_idle(Duration::from_secs(5));
    let sip = cap.text();
    let invites = sip.matches("INVITE sip:").count();
    assert!(
        invites >= 3,
        "initial INVITE, hold and resume re-INVITEs expected:\n{sip}"
    );
    assert!(sip.contains("a=sendonly"), "hold offer relayed:\n{sip}");
    // (baresip's `a=ssrc:… cname:sip:100@10.99.1.2` passes, as every unknown SDP line does)
    let leaked: Vec<&str> = sip
        .lines()
        .filter(|l| l.contains(GW_IP) && !l.starts_with("a=ssrc:"))
        .collect();
    assert!(
        leaked.is_empty(),
        "caller address leaked to the callee side: {leaked:?}"
    );
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    drop(caller);
    drop(callee);
    lab.assert_mg_clean();
}

/// Both directions carried RTP after the resume (more than 100 packets each way, from the port
/// mediagate advertised on each side, counted by captures at the far ends); then mediagate
/// stops cleanly and leaves nothing behind.
fn assert_media_flowed_and_stop(
    (caller, caller_port, caller_cap): (&Side, u16, &mut Capture),
    (callee, callee_port, callee_cap): (&Side, u16, &mut Capture),
    mut mg: Mediagate,
    lab: &Lab,
) {
    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let flow = |cap: &mut Capture, side: &Side, port: u16| {
        cap.flows()
            .get(&(sa(side.mg_ip, port), sa(side.peer_ip, SIPP_MEDIA_PORT)))
            .copied()
            .unwrap_or(0)
    };
    let to_callee = flow(callee_cap, callee, callee_port);
    let to_caller = flow(caller_cap, caller, caller_port);
    assert!(
        to_callee > 100,
        "RTP toward the callee after resume: {to_callee}\n{desc}"
    );
    assert!(
        to_caller > 100,
        "echo toward the caller after resume: {to_caller}\n{desc}"
    );
    let st = mg.stop();
    assert!(st.is_some_and(|s| s.success()), "mediagate exit: {st:?}");
    lab.assert_mg_clean();
}
