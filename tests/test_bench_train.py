"""benchmarks.bench_train's vision-proxy split measures what it says: both patch embeddings give the same loss and
the threaded targets the same arrays (the timings themselves are the benchmark's, not asserted here)."""

from __future__ import annotations

import math


def test_proxy_step_split_times_two_equal_variants(tiny_model_dir):
    from benchmarks.bench_train import proxy_step_split

    res = proxy_step_split(tiny_model_dir, views=9, reps=1, data_views=72)   # 72 views: two chunks, threaded
    assert res["targets_equal"] is True and res["data_equal"] is True
    assert res["loss_abs_diff"] < 1e-4                                  # float rounding only
    for key in ("step_s_conv3d", "step_s_matmul", "targets_s_one_thread", "targets_s_per_core",
                "data_s_draw_then_measure", "data_s_overlapped"):
        assert math.isfinite(res[key]) and res[key] > 0
    assert math.isclose(res["speedup_matmul_vs_conv3d"], res["step_s_conv3d"] / res["step_s_matmul"])
