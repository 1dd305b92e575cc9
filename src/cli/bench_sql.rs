//! `shoal bench sql` (being written).

use clap::Args;

#[derive(Debug, Args)]
pub struct SqlBench {}

pub fn run(_a: SqlBench) -> anyhow::Result<()> {
    Ok(())
}
