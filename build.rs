//! Generates `include/keepalive_agent.h` from the Rust sources with cbindgen, plus version
//! macros from Cargo's version, and gives the shared library its SONAME. Also writes the
//! table of code names (`$OUT_DIR/code_names.rs`) from the `agent_code` enum itself, so
//! that adding a code is one line in `src/ffi/mod.rs`.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("set by cargo");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("set by cargo");
    let patch = env::var("CARGO_PKG_VERSION_PATCH").expect("set by cargo");
    let version = env::var("CARGO_PKG_VERSION").expect("set by cargo");

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeepalive_agent.so.{major}");
    // The runtime's threads run library code until the process exits: a host that unloads
    // the library (Node does, when the last worker thread that loaded an addon ends) would
    // pull the code from under them. Stay loaded once loaded.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    write_code_names(&dir);

    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let after = format!(
        "\n/* The version of the library this header describes; compare with agent_version(). */\n\
         #define KEEPALIVE_AGENT_VERSION \"{version}\"\n\
         #define KEEPALIVE_AGENT_VERSION_MAJOR {major}\n\
         #define KEEPALIVE_AGENT_VERSION_MINOR {minor}\n\
         #define KEEPALIVE_AGENT_VERSION_PATCH {patch}\n"
    );
    let config = cbindgen::Config {
        after_includes: Some(after),
        ..config
    };
    match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(dir.join("include/keepalive_agent.h"));
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}

/// Reads the variants of `enum agent_code` (`AGENT_CODE_NAME = value,` lines) from
/// `src/ffi/mod.rs` and writes them as `(value, c"AGENT_CODE_NAME")` pairs.
fn write_code_names(dir: &std::path::Path) {
    let src = std::fs::read_to_string(dir.join("src/ffi/mod.rs")).expect("src/ffi/mod.rs");
    let body = src
        .split("pub enum agent_code {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("enum agent_code in src/ffi/mod.rs");
    let mut table = String::from("&[\n");
    let mut count = 0;
    for line in body.lines() {
        let line = line.trim();
        if line.starts_with("//") || !line.starts_with("AGENT_CODE_") {
            continue;
        }
        let (name, value) = line
            .trim_end_matches(',')
            .split_once('=')
            .expect("AGENT_CODE_X = value");
        let (name, value) = (name.trim(), value.trim());
        value.parse::<u32>().expect("explicit numeric code value");
        table.push_str(&format!("    ({value}, c\"{name}\"),\n"));
        count += 1;
    }
    assert!(count > 0, "no codes found in enum agent_code");
    table.push(']');
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("code_names.rs");
    std::fs::write(out, table).expect("write code_names.rs");
}
