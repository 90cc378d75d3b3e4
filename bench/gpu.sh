#!/usr/bin/env bash
# One command for a machine with CUDA (the `device` tool's lent GPU): set up the project, run the
# mask-engine, indexing and query benchmarks on the GPU, and write every figure into one JSON:
#
#     bash bench/gpu.sh [OUT.json]        # default: $OUT/gpu-results.json, else bench/gpu-results.json
#
# No weights can be downloaded there, so ViT-B/ViT-H run with random weights (timing only: the
# predicted-IoU gate passes fewer prompts than trained weights would) and the indexing/query
# benchmarks use the bundled shapes models. Each benchmark has its own time limit; a failed one is
# recorded as such and the others still run. Written blind (no GPU was lent when it was written):
# the first session that runs it fixes what it finds.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-${OUT:-bench}/gpu-results.json}")
tmp=$(mktemp -d)

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # A machine with no package index (the `device` tool's): its own python3 holds torch; our other
  # dependencies and segsearch itself travel as wheels (`pip download`/`pip wheel` into .whl/).
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  py=python3
else
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  . .venv/bin/activate
  python -c "import torch" 2>/dev/null || pip install -q torch==2.14.1 torchvision==0.29.1
  python -c "import segsearch" 2>/dev/null || pip install -q .
  py=python
fi
cd bench  # import the installed package, not the source tree's segsearch/ (it lacks indexer/, api/)
if ! $py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: torch sees no CUDA device" >&2
  exit 1
fi
$py -c "import segsearch.cli, segsearch.indexer.pipeline, open_clip, segment_anything, qdrant_edge, pycocotools.mask, torch
print('imports ok: torch', torch.__version__, 'open_clip', open_clip.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$tmp/nvidia-smi.txt" 2>&1
# Random weights pass almost nothing through SAM's default gates (predicted IoU 0.88, stability
# 0.95), so one ViT-B run also uses open gates: every candidate reaches post-processing.
echo '{"points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.5, "box_nms_thresh": 0.7, "crop_n_layers": 0, "min_mask_region_area": 0}' > "$tmp/open-gates.params"
run() {  # run NAME LIMIT_S SCRIPT ARGS...: the script's --json output, or why it failed
  local name=$1 limit=$2
  shift 2
  case " ${GPU_SH_ONLY:-$name} " in *" $name "*) ;; *) return ;; esac  # GPU_SH_ONLY="index query": a rerun
  echo "== $name: $*" >&2
  local t0=$SECONDS
  trap 'echo "   $name: $((SECONDS - t0)) s" >&2' RETURN
  if timeout "$limit" $py "$@" --json > "$tmp/$name.json" 2> "$tmp/$name.err"; then :; else
    printf '{"error": "exit %s after %ss", "stderr_tail": %s}\n' "$?" "$((SECONDS - t0))" \
      "$(tail -c 600 "$tmp/$name.err" | $py -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" \
      > "$tmp/$name.json"
  fi
}

run amg_shapes 60 amg.py --device cuda --images 10
run amg_vit_b 90 amg.py --device cuda --model sam-vit-b --random-weights --images 3 --size 1024x768
run amg_vit_b_open_gates 100 amg.py --device cuda --model sam-vit-b --random-weights --images 3 --size 1024x768 --params "$tmp/open-gates.params"
run amg_vit_h 90 amg.py --device cuda --model sam-vit-h --random-weights --images 3 --size 1024x768
run index 100 index.py --scenes 100 --threads "$(nproc)"  # the default settings only (one core is not the question on a GPU)
run query 100 query.py --sizes 100000 --queries 200 --clip clip-vit-b-32 --random-weights

$py - "$tmp" "$out" <<'EOF'
import json, os, pathlib, platform, sys, time
import torch
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
          "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
          "cpu_cores": os.cpu_count(), "nvidia_smi": (tmp / "nvidia-smi.txt").read_text().strip()}
for f in sorted(tmp.glob("*.json")):
    text = f.read_text().strip().splitlines()
    try:
        report[f.stem] = json.loads(text[-1]) if text else {"error": "no output"}
    except ValueError:
        report[f.stem] = {"error": "unparsable output", "tail": text[-3:]}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=1))
print(json.dumps(report))
EOF
cat "$tmp"/*.err > "$(dirname "$out")/gpu-stderr.log" 2>/dev/null || true
