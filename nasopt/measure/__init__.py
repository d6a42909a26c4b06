"""Measurements of a network: parameters, multiply-adds, latency and memory (`MeasureConfig`), the
latency table, energy per inference, the hardware profile, the int8 flash and SRAM budgets, and the
zero-cost proxies of an untrained network (`zero_cost`: naswot, synflow, snip, grad_norm, jacob_cov), and the
int8 model of a trained network in onnxruntime (`int8_metrics`, `Calibration`).
"""

from nasopt.measure._budgets import Step, activation_steps, flash_bytes, flash_kb, sram_bytes, sram_kb
from nasopt.measure._energy import (
    PJ_PER_DRAM_BYTE,
    PJ_PER_MAC,
    PJ_PER_SRAM_BYTE,
    energy_per_inference,
    estimate_energy,
    rapl_domains,
)
from nasopt.measure._int8 import INT8_METRICS, Calibration, int8_metrics
from nasopt.measure._latency_build import build_table
from nasopt.measure._latency_table import (
    FORMAT,
    LatencyTable,
    Slot,
    default_path,
    predicted_latency,
    record_slots,
    shape_key,
    space_slug,
)
from nasopt.measure._metrics import (
    Latency,
    MeasureConfig,
    count_macs,
    count_params,
    device_name,
    flop_counter_macs,
    measure_latency,
    peak_live_bytes,
    peak_memory,
)
from nasopt.measure._profile import profile_device, throughput
from nasopt.measure._proxies import (
    PROXIES,
    grad_norm,
    jacob_cov,
    naswot,
    proxy_batch,
    snip,
    synflow,
    zero_cost,
)

__all__ = ['energy_per_inference', 'estimate_energy', 'rapl_domains', 'PJ_PER_MAC', 'PJ_PER_DRAM_BYTE', 'PJ_PER_SRAM_BYTE', 'FORMAT', 'Slot', 'LatencyTable', 'build_table', 'predicted_latency', 'record_slots', 'default_path', 'space_slug', 'shape_key', 'MeasureConfig', 'count_params', 'count_macs', 'flop_counter_macs', 'Latency', 'measure_latency', 'peak_memory', 'peak_live_bytes', 'device_name', 'profile_device', 'throughput',
           'flash_bytes', 'flash_kb', 'sram_bytes', 'sram_kb', 'activation_steps', 'Step',
           'PROXIES', 'zero_cost', 'proxy_batch', 'naswot', 'synflow', 'snip', 'grad_norm', 'jacob_cov',
           'INT8_METRICS', 'Calibration', 'int8_metrics']
