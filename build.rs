//! Compiles the XDP program in bpf/ with clang and embeds it. Without clang the build still
//! succeeds, without the XDP tier (a cargo warning says so, and mediagate says so at run time).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mediagate_bpf)");
    println!("cargo::rerun-if-changed=bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("relay.bpf.o");
    let arch_include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-Wall",
            "-Werror",
            &arch_include,
            "-c",
        ])
        .arg("bpf/relay.bpf.c")
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo::rustc-cfg=mediagate_bpf"),
        Ok(s) => println!("cargo::warning=clang failed ({s}) compiling bpf/relay.bpf.c: building without the XDP tier"),
        Err(e) => println!("cargo::warning=clang not found ({e}): building without the XDP tier"),
    }
}
