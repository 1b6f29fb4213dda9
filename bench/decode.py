"""Decoding: the kiosk's decoder chain against zxing-cpp alone, in the same run.

Two sets: the shared image set (``../shared/datasets``, every image with a ground truth,
plus the code-free images, which must read nothing) and camera-like frames rendered by the
simulator (1280x720, perspective, blur, glare, noise, low contrast, small codes, and
harder variants of each), with voucher-sized QR codes. Success rate, median and p95 ms per
image, and the chain's time relative to zxing-cpp's (mean per image). Both decoders read each
image in turn, alternating which goes first, after a warm-up, so that the shared machine's
load drifting during the run weighs on both alike. ``*_wrong_reads`` counts images with a
code of the wrong text among those returned; ``*_false_reads`` code-free images read at all.
Run: ``python bench/decode.py [--frames-per-preset 12]``; the last line is one JSON object.
"""

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from hardware.decoder import (
    KIOSK_FORMATS,
    Decoded,
    DecoderChain,
    ZxingDecoder,
    load_image,
)
from simulator.camera import PRESETS, Distortion, render_scene

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "zxing-cpp-samples"
HARD = {
    "tilted_hard": Distortion(tilt=0.45, rotation_deg=25),
    "blurred_hard": Distortion(blur_sigma=2.6),
    "glare_hard": Distortion(glare=0.9),
    "noisy_hard": Distortion(noise_sigma=40),
    "low_contrast_hard": Distortion(contrast=0.15, noise_sigma=12),
    "small_hard": Distortion(module_px=1.8),
    "combined": Distortion(module_px=3.0, blur_sigma=1.0, glare=0.4, contrast=0.6, tilt=0.2),
}
VOUCHER = "DL1:" + "".join(itertools.islice(itertools.cycle("ABCDEFGHJKMNPQRSTVWXYZ234567"), 170))


def _dataset() -> tuple[list[tuple[np.ndarray, str]], list[np.ndarray]]:
    coded, empty = [], []
    for folder in sorted(DATASETS.iterdir()):
        for image in sorted(folder.iterdir()):
            if image.suffix in (".txt", ".bin", ".result"):
                continue
            truth = image.with_suffix(".txt")
            if folder.name.startswith("falsepositives"):
                empty.append(load_image(image))
            elif truth.exists():
                coded.append((load_image(image), truth.read_bytes().decode("utf-8", "replace")))
    return coded, empty


def _frames(per_preset: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(2026)
    presets = {**PRESETS, **HARD}
    return [
        (render_scene(VOUCHER, rng, distortion=d), VOUCHER)
        for d in presets.values()
        for _ in range(per_preset)
    ]


def _timed(
    decode: Callable[[np.ndarray], list[Decoded]], image: np.ndarray
) -> tuple[float, list[Decoded]]:
    start = time.perf_counter()
    found = decode(image)
    return (time.perf_counter() - start) * 1000, found


def _summary(times: list[float], hits: int, wrong: int) -> dict[str, float]:
    return {
        "success": hits / len(times),
        "median_ms": statistics.median(times),
        "p95_ms": sorted(times)[round(0.95 * (len(times) - 1))],
        "mean_ms": statistics.fmean(times),
        "wrong_reads": wrong,
    }


def _measure_pair(
    chain: Callable[[np.ndarray], list[Decoded]],
    alone: Callable[[np.ndarray], list[Decoded]],
    cases: list[tuple[np.ndarray, str]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Both decoders on each image in turn, alternating which goes first, so that a change in
    the machine's load during the run weighs on both alike (the machine is shared)."""
    decoders = (chain, alone)
    times: tuple[list[float], list[float]] = ([], [])
    hits, wrong = [0, 0], [0, 0]
    for k, (image, truth) in enumerate(cases):
        for which in (0, 1) if k % 2 == 0 else (1, 0):
            ms, found = _timed(decoders[which], image)
            times[which].append(ms)
            hits[which] += any(d.text == truth for d in found)
            wrong[which] += any(d.text != truth for d in found)
    c, z = (_summary(times[i], hits[i], wrong[i]) for i in (0, 1))
    return c, z


def _compare(
    name: str, chain: DecoderChain, alone: ZxingDecoder, cases: list[tuple[np.ndarray, str]],
    empty: list[np.ndarray],
) -> dict[str, object]:  # fmt: skip
    for image, _ in cases[:5]:  # warm-up: first calls load libraries and fill caches
        chain.decode(image)
        alone.decode(image)
    chain.stats.clear()
    c, z = _measure_pair(chain.decode, alone.decode, cases)
    stages = dict(chain.stats)  # of the coded images only
    false_reads = [
        sum(bool(decode(image)) for image in empty) for decode in (chain.decode, alone.decode)
    ]
    return {
        f"{name}_images": len(cases),
        f"success_{name}_chain": round(c["success"], 4),
        f"success_{name}_zxing": round(z["success"], 4),
        f"{name}_chain_median_ms": round(c["median_ms"], 2),
        f"{name}_chain_p95_ms": round(c["p95_ms"], 2),
        f"{name}_zxing_median_ms": round(z["median_ms"], 2),
        f"{name}_zxing_p95_ms": round(z["p95_ms"], 2),
        f"ratio_{name}_chain_vs_zxing_time": round(c["mean_ms"] / z["mean_ms"], 3),
        f"{name}_chain_wrong_reads": c["wrong_reads"],
        f"{name}_zxing_wrong_reads": z["wrong_reads"],
        f"{name}_chain_false_reads": false_reads[0],
        f"{name}_zxing_false_reads": false_reads[1],
        f"{name}_chain_stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames-per-preset", type=int, default=12)
    args = parser.parse_args()
    result: dict[str, object] = {}
    if DATASETS.is_dir():
        coded, empty = _dataset()
        result.update(_compare("dataset", DecoderChain(None), ZxingDecoder(None), coded, empty))
    frames = _frames(args.frames_per_preset)
    blank = [render_scene(None, np.random.default_rng(i)) for i in range(20)]
    chain = DecoderChain(KIOSK_FORMATS)
    result.update(_compare("frames", chain, ZxingDecoder(KIOSK_FORMATS), frames, blank))
    result["frames_formats"] = sorted(KIOSK_FORMATS)
    result["machine"] = describe()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
