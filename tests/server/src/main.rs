//! `keepalive-testserver`: starts the test server, prints one JSON line describing its
//! ports on stdout, and runs until stdin reaches EOF (unless `--no-stdin`) or
//! SIGTERM/SIGINT arrives.

use std::io::{Read, Write};

use keepalive_testserver::Server;

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn terminated() {
    let _ = tokio::signal::ctrl_c().await;
}

fn main() {
    let mut no_stdin = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-stdin" => no_stdin = true,
            "-h" | "--help" => {
                println!(
                    "usage: keepalive-testserver [--no-stdin]\n\
                     Prints one JSON line with the ports, then serves until stdin EOF\n\
                     (or, with --no-stdin, until SIGTERM/SIGINT)."
                );
                return;
            }
            other => {
                eprintln!("keepalive-testserver: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }

    let server = Server::start();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", server.info_json());
        let _ = out.flush();
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        if !no_stdin {
            std::thread::spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut sink = [0u8; 4096];
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                let _ = tx.send(());
            });
        }
        let stdin_eof = async {
            if no_stdin {
                std::future::pending::<()>().await;
            } else {
                let _ = rx.await;
            }
        };
        tokio::select! {
            _ = stdin_eof => {}
            _ = terminated() => {}
        }
    });
    drop(rt);
    drop(server);
}
