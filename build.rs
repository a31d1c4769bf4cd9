//! Generates `include/keepalive_agent.h` from the Rust sources with cbindgen, plus version
//! macros from Cargo's version, and gives the shared library its SONAME.

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
