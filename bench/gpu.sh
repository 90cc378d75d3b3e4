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
out=${1:-${OUT:-bench}/gpu-results.json}
tmp=$(mktemp -d)

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q torch==2.14.1 torchvision==0.29.1
python -c "import segsearch" 2>/dev/null || pip install -q -e .
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: torch sees no CUDA device" >&2
  exit 1
fi

run() {  # run NAME LIMIT_S SCRIPT ARGS...: the script's --json output, or why it failed
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local t0=$SECONDS
  if timeout "$limit" python "$@" --json > "$tmp/$name.json" 2> "$tmp/$name.err"; then :; else
    printf '{"error": "exit %s after %ss", "stderr_tail": %s}\n' "$?" "$((SECONDS - t0))" \
      "$(tail -c 600 "$tmp/$name.err" | python -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" \
      > "$tmp/$name.json"
  fi
}

run amg_vit_b 300 bench/amg.py --device cuda --model sam-vit-b --random-weights --images 3 --size 1024x768 --points-per-side 32
run amg_vit_h 300 bench/amg.py --device cuda --model sam-vit-h --random-weights --images 2 --size 1024x768 --points-per-side 32 --skip-reference
run amg_shapes 180 bench/amg.py --device cuda --images 10
run index 300 bench/index.py --scenes 100
run query 300 bench/query.py --sizes 100000 --queries 300

python - "$tmp" "$out" <<'EOF'
import json, pathlib, platform, sys, time
import torch
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
          "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
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
