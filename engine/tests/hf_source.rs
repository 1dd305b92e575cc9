//! `hf://` sources downloaded through the real loader from a local stand-in for the hub
//! (`HF_ENDPOINT`-style endpoint on loopback serving `/{repo}/resolve/{rev}/{file}` from the
//! fetched model files), then inspected and loaded like any model.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use shoal_engine::{inspect, resolve_source_with_endpoint, Capability, Embedder};

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    assert!(
        dir.join("all-minilm-l6-v2").is_dir(),
        "models missing in {}: run ./scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

/// A hub stand-in: maps `/{org}/{repo}/resolve/main/{file}` to files under `root/{repo-name}`.
/// Returns its endpoint and the paths it was asked for.
fn serve_hub(root: PathBuf, repos: Vec<(&'static str, &'static str)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let file = repos.iter().find_map(|(repo, folder)| {
                let rest = path.strip_prefix(&format!("/{repo}/resolve/main/"))?;
                Some(root.join(folder).join(rest))
            });
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let _ =
                        write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = conn.write_all(&body);
                }
                None => {
                    let _ = write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    endpoint
}

#[test]
fn hf_sources_download_through_the_loader_and_load() {
    let models = models_dir();
    let hub = serve_hub(
        models.clone(),
        vec![
            ("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2-135m-instruct"),
            ("sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"),
        ],
    );
    let cache = tempfile::tempdir().expect("tempdir");

    let gguf = resolve_source_with_endpoint(
        "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
        cache.path(),
        &hub,
    )
    .expect("gguf download");
    let original = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(std::fs::read(&gguf).expect("read"), std::fs::read(&original).expect("read"), "same bytes");
    let info = inspect(&gguf).expect("inspect");
    assert_eq!(info.architecture, "llama");
    assert!(info.capabilities.contains(&Capability::Chat));

    let folder = resolve_source_with_endpoint("hf://sentence-transformers/all-MiniLM-L6-v2", cache.path(), &hub)
        .expect("folder download");
    let embedder = Embedder::load(&folder).expect("load the downloaded folder");
    assert_eq!(embedder.dims(), 384);

    // A second resolve uses the cache; a file the hub does not have is a clear error.
    assert_eq!(
        resolve_source_with_endpoint("hf://sentence-transformers/all-MiniLM-L6-v2", cache.path(), &hub).expect("again"),
        folder
    );
    let err = resolve_source_with_endpoint("hf://org/missing/model.gguf", cache.path(), &hub).expect_err("404");
    assert!(err.to_string().contains("404"), "{err}");
}
