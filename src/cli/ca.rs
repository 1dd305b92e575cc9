//! `shoal ca`: the cluster CA that the coordinators of a group share (`[pki] ca_dir`).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a cluster CA in a new directory (ca.crt, and ca.key readable by its owner only)
    /// and print its hash. For groups whose members cannot create it themselves, such as a
    /// Kubernetes StatefulSet reading it from a Secret (cluster-configs/kubernetes/).
    Create {
        /// The directory to create (it must not exist, or be empty).
        dir: PathBuf,
    },
}

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Create { dir } => {
            let hash = shoal_coordinator::pki::create_ca(&dir)?;
            println!("created the cluster CA in {}", dir.display());
            println!("ca-hash:  {hash}");
            println!();
            println!("For Kubernetes (cluster-configs/kubernetes/):");
            println!(
                "  kubectl -n shoal create secret generic shoal-ca --from-file={0}/ca.crt --from-file={0}/ca.key",
                dir.display()
            );
            println!("Keep ca.key secret: it signs every member's certificate.");
            Ok(())
        }
    }
}
