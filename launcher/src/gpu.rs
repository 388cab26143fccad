//! GPU utilisation and memory, where an NVIDIA driver is present: read through NVML (loaded at
//! run time), exported as Prometheus gauges and shown on the dashboard. Hosts without the
//! driver report no GPUs; nothing fails.

use nvml_wrapper::Nvml;
use serde::Serialize;

use crate::prometheus::{
    Exposition, GPU_MEMORY_TOTAL_BYTES, GPU_MEMORY_USED_BYTES, GPU_UTILIZATION_RATIO,
};

/// One GPU at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    /// Share of the last sample period the GPU was busy, 0..=1.
    pub utilization: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// The host's NVIDIA GPUs, when NVML loads.
pub struct GpuProbe {
    nvml: Nvml,
}

impl GpuProbe {
    /// `None` where there is no NVIDIA driver (the usual case on CPU hosts; logged at debug).
    pub fn open() -> Option<Self> {
        match Nvml::init() {
            Ok(nvml) => Some(Self { nvml }),
            Err(e) => {
                tracing::debug!("no GPU metrics: NVML is not available ({e})");
                None
            }
        }
    }

    /// Every GPU that answers; one that fails a query is left out (and logged at debug).
    pub fn sample(&self) -> Vec<GpuSample> {
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let read = || -> Result<GpuSample, nvml_wrapper::error::NvmlError> {
                    let device = self.nvml.device_by_index(index)?;
                    let memory = device.memory_info()?;
                    Ok(GpuSample {
                        index,
                        name: device.name()?,
                        utilization: f64::from(device.utilization_rates()?.gpu) / 100.0,
                        memory_used_bytes: memory.used,
                        memory_total_bytes: memory.total,
                    })
                };
                read()
                    .inspect_err(|e| tracing::debug!("GPU {index}: NVML query failed: {e}"))
                    .ok()
            })
            .collect()
    }
}

/// Adds the GPU gauges, labelled `gpu` (index) and `name`.
pub fn add_to(e: &mut Exposition, gpus: &[GpuSample]) {
    for g in gpus {
        let index = g.index.to_string();
        let labels: &[(&str, &str)] = &[("gpu", &index), ("name", &g.name)];
        e.family(&GPU_UTILIZATION_RATIO, labels, g.utilization);
        e.family(&GPU_MEMORY_USED_BYTES, labels, g.memory_used_bytes as f64);
        e.family(&GPU_MEMORY_TOTAL_BYTES, labels, g.memory_total_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_gauges_render_with_their_labels() {
        let mut e = Exposition::new();
        add_to(
            &mut e,
            &[GpuSample {
                index: 0,
                name: "NVIDIA H200".into(),
                utilization: 0.37,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 141 << 30,
            }],
        );
        let text = e.render();
        assert!(text.contains("# TYPE vidmesh_gpu_utilization_ratio gauge\n"));
        assert!(
            text.contains("vidmesh_gpu_utilization_ratio{gpu=\"0\",name=\"NVIDIA H200\"} 0.37\n")
        );
        assert!(text.contains(
            "vidmesh_gpu_memory_used_bytes{gpu=\"0\",name=\"NVIDIA H200\"} 1073741824\n"
        ));
    }
}
