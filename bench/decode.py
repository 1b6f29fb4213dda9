"""Decoding: the kiosk's decoder chain against zxing-cpp alone, in the same run.

Two sets: the shared image set (``../shared/datasets``, every image with a ground truth,
plus the code-free images, which must read nothing) and camera-like frames rendered by the
simulator (1280x720, perspective, blur, glare, noise, low contrast, small codes, and
harder variants of each), with voucher-sized QR codes. Success rate, median and p95 ms per
image, and the chain's time relative to zxing-cpp's (mean per image).
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


def _measure(
    decode: Callable[[np.ndarray], list[Decoded]],
    cases: list[tuple[np.ndarray, str]],
    empty: list[np.ndarray],
) -> dict[str, float]:
    times, hits = [], 0
    for image, truth in cases:
        start = time.perf_counter()
        found = decode(image)
        times.append((time.perf_counter() - start) * 1000)
        hits += any(d.text == truth for d in found)
    false_reads = sum(bool(decode(image)) for image in empty)
    return {
        "success": hits / len(cases),
        "median_ms": statistics.median(times),
        "p95_ms": sorted(times)[round(0.95 * (len(times) - 1))],
        "mean_ms": statistics.fmean(times),
        "false_reads": false_reads,
    }


def _compare(
    name: str, chain: DecoderChain, alone: ZxingDecoder, cases: list[tuple[np.ndarray, str]],
    empty: list[np.ndarray],
) -> dict[str, float]:  # fmt: skip
    for image, _ in cases[:5]:  # warm-up
        chain.decode(image)
        alone.decode(image)
    c = _measure(chain.decode, cases, empty)
    z = _measure(alone.decode, cases, empty)
    return {
        f"{name}_images": len(cases),
        f"success_{name}_chain": round(c["success"], 4),
        f"success_{name}_zxing": round(z["success"], 4),
        f"{name}_chain_median_ms": round(c["median_ms"], 2),
        f"{name}_chain_p95_ms": round(c["p95_ms"], 2),
        f"{name}_zxing_median_ms": round(z["median_ms"], 2),
        f"{name}_zxing_p95_ms": round(z["p95_ms"], 2),
        f"ratio_{name}_chain_vs_zxing_time": round(c["mean_ms"] / z["mean_ms"], 3),
        f"{name}_chain_false_reads": c["false_reads"],
        f"{name}_zxing_false_reads": z["false_reads"],
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
    result["frames_chain_stages"] = dict(chain.stats)
    result["frames_formats"] = sorted(KIOSK_FORMATS)
    result["machine"] = describe()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
