"""Split the shared real-image data into chunks small enough to travel to the GPU device machine.

The device tool sends at most 64 MiB per call, so the 2,008 images (230 MB) and the VGG16 weights
(59 MB) travel in several calls to one warm machine; each chunk keeps the shared folder layout, so
merging the chunks there rebuilds ``../shared/data``. Usage:
    python benchmarks/device/stage_data.py --data-dir ../shared/data --weights FILE --out .devdata --chunk-mb 56
"""

import argparse
import shutil
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(".devdata"))
    parser.add_argument("--chunk-mb", type=float, default=56.0)
    args = parser.parse_args()
    limit = args.chunk_mb * 1e6
    files = sorted(p for p in args.data_dir.rglob("*") if p.is_file())
    chunks, current, size = [], [], 0
    for path in files:
        n = path.stat().st_size
        if current and size + n > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(path)
        size += n
    chunks.append(current)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_dir = args.out / "c0"
    weights_dir.mkdir(exist_ok=True)
    shutil.copy2(args.weights, weights_dir / args.weights.name)
    for index, chunk in enumerate(chunks, start=1):
        for path in chunk:
            target = args.out / f"c{index}" / "data" / path.relative_to(args.data_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(path, target)
        print(f"c{index}: {len(chunk)} files, {sum(p.stat().st_size for p in chunk) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
