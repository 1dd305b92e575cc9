//! `shoal backup` / `shoal backup inspect` / `shoal restore`: point-in-time backups of the
//! replicated state, after etcd's `snapshot save` and `snapshot restore`.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use shoal_coordinator::backup::{restore, Backup};
use shoal_coordinator::config::ClusterConfig;

use super::client::GatewayArgs;
use super::format::bytes;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Where to write the backup (it holds the cluster CA's private key: keep it secret).
    pub file: Option<PathBuf>,
    /// Include the model files of every registered version this coordinator stores.
    #[arg(long)]
    pub with_artifacts: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Verify a backup (length and sha256) and show its index, counts and size.
    Inspect { file: PathBuf },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (`shoal backup FILE`).
    pub file: PathBuf,
    /// The cluster config of the new group (membership comes from it).
    #[arg(long)]
    pub config: PathBuf,
    /// This member's id in the config.
    #[arg(long)]
    pub id: u64,
    /// The new data dir to write (it must not exist, or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
}

fn show(b: &Backup) {
    let h = &b.header;
    println!("backup     {}", b.path.display());
    println!("sha256     {} (verified)", h.sha256);
    println!("index      {} (term {})", h.index, h.term);
    println!("taken      {} ms since the epoch, by shoal {}", h.created_at_ms, h.shoal);
    println!("size       {}", bytes(b.file_bytes));
    let counts: Vec<String> = h.counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    println!("holds      {}", if counts.is_empty() { "nothing".into() } else { counts.join(", ") });
    println!("artifacts  {}", h.artifacts);
}

pub async fn run_backup(a: BackupArgs) -> anyhow::Result<()> {
    if let Some(BackupCommand::Inspect { file }) = a.command {
        let b = Backup::open(&file)?;
        show(&b);
        return Ok(());
    }
    let file =
        a.file.ok_or_else(|| anyhow!("name the file to write: shoal backup FILE (or shoal backup inspect FILE)"))?;
    let part = file.with_extension("part");
    let path = if a.with_artifacts { "/v1/backup?with_artifacts=true" } else { "/v1/backup" };
    a.gateway.download(path, part.clone()).await?;
    let b = Backup::open(&part).with_context(|| format!("the downloaded backup {} does not verify", part.display()))?;
    std::fs::rename(&part, &file).with_context(|| format!("cannot write {}", file.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let b = Backup { path: file, ..b };
    show(&b);
    Ok(())
}

pub fn run_restore(a: RestoreArgs) -> anyhow::Result<()> {
    let b = Backup::open(&a.file)?;
    let config = ClusterConfig::load(&a.config)?;
    let r = restore(&b, &config, a.id, &a.data_dir)?;
    println!("restored index {} of {} into {}", b.header.index, a.file.display(), a.data_dir.display());
    println!(
        "  voters {:?}, CA {}, {} artifacts",
        r.voters,
        if r.ca_written { "written" } else { "already there (the same)" },
        r.artifacts
    );
    println!(
        "start it with: shoal coordinator --config {} --id {} --data-dir {}",
        a.config.display(),
        a.id,
        a.data_dir.display()
    );
    Ok(())
}
