"""The report's own timing line: measured wall and CPU time, and the load it ran under."""

from __future__ import annotations

from attnprobe.demo.report import timing_sentence


def test_timing_line_states_wall_cpu_and_load():
    demo = {"seconds": 241.4, "cpu_seconds": 452.0, "process_seconds": 246.0,
            "machine": {"cpus": 2, "torch_threads": 2, "load_average_start": [0.3, 0.2, 0.1],
                        "load_average_end": [1.9, 1.5, 0.8]}}
    text = timing_sentence(demo)
    assert "**241 s** of wall time" in text and "246 s since the process started" in text
    assert "452 s of CPU time" in text and "0.30 at the start and 1.90 at the end" in text
    assert "other processes" not in text
    busy = {**demo, "machine": {**demo["machine"], "load_average_end": [9.5, 9.0, 8.0]}}
    assert "other processes shared the CPUs" in timing_sentence(busy)
    # an older demo.json without CPU or process times still reads
    assert timing_sentence({"seconds": 10.0}).startswith("The run took **10 s** of wall time on ? CPU(s)")
