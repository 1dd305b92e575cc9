//! `shoal audit`: the gateway's audit log — mutations, admin reads and authentication or
//! authorization failures, with the key (id and name, never the secret) behind each.

use clap::Args;

use super::client::GatewayArgs;
use super::format::{parse_duration_secs, table};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records from this long ago on (e.g. 10m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records of this key (its id or name).
    #[arg(long)]
    pub key: Option<String>,
    /// Only failed requests (status 400 or more), authentication failures among them.
    #[arg(long)]
    pub failed: bool,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(a: AuditArgs) -> anyhow::Result<()> {
    let mut q = vec![format!("limit={}", a.limit)];
    if let Some(s) = &a.since {
        let secs = parse_duration_secs(s).map_err(|e| anyhow::anyhow!("--since {s}: {e}"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        q.push(format!("since_ms={}", now.saturating_sub(secs * 1000)));
    }
    if let Some(k) = &a.key {
        q.push(format!("key={k}"));
    }
    if a.failed {
        q.push("failed=true".into());
    }
    let v = a.gateway.get(&format!("/v1/audit?{}", q.join("&"))).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let secs = r["time_ms"].as_u64().unwrap_or(0) / 1000;
            vec![
                format_time(secs),
                r["verb"].as_str().unwrap_or("").to_string(),
                r["uri"].as_str().unwrap_or("").to_string(),
                r["code"].to_string(),
                if r["key_name"].as_str().unwrap_or("").is_empty() {
                    "-".into()
                } else {
                    format!("{} ({})", r["key_name"].as_str().unwrap_or(""), r["key_id"].as_str().unwrap_or(""))
                },
                r["source"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["TIME (UTC)", "VERB", "URI", "CODE", "KEY", "SOURCE", "WHY"], &rows));
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` of a unix second (UTC).
fn format_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn times_are_civil_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_796_511_835), "2026-12-05 23:03:55");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }
}
