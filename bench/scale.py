"""Memory and time of the pipeline against dataset size, the code before the image store (train and
evaluate decode all of data/raw into RAM) against the code with it (stage pack decodes once into
data/store, train and evaluate read it), on the same generated datasets in one run:

    git worktree add /tmp/old <commit-before-the-store>
    python -m bench.scale --old /tmp/old --sizes 1000 5000 20000             # --new: this checkout
    python -m bench.scale --old /tmp/old --new . --sizes 40 80 --work /tmp/scale   # a quick try

Per N: N seeded JPEG photos in --work (outside the repository, reused), 4 classes told apart by colour and shape,
10% at 4032x3024. Per N and checkout: a project of its code, params.yaml (data.url the photos, mode frozen alone,
1 epoch, cached_views 1, train.workers 0), dvc.yaml; download, split, pack (new path only), train, evaluate run
there as `python -m stages.<name>`; wall and CPU seconds (user + system: steadier when shared), peak RSS (os.wait4);
new/old ratios, growth across N, targets. 2 cores: ~40 min for N=1,000 and 5,000 on both paths, +1 h for 20,000."""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from bench import ROOT, copy_code

MODE = "frozen"
MEASURED = ("train", "evaluate")
GENERATOR = 1  # bump when the generated images change: earlier ones are then not reused
PHONE = (4032, 3024)
PHONE_SHARE = 0.1
SMALL = ((500, 375), (640, 480), (800, 600), (600, 800))
VARIANTS = 2  # base images per class and size; every image is a cheap variation of one
PALETTE = ((200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160), (40, 180, 180))
SIDES = (3, 4, 6, 24, 5, 8)  # each class's shape: a regular polygon of this many sides
CLASSES = 4
MIN_PER_CLASS = 5
# the targets, printed beside the numbers
TARGET_KB_PER_IMAGE = 16
TARGET_GIB = 3
TARGET_N = 20_000
TARGET_TIME_SPREAD = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help="checkout of the code before the store (none: new path only)")
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout of the code with the store (default: this)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000], help="dataset sizes N")
    parser.add_argument("--old-max", type=int, default=20000, help="largest N the old path runs at")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pipeline-scale-bench",
                        help="folder for the datasets and projects, outside the repository (reused)")
    parser.add_argument("--layout", choices=("random", "imagefolder"), default="random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating images")
    parser.add_argument("--keep", action="store_true", help="keep each project folder after its run")
    return check_args(parser.parse_args(argv))


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every argument checked, or one line naming the bad one and exit; paths resolved, sizes sorted."""
    refuse = lambda message: sys.exit(f"bench.scale: {message}")
    for option in ("old", "new"):
        if (code := getattr(args, option)) is not None:
            setattr(args, option, code := code.expanduser().resolve())
            if missing := [f for f in ("stages/train.py", "params.yaml", "dvc.yaml") if not (code / f).is_file()]:
                refuse(f"--{option} {code}: not a checkout of the pipeline (no {', '.join(missing)})")
    if min(args.sizes) < MIN_PER_CLASS * CLASSES:
        refuse(f"--sizes {min(args.sizes)}: at least {MIN_PER_CLASS * CLASSES} ({MIN_PER_CLASS} images a class)")
    args.work = args.work.expanduser().resolve()
    for code in (args.old, args.new, ROOT):
        if code is not None and (args.work == code or code in args.work.parents):
            refuse(f"--work {args.work}: inside the checkout {code}; name a folder outside it")
    if args.work.exists() and not args.work.is_dir():
        refuse(f"--work {args.work}: not a folder")
    args.sizes = sorted(set(args.sizes))
    return args


def image_spec(i: int, seed: int) -> dict:  # all that decides image i: class, size, base, variation
    rng = random.Random(f"{seed}-image-{i}")
    return {"i": i, "label": i % CLASSES, "size": PHONE if rng.random() < PHONE_SHARE else rng.choice(SMALL),
            "variant": rng.randrange(VARIANTS), "seed": seed, "flip": rng.random() < 0.5,
            "at": [rng.random() for _ in range(4)], "colour": tuple(rng.randrange(256) for _ in range(3))}


@functools.cache
def base_image(seed: int, label: int, size: tuple[int, int], variant: int) -> Image.Image:
    """A photo 10% larger than `size`: the class colour jittered, random boxes, the class's own shape in a
    shade of it, and noise at two scales, so that it encodes and decodes like a photo (phone-sized: 2.3 MB)."""
    rng = random.Random(f"{seed}-base-{label}-{size}-{variant}")
    w = int(size[0] * 1.1)
    h = int(size[1] * 1.1)
    image = Image.new("RGB", (w, h), tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in PALETTE[label]))
    draw = ImageDraw.Draw(image)
    shade = tuple(max(0, c - 90) for c in PALETTE[label])
    for _ in range(3):
        x = rng.uniform(0, w)
        y = rng.uniform(0, h)
        draw.rectangle([x, y, x + w / 5, y + h / 5], fill=tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        circle = (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.2) * min(w, h))
        draw.regular_polygon(circle, SIDES[label], rotation=rng.uniform(0, 360), fill=shade)
    noise = np.random.default_rng([seed, label, size[0], size[1], variant])
    coarse = Image.fromarray(noise.integers(0, 60, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)).resize((w, h))
    pixels = np.asarray(image, dtype=np.int16) + np.asarray(coarse, dtype=np.int16) - 30
    pixels += noise.integers(-12, 13, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photo(job: tuple[dict, str]) -> None:
    """Image `spec` as a JPEG at quality 85: a shifted crop of its base, maybe mirrored, with a box of its
    own, and its index in a corner's pixels (no two files alike: split would drop duplicates)."""
    spec, path = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    w, h = spec["size"]
    base = base_image(spec["seed"], spec["label"], spec["size"], spec["variant"])
    dx, dy, bx, by = spec["at"]
    left = int(dx * (base.width - w))
    top = int(dy * (base.height - h))
    image = base.crop((left, top, left + w, top + h))
    if spec["flip"]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    draw = ImageDraw.Draw(image)
    i = spec["i"]
    draw.rectangle([bx * w * 0.8, by * h * 0.8, (bx * 0.8 + 0.1) * w, (by * 0.8 + 0.1) * h], fill=spec["colour"])
    draw.rectangle([0, 0, 15, 15], fill=(i % 256, i // 256 % 256, i // 65536 % 256))
    image.save(path, format="JPEG", quality=85)


def generate(n: int, args: argparse.Namespace) -> tuple[Path, float, int]:
    """The dataset of n images in the layout (reused where complete): its folder, seconds, images written.
    Images are written once into a pool (0..n-1, grown for a larger N); datasets are hard links into it."""
    generated = lambda folder: int((folder / ".generated").read_text()) if (folder / ".generated").is_file() else 0
    key = f"s{args.seed}-c{CLASSES}-g{GENERATOR}"
    pool = args.work / f"pool-{key}"
    dataset = args.work / f"data-{args.layout}-{n}-{key}"
    started = time.perf_counter()
    done = generated(pool)
    if generated(dataset) == n:
        return dataset, 0.0, 0
    name = [f"class_{i % CLASSES}/img_{i:06d}.jpg" for i in range(n)]
    jobs = sorted(((image_spec(i, args.seed), str(pool / name[i])) for i in range(done, n)),
                  key=lambda job: (job[0]["label"], job[0]["size"], job[0]["variant"]))  # a worker reuses bases
    with Pool(max(1, min(args.jobs, len(jobs)))) as workers:
        list(workers.imap_unordered(write_photo, jobs, chunksize=16))
    (pool / ".generated").write_text(str(max(n, done)))
    partial = dataset.with_name(dataset.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for i in range(n):
        split = ("val" if (i // CLASSES) % 10 < 3 else "train") if args.layout == "imagefolder" else ""
        (partial / split / name[i]).parent.mkdir(parents=True, exist_ok=True)
        os.link(pool / name[i], partial / split / name[i])
    (partial / ".generated").write_text(str(n))
    shutil.rmtree(dataset, ignore_errors=True)
    partial.rename(dataset)
    return dataset, time.perf_counter() - started, max(0, n - done)


def make_project(code: Path, project: Path, dataset: Path, layout: str) -> None:
    """The checkout's code, dvc.yaml, params.yaml (the photos, mode frozen alone, 1 epoch ...) in `project`."""
    shutil.rmtree(project, ignore_errors=True)
    copy_code(code, project)
    shutil.copy2(code / "dvc.yaml", project / "dvc.yaml")
    params = yaml.safe_load((code / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(url=str(dataset), watch=str(dataset), sha256=None, layout=layout)
    params["mode"] = MODE
    params["modes"] = {MODE: {**params["modes"][MODE], "epochs": 1, "cached_views": 1}}
    params["train"].update(epochs=1, cached_views=1, workers=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def run_stage(project: Path, stage: list[str]) -> dict:
    """`python -m stages.<stage>` in `project`, output to logs/<stage>.log: seconds, peak RSS KiB, exit status."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"DVC_NO_ANALYTICS": "1"}
    env |= {"PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = project / "logs" / f"{stage[0]}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage[0]}", *stage[1:]], cwd=project,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kib": usage.ru_maxrss, "rc": proc.returncode, "log": log}


def run_path(name: str, code: Path, project: Path, dataset: Path, args: argparse.Namespace) -> dict:
    """Every stage of one path on one dataset, in order, up to a failing one (pack: new path only)."""
    make_project(code, project, dataset, args.layout)
    stages = [["download"], ["split"], ["pack"], ["train", MODE], ["evaluate", MODE]]
    if name == "old" or not (code / "stages" / "pack.py").is_file():
        stages.remove(["pack"])
    result = {"stages": {}, "counts": None, "failed": None}
    for stage in stages:
        print(f"  {project.name}: {' '.join(stage)} ...", end="", flush=True)
        run = run_stage(project, stage)
        print(f" {run['seconds']:.1f} s ({run['cpu']:.1f} s CPU), {run['rss_kib'] / 1024:.0f} MiB", flush=True)
        if run["rc"] != 0:
            tail = "\n    ".join(run["log"].read_text(errors="replace").splitlines()[-15:])
            print(f"  {stage[0]} failed (exit {run['rc']}); the end of {run['log']}:\n    {tail}")
            result["failed"] = stage[0]
            break
        result["stages"][stage[0]] = run
        if stage[0] == "split":
            data = json.loads((project / "metrics" / "data.json").read_text())
            result["counts"] = {"train": data["train"]["total"], "val": data["val"]["total"]}
    if not args.keep and not result["failed"]:
        shutil.rmtree(project, ignore_errors=True)
    return result


def print_header(args: argparse.Namespace) -> None:
    def describe(code: Path) -> str:
        rev = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip()
        return f"{code} ({rev or 'not a git checkout'}{', has pack' if (code / 'stages/pack.py').is_file() else ''})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"# machine: {platform.platform()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
          f"{ram:.0f} GiB RAM, Python {platform.python_version()}, torch {importlib.metadata.version('torch')}")
    print(f"# old: {describe(args.old) if args.old else 'not given (new path only)'}\n# new: {describe(args.new)}")
    print(f"# data: {args.layout} layout, {CLASSES} classes, {PHONE_SHARE:.0%} at {PHONE[0]}x{PHONE[1]}, "
          f"seed {args.seed}, in {args.work}; mode {MODE}, 1 epoch, cached_views 1, train.workers 0")


def measure(results: dict, n: int, path: str, stage: str, key: str) -> float | None:
    return (results.get((n, path), {}).get("stages", {}).get(stage) or {}).get(key)


def print_table(results: dict, sizes: list[int]) -> None:
    """Per N and path: each stage's seconds, images per second (train reads train + val, evaluate val)
    and peak RSS; then per N the ratios new/old."""
    print(f"\n{'N':>7} {'path':>4} {'stage':>9} {'seconds':>9} {'CPU s':>8} {'images':>7} {'img/s':>8} "
          f"{'peak RSS MiB':>13}")
    for (n, path), result in results.items():
        for stage, run in result["stages"].items():
            counts = result["counts"] or {"train": 0, "val": 0}
            images = {"train": counts["train"] + counts["val"], "evaluate": counts["val"]}.get(stage)
            rate = f"{images / run['seconds']:.1f}" if images else ""
            print(f"{n:>7} {path:>4} {stage:>9} {run['seconds']:>9.1f} {run['cpu']:>8.1f} {images or '':>7} {rate:>8} "
                  f"{run['rss_kib'] / 1024:>13.0f}")
        if result["failed"]:
            print(f"{n:>7} {path:>4} {result['failed']:>9} {'failed':>9}")
    print(f"\nnew/old per N (below 1: the new path is smaller or faster)\n{'N':>7} "
          + " ".join(f"{stage + ' ' + what:>16}" for stage in MEASURED for what in ("RSS", "seconds")))
    for n in sizes:
        pairs = [(measure(results, n, "old", s, k), measure(results, n, "new", s, k))
                 for s in MEASURED for k in ("rss_kib", "seconds")]
        print(f"{n:>7} " + " ".join(f"{new / old:>16.2f}" if old and new else f"{'-':>16}" for old, new in pairs))


def growth_line(points: list[tuple[int, float]], measured: float | None) -> str:
    """Peak RSS growth per image by a least-squares line through `points` (N, KiB), the RSS at TARGET_N
    (measured, else extrapolated, never below the largest seen), against the targets."""
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    kb = slope * 1.024  # KiB -> KB (1000 bytes)
    at_target = (measured or max(slope * TARGET_N + intercept, max(p[1] for p in points))) / 2**20
    verdict = "PASS" if kb <= TARGET_KB_PER_IMAGE and at_target < TARGET_GIB else "FAIL"
    return (f"{kb:8.1f} KB an image, {at_target:5.2f} GiB at N={TARGET_N:,} "
            f"({'measured' if measured else f'extrapolated from N <= {points[-1][0]:,}'})  {verdict}")


def print_growth(results: dict, sizes: list[int]) -> None:
    """Across N, per path, train and evaluate: peak RSS growth per image and time per image."""
    print(f"\nacross N: peak RSS growth (target: at most {TARGET_KB_PER_IMAGE} KB an image, under {TARGET_GIB} GiB "
          f"at N={TARGET_N:,}); time per image over the smallest N's (target: flat within {TARGET_TIME_SPREAD:.0%},"
          " below 1 is start-up cost spread thinner), and ms per added image between neighbouring N")
    if sizes[-1] < 1000:
        print("  (all sizes under 1,000: start-up and a few large images swamp these; no verdict)")
    for path in ("old", "new"):
        for stage in MEASURED:
            rss = [(n, v) for n in sizes if (v := measure(results, n, path, stage, "rss_kib"))]
            if len(rss) < 2:
                continue
            print(f"  {path} {stage:>8} RSS: " + growth_line(rss, measure(results, TARGET_N, path, stage, "rss_kib")))
            for key, what in (("seconds", "time"), ("cpu", "CPU time")):
                secs = [(n, v) for n in sizes if (v := measure(results, n, path, stage, key))]
                per = [(n, s / n / (secs[0][1] / secs[0][0])) for n, s in secs]
                added = [f"{(s2 - s1) / (n2 - n1) * 1000:.1f}" for (n1, s1), (n2, s2) in zip(secs, secs[1:])]
                verdict = "PASS" if all(r <= 1 + TARGET_TIME_SPREAD for _, r in per) else "FAIL"
                print(f"  {path} {stage:>8} {what}: " + ", ".join(f"N={n:,} {r:.2f}" for n, r in per)
                      + f"; ms per added image {', '.join(added)}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for n in args.sizes:
        dataset, seconds, written = generate(n, args)
        print(f"N={n}: {dataset} ({f'{written} images generated in {seconds:.1f} s' if written else 'reused'}; "
              "not counted)", flush=True)
        for name, code in [("old", args.old), ("new", args.new)] if args.old else [("new", args.new)]:
            if name == "old" and n > args.old_max:
                print(f"  old path skipped at N={n} (--old-max {args.old_max}): it decodes every image into RAM, "
                      f"~0.26 MB each, ~{n * 0.26 / 1024:.1f} GB here")
                continue
            results[n, name] = run_path(name, code, args.work / "runs" / f"{name}-{n}", dataset, args)
    print_table(results, args.sizes)
    print_growth(results, args.sizes)
    return 1 if any(result["failed"] for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
