//! `with-pgserver COMMAND ARGS…`: starts a throwaway PostgreSQL + pgvector server (see
//! `shoal_testkit::pg`), runs the command with `SHOAL_BENCH_POSTGRES` set to the server's
//! URL, stops the server and exits with the command's status. `scripts/bench.sh` runs
//! `shoal bench recall` this way, so the shipped binary never starts a database itself.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: with-pgserver COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    let server = shoal_testkit::pg::PgServer::start();
    eprintln!("PostgreSQL + pgvector at {}", server.url());
    let status = Command::new(&program).args(args).env("SHOAL_BENCH_POSTGRES", server.url()).status();
    drop(server);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("cannot run {program}: {e}");
            ExitCode::from(1)
        }
    }
}
