//! What this machine has: CPU cores, RAM, GPUs (through [`crate::gpu`]) and accelerators
//! the operator declares (`--accelerator kind:model:memory`).

use shoal_protocol::{Accelerator, AcceleratorKind, Capacity, Label, Load};

use crate::NodeError;

/// Parses `kind:model:memory`, e.g. `npu:ascend910b:64GiB` or `gpu:nvidia/h100:80GB`.
/// A `vendor/` prefix on the model names the vendor.
pub fn parse_accelerator(spec: &str) -> Result<Accelerator, NodeError> {
    let bad = |why: &str| NodeError::AcceleratorSpec { spec: spec.to_string(), why: why.to_string() };
    let parts: Vec<&str> = spec.split(':').collect();
    let [kind, model, memory] = parts.as_slice() else {
        return Err(bad("expected kind:model:memory"));
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "gpu" => AcceleratorKind::Gpu,
        "npu" => AcceleratorKind::Npu,
        "cpu" => AcceleratorKind::Cpu,
        _ => return Err(bad("kind must be gpu, npu or cpu")),
    };
    if model.is_empty() {
        return Err(bad("model is empty"));
    }
    let (vendor, model) = match model.split_once('/') {
        Some((v, m)) => (v.to_string(), m.to_string()),
        None => (String::new(), model.to_string()),
    };
    let bytes = parse_bytes(memory).ok_or_else(|| bad("memory must look like 64GiB, 80GB or 512MiB"))?;
    Ok(Accelerator {
        kind,
        vendor,
        model,
        memory_total_bytes: bytes,
        memory_free_bytes: bytes,
        compute_capability: String::new(),
        discovered: false,
    })
}

/// Parses sizes like `64GiB`, `80GB`, `512MiB`, `1024`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    let bytes = value * mult;
    (bytes.is_finite() && bytes > 0.0).then_some(bytes as u64)
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> Result<Label, NodeError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(Label { key: k.trim().into(), value: v.trim().into() }),
        _ => Err(NodeError::LabelSpec(s.to_string())),
    }
}

fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Discovers this machine's capacity, adding the declared accelerators.
pub fn discover(declared: &[Accelerator]) -> Capacity {
    let cpu_cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut accelerators = crate::gpu::discover();
    accelerators.extend(declared.iter().cloned());
    Capacity { cpu_cores, memory_total_bytes: meminfo_field(&meminfo, "MemTotal:").unwrap_or(0), accelerators }
}

/// Samples the current load (the parts the OS tells us; serving adds in-flight work).
pub fn sample_load(capacity: &Capacity) -> Load {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one_min: f64 = loadavg.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Load {
        in_flight: 0,
        queue_depth: 0,
        cpu_load_milli: (one_min * 1000.0) as u32,
        memory_available_bytes: meminfo_field(&meminfo, "MemAvailable:").unwrap_or(0),
        accelerator_free_bytes: capacity.accelerators.iter().map(|a| a.memory_free_bytes).collect(),
        draining: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_specs_parse() {
        let a = parse_accelerator("npu:ascend910b:64GiB").expect("parses");
        assert_eq!(a.kind, AcceleratorKind::Npu);
        assert_eq!(a.model, "ascend910b");
        assert_eq!(a.memory_total_bytes, 64 * 1024 * 1024 * 1024);
        assert!(!a.discovered);
        let g = parse_accelerator("gpu:nvidia/h100:80GB").expect("parses");
        assert_eq!((g.vendor.as_str(), g.model.as_str(), g.memory_total_bytes), ("nvidia", "h100", 80_000_000_000));
    }

    #[test]
    fn bad_accelerator_specs_say_why() {
        for (spec, why) in [
            ("npu:x", "kind:model:memory"),
            ("tpu:x:1GB", "kind must be"),
            ("npu::1GB", "model is empty"),
            ("npu:x:lots", "memory must"),
            ("npu:x:0GB", "memory must"),
        ] {
            let e = parse_accelerator(spec).expect_err(spec).to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn this_machine_has_cpus_and_memory() {
        let c = discover(&[]);
        assert!(c.cpu_cores >= 1);
        assert!(c.memory_total_bytes > 0);
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("zone=a").expect("ok").value, "a");
        assert!(parse_label("=a").is_err());
        assert!(parse_label("novalue").is_err());
    }
}
