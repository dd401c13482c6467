#!/usr/bin/env bash
# One device call: the GPU tests, then the benchmarks, logs and JSON under $OUT.
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_run.sh [ops|ops-tests|models|models-tests|model-bench|all|rows|rows-train|where|caps|inmodel|projacc|wgrad|runs|lanes|lanes-inductor|scan-ncu|ssd-passing-bwd|ssd-passing-bwd-probe|ssd|ssd-passing-fwd|ssd-chunks|ssd-sweeps-fwd|ssd-sweeps-bwd|ssd-db-split|ssd-eager|ssd-fused-cumsum|ssd-grid-order|host-arith|launch|ssd-side-stream|norms|eager-paths|ssd-final|ssd-host|ssd-ncu|ssd-caps|ssd-bench-streams|ssd-tests|ssd-tests-streams|other-device|ssd-persistent|ssd-even|ssd-dx-occupancy|ssd-dx-one-stage|ssd-chunk256|ssd-op-profile|ssd-head-grads|models-tests-ssd|ssd-gate-flat|ssd-keep-states|ssd-keep-states-train|ssd-tma|ssd-tma-dev|aoti-cuda|aoti-plain|aoti-ops|aoti-load|aoti-models|aoti-mamba2|ssd-symint|ssd-s36|ssd-s37|ssd-plans|ssd-s37-final|ssd-s37-rest|launch-s37]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
# The GPU tests take longer than one device call allows (10 minutes) beside anything else: on an H100 in the
# twenty-sixth session tests/ops with test_compat.py took about 9-10 minutes, tests/models about 6. So they have cases
# of their own (ops-tests, models-tests), each with most of a call; if a limit cuts one, run the tests it did not
# reach by node id in another call. "all" runs the three in turn (several calls' worth).
if [[ $what == ops-tests || $what == all ]]; then
  timeout 590 python3 -m pytest -q -m gpu tests/ops tests/test_compat.py -p no:cacheprovider --durations=10 2>&1 | tee "$OUT/gpu_tests_ops.log" | tail -30
fi
if [[ $what == ops || $what == all ]]; then
  for b in selective_scan causal_conv1d selective_state_update norms ssd; do
    echo "== bench_$b"
    timeout 200 python3 -m benchmarks.bench_$b --out "$OUT/bench_$b.json" 2>&1 | tail -40
  done 2>&1 | tee "$OUT/bench_ops.log"
fi
if [[ $what == models-tests || $what == models || $what == all ]]; then
  timeout 590 python3 -m pytest -q -m gpu tests/models -p no:cacheprovider --durations=10 2>&1 | tee "$OUT/gpu_tests_models.log" | tail -30
fi
if [[ $what == rows ]]; then
  # The conv row kernels for channel-last x: their tests on the GPU, then the probe's sweep
  # against the general kernels (about 4 minutes in all).
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/ops/test_causal_conv1d.py -k "gpu or direct or rows" 2>&1 | tee "$OUT/gpu_tests_conv.log" | tail -5
  timeout 200 python3 -m benchmarks.probes.conv_probe --parts m2 --out "$OUT/conv_probe.json" 2>&1 | tee "$OUT/conv_probe.log" | tail -30
fi
if [[ $what == rows-train ]]; then
  # Mamba-2's graphed training step with the general conv kernels and with the row kernels, alternating (a call
  # of its own: about 80 s per variant)
  timeout 560 python3 -m benchmarks.probes.train_ab --arch mamba2 --mamba2 conv-general conv-rows conv-general conv-rows --graph --out "$OUT/train_ab.json" 2>&1 | tee "$OUT/train_ab.log" | tail -12
fi
if [[ $what == where ]]; then
  # Where a training step's time goes, for both models: the profiled step's kernels and idle gaps, then each
  # block's Inductor code with the source nodes of every generated kernel (the layout copies). About 4 minutes.
  timeout 300 python3 -m benchmarks.probes.profile_model --arch mamba1 mamba2 --cases train --out "$OUT" 2>&1 | tail -8
  timeout 200 python3 -m benchmarks.probes.block_code --arch mamba1 mamba2 --out "$OUT" 2>&1 | tail -5
fi
if [[ $what == caps ]]; then
  # The scan launchers per register cap (selective_scan_triton._FWD_MAXNREG / _BWD_MAXNREG), three rounds, about
  # 2 minutes.
  timeout 300 python3 -m benchmarks.probes.scan_variants --maxnreg 0 200 168 128 --small-only --out "$OUT/scan_caps.json" 2>&1 | tee "$OUT/scan_caps.log" | tail -14
  # and the cross-entropy kernel's two log-sum-exp schemes over its configurations (about a minute)
  timeout 200 python3 -m benchmarks.probes.ce_probe --parts rows --out "$OUT/ce_rows.json" 2>&1 | tee "$OUT/ce_rows.log" | tail -20
fi
if [[ $what == inmodel ]]; then
  # The scan forward inside the compiled Mamba-1 step against its eager launch, binaries side by side, and both
  # binaries' specialisation (about 80 s),
  timeout 200 python3 -m benchmarks.probes.scan_in_model --out "$OUT/scan_in_model.json" 2>&1 | tee "$OUT/scan_in_model.log" | grep -v "^{" | tail -20
  # then Mamba-1's graphed step with every triton_op left whole (their kernels as Triton's JIT builds them) against
  # the default (about 3 minutes)
  timeout 300 python3 -m benchmarks.probes.train_ab --arch mamba1 --mamba1 new ops-opaque new ops-opaque --graph --out "$OUT/train_ab_opaque.json" 2>&1 | tee "$OUT/train_ab_opaque.log" | grep "^|"
fi
if [[ $what == projacc ]]; then
  # Mamba-1's projection gradients summed in one launch (mixers.ACCUMULATE_IN_PROJ_GRADS / _X_PROJ_GRADS): the
  # add_matmul tests and probe, the bf16 compiled step against eager, then the graphed 130M step with both on (the
  # defaults) against both off, the first variant discarded (about 6 minutes)
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/ops/test_add_matmul.py 2>&1 | tail -2
  timeout 100 python3 -m benchmarks.probes.add_matmul_probe --out "$OUT/add_matmul_probe.json" 2>&1 | grep "^|"
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "bf16_training" 2>&1 | tail -3
  timeout 330 python3 -m benchmarks.probes.train_ab --arch mamba1 --mamba1 new proj-sum new proj-sum --graph --discard-first --out "$OUT/train_ab_projacc.json" 2>&1 | tee "$OUT/train_ab_projacc.log" | grep "^|"
fi
if [[ $what == wgrad ]]; then
  # Mamba-1's weight gradients in fp32 from the GEMMs (mixers.FP32_WEIGHT_GRADS) and the embedding's gradient as
  # index_select's (model.EMBEDDING_INDEX_SELECT): matmul_into_'s GPU tests and the bf16 compiled step against eager,
  # which GEMMs bring a cuBLAS memset (gemm_memsets), then the graphed 130M step with the weight gradients in fp32,
  # cast back from bf16 (the default) and both switches off, twice each, the first variant discarded (about 8
  # minutes)
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_add_matmul.py 2>&1 | tail -2
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "bf16_training" 2>&1 | tail -3
  timeout 100 python3 -m benchmarks.probes.gemm_memsets --out "$OUT/gemm_memsets.json" 2>&1 | grep "^|"
  timeout 400 python3 -m benchmarks.probes.train_ab --arch mamba1 --mamba1 wgrad-fp32 new both-old wgrad-fp32 new both-old --graph --discard-first --out "$OUT/train_ab_wgrad.json" 2>&1 | tee "$OUT/train_ab_wgrad.log" | grep "^|"
fi
if [[ $what == runs ]]; then
  # The conv's run-per-thread backward: the conv tests on the GPU, the probe's configurations against the pair
  # kernel, then Mamba-1's graphed 130M step with it (the default) against the pair kernel, twice each, the first
  # variant discarded (about 7 minutes)
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/ops/test_causal_conv1d.py -k "gpu or direct or runs" 2>&1 | tee "$OUT/gpu_tests_conv.log" | tail -3
  timeout 120 python3 -m benchmarks.probes.conv_probe --parts runs --out "$OUT/conv_runs.json" 2>&1 | tee "$OUT/conv_runs.log" | grep "^|"
  timeout 300 python3 -m benchmarks.probes.train_ab --arch mamba1 --mamba1 new conv-pairs new conv-pairs --graph --discard-first --out "$OUT/train_ab_runs.json" 2>&1 | tee "$OUT/train_ab_runs.log" | grep "^|"
fi
if [[ $what == model-bench || $what == all ]]; then
  # Training (both models, ~2 min) comes first; the generation cases take 2-3 min each to compile, so 450 s
  # covers about two of the six: run `bench_model --cases generate --arch mamba1` (or mamba2) in calls of their own.
  timeout 450 python3 -m benchmarks.bench_model --regional --out "$OUT/bench_model.json" 2>&1 | tee "$OUT/bench_model.log" | tail -60
fi
if [[ $what == lanes ]]; then
  # The scan forward's lane shuffles: the scan's GPU tests (about 4 minutes), then the forward's blocks with and
  # without the lanes (and with y summed per step rather than per block), at both shapes (about 2 minutes)
  timeout 330 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_selective_scan.py 2>&1 | tee "$OUT/gpu_tests_scan.log" | tail -3
  timeout 240 python3 -m benchmarks.probes.scan_fwd_configs --out "$OUT/scan_fwd_configs.json" --configs "[(16, 16, 1, None, None, False), (8, 16, 1, True, None, True, False), (8, 16, 1, True, None, True, True), (32, 16, 4, True, None, True, True)]" 2>&1 | grep "^| b" | cut -d"|" -f2-7
fi
if [[ $what == lanes-inductor ]]; then
  # The same blocks built by Inductor's ptxas, the op benchmark (graphed forward and forward+backward), then Mamba-1's
  # graphed training step with the lanes and without, alternating (about 4 minutes)
  P13=$(python3 -c "from mamba_compile.ops import _triton; print(_triton._inductor_ptxas.__wrapped__())")
  TRITON_PTXAS_PATH=$P13 timeout 200 python3 -m benchmarks.probes.scan_fwd_configs --small-only --out "$OUT/scan_fwd_configs13.json" --configs "[(16, 16, 1, None, None, False), (8, 16, 1, True, None, True, True), (32, 16, 4, True, None, True, True)]" 2>&1 | grep "^| b" | cut -d"|" -f2-7
  timeout 200 python3 -m benchmarks.bench_selective_scan --out "$OUT/bench_selective_scan.json" 2>&1 | tee "$OUT/bench_selective_scan.log" | grep "^| selective" | head -8
  timeout 330 python3 -m benchmarks.probes.train_ab --arch mamba1 --mamba1 new scan-nolanes new scan-nolanes --graph --out "$OUT/train_ab.json" 2>&1 | tee "$OUT/train_ab.log" | grep "^|"
fi
if [[ $what == scan-ncu ]]; then
  # ncu's scheduler, warp-state and occupancy sections for the scan forward with the lanes and without (about a minute)
  if command -v ncu >/dev/null; then
    for v in "" --no-lanes; do
      echo "== ncu $v"
      timeout 120 ncu --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section Occupancy -k regex:_selective_scan_fwd -c 1 python3 -m benchmarks.probes.scan_ncu $v 2>&1 | grep -v "^==PROF==" | tail -60
    done 2>&1 | tee "$OUT/ncu_fwd.log" | grep -E "Issued|Eligible|Active Warps|Warp Cycles|Achieved"
  else
    echo "no ncu"
  fi
fi
if [[ $what == ssd-passing-bwd ]]; then
  # The SSD backward's reverse pass in one kernel: the SSD GPU tests (about 3 minutes; ssd-passing-bwd-probe skips
  # them), then the probe against the two kernels and the op's graphed forward+backward with either (about 2)
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -9
fi
if [[ $what == ssd-passing-bwd || $what == ssd-passing-bwd-probe ]]; then
  timeout 250 python3 -m benchmarks.probes.ssd_passing_bwd --out "$OUT/ssd_passing_bwd.json" 2>&1 | tee "$OUT/ssd_passing_bwd.log" | grep "^|"
fi
if [[ $what == ssd ]]; then
  # The SSD GPU tests, Mamba-2's training-step GPU tests, and the SSD benchmark beside the reference (about 8
  # minutes; the reference from .ref/, carried)
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -9
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
  timeout 250 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\||first call"
fi
if [[ $what == ssd-eager ]]; then
  # The eager shortcut past the custom ops: its GPU test against the op, the host time of eager calls through
  # each path beside the reference's (ssd_host --pieces), then the SSD benchmark (about 7 minutes)
  timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ssd.py -k "shortcut or training_shape" 2>&1 | tee "$OUT/gpu_tests_ssd_eager.log" | tail -3
  timeout 200 python3 -m benchmarks.probes.ssd_host --pieces 2>&1 | tee "$OUT/ssd_host_pieces.log"
  timeout 250 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\||first call"
fi
if [[ $what == ssd-fused-cumsum ]]; then
  # The SSD GPU tests, Mamba-2's training-step GPU tests, then the cumsum inside the state-passing kernel against
  # the two launches (about 6 minutes)
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -9
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
  timeout 200 python3 -m benchmarks.probes.ssd_fused_cumsum --out "$OUT/ssd_fused_cumsum.json" 2>&1 | tee "$OUT/ssd_fused_cumsum.log" | grep -E "^\|"
fi
if [[ $what == ssd-grid-order ]]; then
  # chunk_scan_fwd's and dx's grids, chunk-major against tile-major, then the op with each (about 3 minutes)
  timeout 300 python3 -m benchmarks.probes.ssd_grid_order --out "$OUT/ssd_grid_order.json" 2>&1 | tee "$OUT/ssd_grid_order.log" | grep -E "^\|"
fi
if [[ $what == host-arith ]]; then
  # Eager model calls' host time with the launch arithmetic in plain Python against Triton's functions (about 2
  # minutes); the GPU tests it was checked with are the ops-tests and models-tests cases.
  timeout 200 python3 -m benchmarks.probes.host_arith --out "$OUT/host_arith.json" 2>&1 | tee "$OUT/host_arith.log" | grep -E "^\||Error"
fi
if [[ $what == ssd-dcb-split ]]; then
  # The SSD GPU tests, Mamba-2's training-step GPU tests, then dL/d(C B^T) with a group's heads split over programs,
  # and the op's forward+backward with splits 1, 2 and 4 (about 7 minutes)
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -6
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
  timeout 200 python3 -m benchmarks.probes.ssd_dcb_split --out "$OUT/ssd_dcb_split.json" 2>&1 | tee "$OUT/ssd_dcb_split.log" | grep -E "^\||Error"
fi
if [[ $what == ssd-passing-fwd ]]; then
  # chunk_state_passing_fwd's configurations, then the op with its default and with 32-step tiles, alternating
  # (about 2 minutes)
  timeout 300 python3 -m benchmarks.probes.ssd_fwd_sweep --passing-only 2>&1 | tee "$OUT/ssd_passing_fwd.log" | grep -E "^##|state_passing|^op"
fi
if [[ $what == ssd-chunks ]]; then
  # The SSD op at chunk sizes 64, 128 and 256 (the reference at 256) with errors against float64 (about 5 minutes)
  timeout 400 python3 -m benchmarks.probes.ssd_chunk_sizes --profile --out "$OUT/ssd_chunks.json" 2>&1 | tee "$OUT/ssd_chunks.log" | grep -E "^\\||kernel"
fi
if [[ $what == ssd-sweeps-fwd ]]; then
  # At the op's kernel chunk (ssd_sweep.CHUNK): chunk_scan_fwd's configurations, chunk_state_passing_fwd's (then
  # the op with a candidate), the backward's reverse pass (about 8 minutes)
  timeout 170 python3 -m benchmarks.probes.ssd_fwd_sweep --scan-only 2>&1 | tee "$OUT/ssd_scan_fwd.log" | grep -E "^##|chunk_scan|failed"
  timeout 170 python3 -m benchmarks.probes.ssd_fwd_sweep --passing-only 2>&1 | tee "$OUT/ssd_passing_fwd.log" | grep -E "^##|state_passing|^op"
  timeout 170 python3 -m benchmarks.probes.ssd_passing_bwd --out "$OUT/ssd_passing_bwd.json" 2>&1 | tee "$OUT/ssd_passing_bwd.log" | grep "^|"
fi
if [[ $what == ssd-sweeps-bwd ]]; then
  # At the op's kernel chunk: the backward kernels' configurations, then the op at chunk 128 and 256 beside the
  # reference at both (about 7 minutes: the reference autotunes at each chunk and shape)
  timeout 200 python3 -m benchmarks.probes.ssd_bwd_sweep 2>&1 | tee "$OUT/ssd_bwd_sweep.log" | grep -E "^##|ms|failed"
  timeout 350 python3 -m benchmarks.probes.ssd_chunk_sizes --chunks 128 256 --ref-chunks 128 256 --out "$OUT/ssd_chunks.json" 2>&1 | tee "$OUT/ssd_chunks.log" | grep -E "^\\|"
fi
if [[ $what == ssd-db-split ]]; then
  # dB's programs over dstate's columns against over heads: the probe (about 2 minutes), then the SSD GPU tests
  # and Mamba-2's training-step GPU tests (about 4)
  timeout 200 python3 -m benchmarks.probes.ssd_db_split --out "$OUT/ssd_db_split.json" 2>&1 | tee "$OUT/ssd_db_split.log" | grep -E "^\\||chunk|diff"
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -3
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
fi
if [[ $what == launch ]]; then
  # _triton.FastLauncher: its GPU tests and the SSD's eager-shortcut tests, the host cost per launch through Triton's
  # path and through it, eager SSD and tiny-model calls with it on and off, then the SSD benchmark beside the
  # reference (about 6 minutes; the op and model GPU tests, which launch through it too, are ops-tests and
  # models-tests)
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_fast_launch.py tests/ops/test_ssd.py -k "fast or shortcut or training_shape or misaligned or aligned" 2>&1 | tee "$OUT/gpu_tests_fast_launch.log" | tail -4
  timeout 200 python3 -m benchmarks.probes.launch_overhead 2>&1 | tee "$OUT/launch_overhead.log"
  timeout 200 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\||first call"
fi
if [[ $what == ssd-side-stream ]]; then
  # The SSD's eager backward with two kernels on a second stream (ssd.SIDE_STREAM): the SSD GPU tests, the
  # probe's graphed forward+backward with it on and off, alternating, and Mamba-2's training-step GPU tests, whose
  # CUDA graphs capture it (about 6 minutes)
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -6
  timeout 150 python3 -m benchmarks.probes.ssd_side_stream --out "$OUT/ssd_side_stream.json" 2>&1 | tee "$OUT/ssd_side_stream.log" | grep -E "^\\||Error"
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
fi
if [[ $what == norms ]]; then
  # The norms: their GPU tests (the plain-eager path past the custom ops among them), bench_norms beside the
  # reference (eager and CUDA-graph rows, the backward's rows-per-program sweep), then eager calls through the
  # plain-eager path against through the ops and the reference's (about 5 minutes; the reference from .ref/)
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_norms.py 2>&1 | tee "$OUT/gpu_tests_norms.log" | tail -3
  timeout 250 python3 -m benchmarks.bench_norms --out "$OUT/bench_norms.json" 2>&1 | tee "$OUT/bench_norms.log" | grep -E "^\\|"
  timeout 150 python3 -m benchmarks.probes.eager_paths --out "$OUT/eager_paths.json" 2>&1 | tee "$OUT/eager_paths.log" | grep -E "^\\||Error"
fi
if [[ $what == eager-paths ]]; then
  # The plain-eager paths past the custom ops (norms, causal_conv1d, selective_scan, SSD): the norm and conv GPU tests
  # and the scan's eager-path, training-shape and layout ones, the eager
  # calls through each path (about 2 minutes), then the model GPU tests, whose eager forwards, generation and
  # graphed training steps take these paths (about 6)
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_norms.py tests/ops/test_causal_conv1d.py tests/ops/test_selective_scan.py -k "not selective_scan or eager or training_shape or channel_major" 2>&1 | tee "$OUT/gpu_tests_eager_ops.log" | tail -3
  timeout 90 python3 -m benchmarks.probes.eager_paths --out "$OUT/eager_paths.json" > "$OUT/eager_paths.log" 2>&1; tail -2 "$OUT/eager_paths.log"
  timeout 340 python3 -m pytest -q -m gpu tests/models -p no:cacheprovider --durations=5 2>&1 | tee "$OUT/gpu_tests_models.log" | tail -12
fi
if [[ $what == ssd-final || $what == ssd-bench-streams ]]; then
  # bench_ssd beside the reference (eager and CUDA-graph rows, the first call in a fresh process; about 3.5 minutes,
  # the reference from .ref/, carried)
  timeout 250 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
fi
if [[ $what == ssd-final ]]; then
  # then the SSD GPU tests (about 3 minutes)
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -6
fi
if [[ $what == ssd-host ]]; then
  # Where the eager SSD forward+backward's host time goes (about 2 minutes)
  timeout 300 python3 -m benchmarks.probes.ssd_host --split --out "$OUT/ssd_host_split.json" 2>&1 | tee "$OUT/ssd_host_split.log" | grep -v "^|"
fi
if [[ $what == ssd-ncu ]]; then
  # ncu's throughput, memory, warp-state, scheduler and occupancy sections for each kernel of the SSD's forward and
  # backward at the benchmark shape, the second forward+backward (about 3 minutes)
  if command -v ncu >/dev/null; then
    timeout 400 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
      --section SchedulerStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
      -k regex:"_chunk_|_gate_bwd|_bmm_cb|_dt_bwd|_sum_parts" -s 13 -c 13 python3 -m benchmarks.probes.ssd_ncu 2>&1 \
      | grep -v "^==PROF==" > "$OUT/ncu_ssd.log"
    grep -E "^  _|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued" "$OUT/ncu_ssd.log" | head -200
  else
    echo "no ncu"
  fi
fi
if [[ $what == ssd-caps ]]; then
  # Register caps for the SSD's low-occupancy kernels: the op's graphed steps per cap, alternating (about 4 minutes)
  timeout 500 python3 -m benchmarks.probes.ssd_caps --out "$OUT/ssd_caps.json" 2>&1 | tee "$OUT/ssd_caps.log" | grep -v "^|"
fi
if [[ $what == ssd-tests || $what == ssd-tests-streams ]]; then
  # The SSD GPU tests and Mamba-2's training-step GPU tests (about 5 minutes)
  timeout 330 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -9
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
fi
if [[ $what == ssd-tests-streams || $what == ssd-bench-streams ]]; then
  # After the tests or bench_ssd above: the eager forward+backward with the backward's second stream on, off and
  # "auto", twelve interleaved rounds (about 1.5 minutes)
  timeout 200 python3 -m benchmarks.probes.ssd_host --streams 2>&1 | tee "$OUT/ssd_host_streams.log"
fi
if [[ $what == other-device ]]; then
  # Needs two GPUs (nvidia-h200-x2): a model and the ops on cuda:1 with cuda:0 current, then the fast-launch GPU tests
  # (about 3 minutes)
  timeout 400 python3 -m pytest -q -p no:cacheprovider --durations=5 tests/test_other_device.py 2>&1 | tee "$OUT/gpu_tests_other_device.log" | tail -12
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_fast_launch.py 2>&1 | tee "$OUT/gpu_tests_fast_launch.log" | tail -3
fi
if [[ $what == ssd-persistent ]]; then
  # chunk_scan_fwd on persistent grids and with z loaded early, against the op's kernel, three rounds (about 2 minutes)
  timeout 300 python3 -m benchmarks.probes.ssd_persistent --out "$OUT/ssd_persistent.json" 2>&1 | tee "$OUT/ssd_persistent.log" | grep -v "^{"
fi
if [[ $what == ssd-even ]]; then
  # chunk_scan_fwd and dx with and without bounds checks, then the op with ssd_triton.DX_EVEN / SCAN_EVEN (about 3
  # minutes)
  timeout 400 python3 -m benchmarks.probes.ssd_even --out "$OUT/ssd_even.json" 2>&1 | tee "$OUT/ssd_even.log" | grep -v "^{"
fi
if [[ $what == ssd-dx-occupancy ]]; then
  # dx with x reloaded, one stage and register caps, then the op with the candidates (about 4 minutes)
  timeout 500 python3 -m benchmarks.probes.ssd_dx_occupancy --out "$OUT/ssd_dx_occupancy.json" 2>&1 | tee "$OUT/ssd_dx_occupancy.log" | grep -v "^{"
fi
if [[ $what == ssd-dx-one-stage ]]; then
  # Where the one-stage build of dx goes wrong: shapes with and without whole tiles, each in a fresh process (about 2
  # minutes)
  timeout 500 python3 -m benchmarks.probes.ssd_dx_one_stage 2>&1 | tee "$OUT/ssd_dx_one_stage.log"
fi
if [[ $what == ssd-chunk256 ]]; then
  # The forward's two large kernels' configurations at chunk 256 (tuned at 128 since session 24), then the op at
  # chunk 128 and 256 beside the reference at 256, with the per-kernel table (about 8 minutes)
  SSD_PROBE_CHUNK=256 timeout 200 python3 -m benchmarks.probes.ssd_fwd_sweep 2>&1 | tee "$OUT/ssd_fwd_sweep256.log" | grep -E "^##|chunk_scan|state_passing|failed"
  timeout 330 python3 -m benchmarks.probes.ssd_chunk_sizes --chunks 128 256 --ref-chunks 256 --profile --out "$OUT/ssd_chunks.json" 2>&1 | tee "$OUT/ssd_chunks.log" | grep -E "^\\||kernel|^\{"
fi
if [[ $what == ssd-op-profile ]]; then
  # The aten ops of our SSD forward+backward ranked by the GPU time of their kernels, and every kernel (under a minute)
  timeout 300 python3 -m benchmarks.probes.ssd_op_profile 2>&1 | tee "$OUT/ssd_op_profile.log"
fi
if [[ $what == ssd-head-grads ]]; then
  # The backward's per-head sums in one Triton launch (session 32): the op's kernels and torch ops, bench_ssd beside
  # the reference, the SSD GPU tests (about 8 minutes)
  timeout 100 python3 -m benchmarks.probes.ssd_op_profile 2>&1 | tee "$OUT/ssd_op_profile.log" | grep -E "^##|^op|^kernel 0.0[0-9][1-9]|^kernel 0.[1-9]|head_grads"
  timeout 250 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
  timeout 230 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -4
fi
if [[ $what == models-tests-ssd ]]; then
  # The model GPU tests (about 5.5 minutes), then the SSD compat and kernel-source tests on the GPU (about 1.5)
  timeout 420 python3 -m pytest -q -m gpu tests/models -p no:cacheprovider --durations=5 2>&1 | tee "$OUT/gpu_tests_models.log" | tail -12
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_compat.py tests/ops/test_kernel_sources.py 2>&1 | tee "$OUT/gpu_tests_compat.log" | tail -4
fi
if [[ $what == ssd-gate-flat ]]; then
  # gate_bwd over flat arrays against per head, then the op with each (about 2 minutes); then the SSD GPU tests and
  # Mamba-2's training-step GPU tests (about 5)
  timeout 200 python3 -m benchmarks.probes.ssd_gate_flat --out "$OUT/ssd_gate_flat.json" 2>&1 | tee "$OUT/ssd_gate_flat.log" | grep -v "^{"
  timeout 250 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -3
  timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
fi
if [[ $what == ssd-keep-states ]]; then
  # The SSD backward from the forward's kept chunk states against recomputing them: memory held, gradients, the op's
  # graphed forward+backward (about 2 minutes); then the SSD GPU tests (about 4) and Mamba-2's training-step GPU
  # tests (about 2)
  timeout 200 python3 -m benchmarks.probes.ssd_keep_states --out "$OUT/ssd_keep_states.json" 2>&1 | tee "$OUT/ssd_keep_states.log" | grep -v "^{"
  timeout 250 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ssd.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -3
  timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_gpu.py -k "mamba2 and (training or train_step)" 2>&1 | tee "$OUT/gpu_tests_m2.log" | tail -3
fi
if [[ $what == ssd-keep-states-train ]]; then
  # Mamba-2's training step (regional compile, eager and graphed) with the SSD's kept chunk states and recomputing
  # them, alternating, with peak memory (about 5 minutes); then bench_ssd beside the reference (about 4)
  timeout 330 python3 -m benchmarks.probes.train_ab --arch mamba2 --mamba2 new ssd-recompute new ssd-recompute --out "$OUT/train_ab.json" 2>&1 | tee "$OUT/train_ab.log" | grep -E "^\{|discarded|Error"
  timeout 250 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
fi
if [[ $what == ssd-tma ]]; then
  # chunk_scan_fwd and dx with tensor-descriptor (TMA) loads and stores: the variants against the default kernels at
  # small shapes, then per-kernel graph medians at both benchmark shapes (about 3 minutes)
  timeout 120 python3 -m benchmarks.probes.ssd_tma --check 2>&1 | tee "$OUT/ssd_tma_check.log" | tail -4
  timeout 400 python3 -m benchmarks.probes.ssd_tma --out "$OUT/ssd_tma.json" 2>&1 | tee "$OUT/ssd_tma.log" | grep -v "^{"
fi
if [[ $what == ssd-tma-dev ]]; then
  # Tensor descriptors built on the device: a traced triton_op with them (eager, Inductor, AOTInductor), then the
  # three kernels' variants with device-built descriptors beside the host-built ones and the defaults (about 4 minutes)
  timeout 200 python3 -m benchmarks.probes.ssd_tma --inductor-check 2>&1 | tee "$OUT/ssd_tma_inductor.log" | grep -E "^(eager|compile|aoti)"
  timeout 120 python3 -m benchmarks.probes.ssd_tma --check 2>&1 | tee "$OUT/ssd_tma_check.log" | tail -4
  timeout 300 python3 -m benchmarks.probes.ssd_tma --out "$OUT/ssd_tma.json" 2>&1 | tee "$OUT/ssd_tma.log" | grep -v "^{"
fi
if [[ $what == aoti-cuda ]]; then
  # CUDA AOTInductor packages (ops and a small Mamba-2) loaded in a fresh process and in this one, then the SSD GPU
  # tests of whole chunks and Inductor (about 8 minutes in all)
  timeout 300 python3 -m benchmarks.probes.aoti_cuda 2>&1 | tee "$OUT/aoti_cuda.log" | grep -E "^(norm|ssd|mamba2)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ops/test_ssd.py -k "whole or inductor" 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -4
fi
if [[ $what == aoti-plain ]]; then
  # Whether any CUDA AOTInductor package loads here: torch's own kernels only, then one op of this package, each in
  # a fresh process (about 2 minutes)
  timeout 300 python3 -m benchmarks.probes.aoti_cuda --cases plain norm --fresh-only 2>&1 | tee "$OUT/aoti_cuda.log" | grep -E "^(plain|norm)" | cut -c1-900
fi
if [[ $what == aoti-load ]]; then
  # Why packages crash on load here: the machine's C++ compiler and runtimes, then a package of torch's own kernels
  # for the CPU and for CUDA, loaded plainly and with the compiler's libstdc++ preloaded, then one linked with a
  # static libstdc++ (about 5 minutes)
  timeout 560 python3 -m benchmarks.probes.aoti_cuda_load --out "$OUT" --variants cpu cpu-preload cuda cuda-preload cpu-static 2>&1 | tee "$OUT/aoti_cuda_load.log" | grep -v Warning | tail -60
fi
if [[ $what == aoti-models ]]; then
  # CUDA packages of Mamba-1 and Mamba-2 loaded with mamba_compile.load_package in a fresh process, against eager
  # (about 5 minutes: two package builds)
  timeout 540 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_gpu.py -k aoti -v --durations=5 2>&1 | tee "$OUT/gpu_tests_aoti.log" | tail -15
fi
if [[ $what == aoti-mamba2 ]]; then
  # After the chunked layouts' allocations stopped guarding on the chunk count: two SSD oracle cases (the backward's
  # dD partial sums moved), then the Mamba-2 CUDA package exported with lengths from 2 (about 5 minutes)
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ops/test_ssd.py -k "oracle and (D2d-noz-chunk64 or fp32-l520)" -v 2>&1 | tee "$OUT/gpu_tests_ssd.log" | grep -E "PASS|FAIL|passed|failed"
  timeout 400 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_gpu.py -k "aoti and mamba2" -v --durations=3 2>&1 | tee "$OUT/gpu_tests_aoti.log" | tail -8
fi
if [[ $what == aoti-ops ]]; then
  # As aoti-plain, then an SSD package (a partial last chunk), each in a fresh process (about 6 minutes)
  timeout 480 python3 -m benchmarks.probes.aoti_cuda --cases plain norm ssd-partial --fresh-only 2>&1 | tee "$OUT/aoti_cuda.log" | grep -E "^(plain|norm|ssd)" | cut -c1-700
fi
if [[ $what == ssd-symint ]]; then
  # Session 36: the SSD Inductor GPU tests (dynamic=True with the chunk size from a closure), then the Mamba-2 and
  # shared model GPU tests without the AOTInductor builds, then the compat and kernel-source tests (about 8 minutes)
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ssd.py -k "compile_inductor" 2>&1 | tee "$OUT/gpu_tests_ssd_inductor.log" | tail -3
  timeout 380 python3 -m pytest -q -m gpu tests/models -p no:cacheprovider --durations=5 -k "not aoti and not mamba1" 2>&1 | tee "$OUT/gpu_tests_models.log" | tail -12
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_compat.py tests/ops/test_kernel_sources.py 2>&1 | tee "$OUT/gpu_tests_compat.log" | tail -4
fi
if [[ $what == ssd-s36 ]]; then
  # Session 36's final check: bench_ssd beside the reference (first calls with the launchers built in the compile
  # threads; about 4 minutes), then the SSD compile tests (the backward's head split chosen without a guard) and
  # Mamba-2's training-step tests (about 4 minutes)
  timeout 260 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py tests/models/test_gpu.py -k "(compile or training or train_step) and not mamba1" 2>&1 | tee "$OUT/gpu_tests.log" | tail -12
fi
if [[ $what == ssd-s37 ]]; then
  # Session 37's first check: the eager forward's host time on this host, by layer and profiled (no grad, tiny
  # shape), the eager paths beside the reference (--pieces), then bench_ssd beside the reference (about 8 minutes)
  timeout 150 python3 -m benchmarks.probes.ssd_host --profile 2>&1 | tee "$OUT/ssd_host.log" | head -40
  timeout 170 python3 -m benchmarks.probes.ssd_host --pieces 2>&1 | tee "$OUT/ssd_host_pieces.log"
  timeout 260 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
fi
if [[ $what == ssd-plans ]]; then
  # Eager launch plans: their GPU tests and the eager-path tests beside them (about 2 minutes), then the eager
  # calls with plans and without, alternating, beside the reference (benchmarks/probes/ssd_plans.py, about 6)
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py -k "plans or eager or second_stream or graph" 2>&1 | tee "$OUT/gpu_tests_plans.log" | tail -12
  timeout 380 python3 -m benchmarks.probes.ssd_plans --out "$OUT/ssd_plans.json" 2>&1 | tee "$OUT/ssd_plans.log" | grep -v "^| b\|^|---\|^| shape"
fi
if [[ $what == ssd-s37-final ]]; then
  # bench_ssd beside the reference (about 4 minutes), then every SSD and gated-norm GPU test (about 5)
  timeout 260 python3 -m benchmarks.bench_ssd --out "$OUT/bench_ssd.json" 2>&1 | tee "$OUT/bench_ssd.log" | grep -E "^\\||first call|^ours|^reference"
  timeout 320 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py tests/ops/test_norms.py 2>&1 | tee "$OUT/gpu_tests_ssd.log" | tail -12
fi
if [[ $what == ssd-s37-rest ]]; then
  # What ssd-s37-final's time limit cut: the last SSD GPU tests, then Mamba-2's training-step GPU tests, whose CUDA
  # graphs are captured from eager steps (about 6 minutes)
  timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/ops/test_ssd.py tests/models/test_gpu.py -k "non_contiguous or compile_inductor or ((training or train_step) and not mamba1)" 2>&1 | tee "$OUT/gpu_tests_rest.log" | tail -12
fi
if [[ $what == launch-s37 ]]; then
  # FastLauncher's key now shared with the launch plans (_triton._fast_key): the fast-launch and norm GPU tests
  # (about 2 minutes)
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 tests/ops/test_fast_launch.py tests/ops/test_norms.py 2>&1 | tee "$OUT/gpu_tests_launch.log" | tail -8
fi
