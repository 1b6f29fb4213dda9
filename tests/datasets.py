"""Where the shared barcode/QR image sets are (``../shared/datasets`` beside the repo)."""

import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("DROPLINE_DATASETS", Path(__file__).parents[2] / "shared" / "datasets"))
SAMPLES = ROOT / "zxing-cpp-samples"


def samples(pattern: str) -> list[tuple[Path, str | None]]:
    """(image, expected text or None) for every image in the matching sample folders."""
    if not SAMPLES.is_dir():
        pytest.skip(f"datasets not found at {SAMPLES} (set DROPLINE_DATASETS)")
    found = []
    for folder in sorted(SAMPLES.glob(pattern)):
        for image in sorted(folder.iterdir()):
            if image.suffix in (".txt", ".bin", ".result"):
                continue
            truth = image.with_suffix(".txt")
            text = truth.read_bytes().decode("utf-8", "replace") if truth.exists() else None
            found.append((image, text))
    return found
