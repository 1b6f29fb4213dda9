"""The kiosk's decoder chain on the shared image sets, and `dropline scan`."""

import io
import json

from dropline.scan import run_scan
from hardware.decoder import PyzbarDecoder, ZxingDecoder, default_chain, load_image
from tests.datasets import samples


def _rate(decoder: object, pattern: str) -> float:
    cases = [(p, t) for p, t in samples(pattern) if t is not None]
    hits = sum(any(d.text == t for d in decoder.decode(load_image(p))) for p, t in cases)  # type: ignore[attr-defined]
    return hits / len(cases)


def test_dropline_scan_reads_at_least_90_percent_of_qr_samples() -> None:
    cases = [(p, t) for p, t in samples("qrcode-*") if t is not None]
    out = io.StringIO()
    assert run_scan([str(p) for p, _ in cases], out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p, _ in cases]
    correct = sum(line.get("text") == t for line, (_, t) in zip(lines, cases, strict=True))
    rate = correct / len(cases)
    print(f"dropline scan on qrcode-*: {correct}/{len(cases)} = {rate:.3f}")
    assert rate >= 0.90


def test_chain_reads_more_than_zxing_alone() -> None:
    assert _rate(default_chain(), "qrcode-*") > _rate(ZxingDecoder(), "qrcode-*")


def test_no_false_reads_on_code_free_images() -> None:
    chain = default_chain()
    for path, _ in samples("falsepositives-*"):
        assert chain.decode(load_image(path)) == [], path


def test_one_dimensional_codes() -> None:
    assert _rate(default_chain(), "code128-*") == 1.0
    assert _rate(default_chain(), "ean13-*") >= 0.75


def test_pyzbar_second_opinion_reads_1d_with_stable_names() -> None:
    decoder = PyzbarDecoder()
    found = [d for p, t in samples("code128-1") if t for d in decoder.decode(load_image(p))]
    assert found
    assert {d.format for d in found} == {"Code128"}


def test_scan_reports_unreadable_and_missing_files(tmp_path: object) -> None:
    from pathlib import Path

    bad = Path(str(tmp_path)) / "not-an-image.png"
    bad.write_bytes(b"hello")
    empty = samples("falsepositives-1")[0][0]
    out = io.StringIO()
    status = run_scan([str(bad), str(empty), "/nonexistent.png"], out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == 2
    assert "not a readable image" in lines[0]["error"]
    assert lines[1] == {"file": str(empty), "error": "no code found"}
    assert "no such file" in lines[2]["error"]
