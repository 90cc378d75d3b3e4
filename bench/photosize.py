"""End to end cost of one photo by its size, with the bundled models: decode, SAM, post-processing,
crops, CLIP and store, through ``Library.index`` at the default settings, for a 4, 12 and 24 MP
photo-like JPEG (a shapes-world scene rendered at that size), both bundled SAM families, with the
working resolution (``mask_side`` 2048, the default) and, as the baseline in the same run, masks
at every photo's own size (``mask_side`` 0).

    python bench/photosize.py                        # both families, 4/12/24 MP, both settings
    python bench/photosize.py --sam sam-shapes-tiny --sizes 4,24 --json

Each (model, setting, size) runs in a fresh process: a small photo is indexed first (models loaded,
allocator warm), then the timed photo; s/photo excludes model loading. Peak RSS is the process's.
Prints s/photo, the SAM / crops stage seconds and the ratio to the 4 MP photo in the same setting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 20_000_005  # a demo-split shapes scene (two shapes, a background)


def child(sam: str, clip: str, side: int, mp: float, workdir: Path) -> dict:
    import resource

    from PIL import Image

    from segsearch import Library
    from segsearch.eval.shapes import make_scene

    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    scene = Image.fromarray(make_scene(SEED).image)
    warm, photo = workdir / "warm", workdir / "photo"
    warm.mkdir()
    photo.mkdir()
    scene.save(warm / "warm.jpg", quality=92)
    scene.resize((w, h), Image.BICUBIC).save(photo / f"photo-{mp:g}mp.jpg", quality=92)
    with Library(workdir / "data", sam=sam, clip=clip, mask_side=side) as lib:
        lib.index([str(warm)])
        t0 = time.perf_counter()
        r = lib.index([str(photo)])
        seconds = time.perf_counter() - t0
    assert r.indexed == 1, r
    stages = {k: round(v, 3) for k, v in r.stages.items() if v >= 0.001}
    return {
        "sam": sam,
        "mask_side": side,
        "megapixels": mp,
        "size": f"{w}x{h}",
        "s_per_photo": round(seconds, 3),
        "segments": r.segments,
        "stages_s": stages,
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam", default="sam-shapes-tiny,sam2-shapes-tiny")
    ap.add_argument("--clip", default="clip-shapes-tiny")
    ap.add_argument("--sizes", default="4,12,24", help="megapixels, comma-separated (the first is the baseline)")
    ap.add_argument("--sides", default="2048,0", help="mask_side settings, comma-separated (0: full size)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sam, side, mp, workdir = args.child
        print(json.dumps(child(sam, args.clip, int(side), float(mp), Path(workdir))))
        return 0
    sizes = [float(s) for s in args.sizes.split(",")]
    rows = []
    for sam in args.sam.split(","):
        for side in (int(s) for s in args.sides.split(",")):
            for mp in sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, __file__, "--clip", args.clip, "--child", sam, str(side), str(mp), tmp]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                first = (sam, side, sizes[0])
                base = next((r for r in rows if (r["sam"], r["mask_side"], r["megapixels"]) == first), row)
                row["vs_first_size"] = round(row["s_per_photo"] / base["s_per_photo"], 2)
                rows.append(row)
                if not args.json:
                    st = row["stages_s"]
                    sam_s = sum(v for k, v in st.items() if k.startswith("sam"))
                    print(
                        f"{sam:18s} side {side:5d} {mp:5g} MP {row['s_per_photo']:6.2f} s/photo "
                        f"(decode {st.get('decode', 0):.2f}, SAM {sam_s:.2f}, crops {st.get('crops', 0):.2f}, "
                        f"clip {st.get('clip', 0):.2f})  x{row['vs_first_size']:.2f} of {sizes[0]:g} MP  "
                        f"peak {row['peak_mib']} MiB  {row['segments']} segments",
                        flush=True,
                    )
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
