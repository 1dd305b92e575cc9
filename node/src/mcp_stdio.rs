//! Stdio MCP servers run on this node for a gateway's session (`Request::McpStdio`), when
//! the node was started with `--mcp-stdio`.
//!
//! The program starts as a child in its own process group, with a cleared environment plus
//! `PATH`, in the node's working directory. The stream relays its stdin (`Chunk` frames from
//! the gateway) and its stdout (`StdioOut` frames to it); when it exits, `StdioExited`
//! carries its exit status and the end of its stderr. When the gateway ends the stream or
//! the connection is lost, the whole process group is killed.

use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use shoal_protocol::quic::{ServerReceiver, ServerStream};
use shoal_protocol::{RefusalCode, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, info_span, Instrument};

/// The most stderr kept and sent back when the server exits.
pub const STDERR_KEPT: usize = 2048;
/// The most stdout bytes sent in one frame.
const READ_BYTES: usize = 64 * 1024;
/// How long a server that closed its stdout may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Why a node does not start a stdio server, or `None` when it does.
pub fn refusal(allowed: bool, command: &[String]) -> Option<String> {
    if !allowed {
        return Some("this node does not run stdio MCP servers (start it with --mcp-stdio)".into());
    }
    if command.first().is_none_or(|p| p.is_empty()) {
        return Some("no command to run".into());
    }
    None
}

/// Runs `command` for the stream's session (see the module's docs).
pub async fn serve(mut stream: ServerStream, allowed: bool, server: String, command: Vec<String>) {
    if let Some(why) = refusal(allowed, &command) {
        return stream.refuse(RefusalCode::NotFound, why).await;
    }
    let span = info_span!("mcp.stdio", server = %server);
    async move {
        let mut child = match spawn(&command) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start `{}`: {e}", command.join(" "));
                return stream.refuse(RefusalCode::BadRequest, msg).await;
            }
        };
        let pid = child.id().unwrap_or(0);
        info!(pid, "stdio MCP server started");
        let (Some(stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin().take(), child.stdout().take(), child.stderr().take())
        else {
            let _ = child.start_kill();
            return stream.refuse(RefusalCode::Unavailable, "the server's pipes could not be opened").await;
        };
        let kept = tokio::spawn(keep_tail(stderr));
        if stream.send(&Response::StdioStarted { pid }).await.is_err() {
            let _ = child.start_kill();
            return;
        }
        let (mut tx, rx) = stream.split();
        let mut inbound = pin!(relay_stdin(rx, stdin));
        let abandoned = tx.abandoned();
        let mut abandoned = pin!(abandoned);
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            tokio::select! {
                _ = &mut inbound => return stop(child, "the session ended").await,
                _ = &mut abandoned => return stop(child, "the session was dropped").await,
                read = stdout.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(&Response::StdioOut { data: buf[..n].to_vec() }).await.is_err() {
                            return stop(child, "the session broke").await;
                        }
                    }
                },
            }
        }
        // Stdout closed: the server is exiting.
        let status = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(Ok(s)) => shown_status(&s),
            Ok(Err(e)) => format!("unknown ({e})"),
            Err(_) => {
                stop(child, "it closed its stdout but did not exit").await;
                "killed: it closed its stdout but did not exit".to_string()
            }
        };
        let stderr = kept.await.unwrap_or_default();
        debug!(%status, "stdio MCP server exited");
        let _ = tx.send(&Response::StdioExited { status, stderr }).await;
        tx.finish();
    }
    .instrument(span)
    .await
}

fn spawn(command: &[String]) -> std::io::Result<Box<dyn ChildWrapper>> {
    let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("no command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let mut wrapped = CommandWrap::from(cmd);
    wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
    wrapped.spawn()
}

/// Kills the server's process group and reaps it.
async fn stop(mut child: Box<dyn ChildWrapper>, why: &str) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
    info!(why, "stdio MCP server stopped");
}

/// Writes the gateway's `Chunk` frames to the server's stdin (closing it after `last`);
/// returns when the gateway ends its direction of the stream or sends anything else.
async fn relay_stdin(mut rx: ServerReceiver, stdin: tokio::process::ChildStdin) {
    let mut stdin = Some(stdin);
    loop {
        match rx.recv().await {
            Ok(Some(Request::Chunk { data, last })) => {
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                        // The server closed its stdin (it is exiting); its stdout says the rest.
                        stdin = None;
                    }
                }
                if last {
                    stdin = None;
                }
            }
            Ok(Some(_)) | Ok(None) | Err(_) => return,
        }
    }
}

/// The last [`STDERR_KEPT`] bytes of `from` (read until it closes).
async fn keep_tail(mut from: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_KEPT {
            kept.drain(..kept.len() - STDERR_KEPT);
        }
    }
    tail(&kept)
}

/// The last [`STDERR_KEPT`] bytes of `bytes` as text, starting at a character boundary.
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut = text.len().saturating_sub(STDERR_KEPT);
    let cut = (cut..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    text[cut..].trim().to_string()
}

fn shown_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_unless_allowed_and_given_a_program() {
        let cmd = vec!["python3".to_string(), "s.py".into()];
        assert!(refusal(false, &cmd).expect("refused").contains("--mcp-stdio"));
        assert_eq!(refusal(true, &[]).as_deref(), Some("no command to run"));
        assert_eq!(refusal(true, &[String::new()]).as_deref(), Some("no command to run"));
        assert_eq!(refusal(true, &cmd), None);
    }

    #[test]
    fn the_tail_keeps_the_end_on_a_character_boundary() {
        assert_eq!(tail(b"  short  "), "short");
        let long = format!("{}{}", "é".repeat(STDERR_KEPT), "end");
        let t = tail(long.as_bytes());
        assert!(t.ends_with("end") && t.len() <= STDERR_KEPT, "{}", t.len());
        assert!(t.starts_with('é'));
    }

    #[tokio::test]
    async fn stderr_is_kept_to_its_last_bytes() {
        let data = format!("{}last words", "x".repeat(10 * STDERR_KEPT));
        let t = keep_tail(data.as_bytes()).await;
        assert!(t.ends_with("last words") && t.len() == STDERR_KEPT, "{}", t.len());
    }
}
