"""Throughput and model FLOPs utilisation (MFU).

MFU = model FLOPs per second / the devices' peak FLOPs per second, where model
FLOPs come from the model's documented formula (`flops_per_step`: 3x the
forward matmul and attention FLOPs; rematerialisation is not counted, as in
the PaLM paper's definition). Peaks are dense bfloat16 numbers from vendor
sheets; a device not in the table (a CPU) has no MFU and we report FLOPs/s.
"""

from __future__ import annotations

from typing import Optional

import jax

# Dense bf16 peak FLOPs/s per device, matched on jax's device_kind.
PEAK_FLOPS = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "L4": 121e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
}


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def mfu(flops_per_s: float, num_devices: Optional[int] = None) -> Optional[float]:
  peak = peak_flops_per_device()
  if peak is None:
    return None
  return flops_per_s / (peak * (num_devices or jax.device_count()))
