"""scripts/bench_throughput.py's labels: a bench whose kernels were held to a narrower instruction
set than the CPU has (`make bench-avx2`) says so, so its table is never read as the CPU's own."""

from __future__ import annotations

import subprocess

import pytest
import torch

from tests.helpers import ROOT, script_module


def test_the_machine_line_names_an_instruction_set_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = script_module("bench_throughput", monkeypatch)
    for name in bench.ISA_HOLDS:
        monkeypatch.delenv(name, raising=False)
    assert "held" not in bench.machine(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = bench.machine(torch.device("cpu"))
    # torch's capability is what the process really runs at, whatever the variables say.
    assert (f"kernels held by ONEDNN_MAX_CPU_ISA=AVX2, torch's CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}") in line


def test_make_bench_avx2_holds_both_torch_and_onednn() -> None:
    recipe = subprocess.run(["make", "-n", "bench-avx2", "BIN=.venv/bin"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    command = next(line for line in recipe.replace("\\\n", " ").splitlines()
                   if "bench_throughput.py" in line)
    assert "ATEN_CPU_CAPABILITY=avx2" in command and "ONEDNN_MAX_CPU_ISA=AVX2" in command
    assert "--append" in command  # a dated section: the CPU's own table stays
