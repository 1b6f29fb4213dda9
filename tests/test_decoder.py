"""The kiosk's decoder chain on the shared image sets, and `dropline scan`."""

import io
import json

import pytest

from dropline.scan import run_scan
from hardware.decoder import (
    KIOSK_FORMATS,
    PARCEL_FORMATS,
    ZBAR_ONE_D_FORMATS,
    Candidate,
    Gray,
    PyzbarDecoder,
    ZxingDecoder,
    default_chain,
    load_image,
    merge_candidates,
)
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


def _zxing_misses_zbar_reads(pattern: str, formats: frozenset[str]) -> list[tuple[Gray, str]]:
    """1D samples that zxing-cpp alone cannot read but zbar (through pyzbar) can."""
    zxing, zbar = ZxingDecoder(formats), PyzbarDecoder(formats & ZBAR_ONE_D_FORMATS)
    cases = [(load_image(p), t) for p, t in samples(pattern) if t is not None]
    return [
        (image, truth)
        for image, truth in cases
        if not any(d.text == truth for d in zxing.decode(image))
        and any(d.text == truth for d in zbar.decode(image))
    ]


def test_chain_reads_1d_codes_only_pyzbar_reads() -> None:
    cases = _zxing_misses_zbar_reads("ean13-*", PARCEL_FORMATS)
    assert len(cases) >= 5
    chain = default_chain(PARCEL_FORMATS)
    for image, truth in cases:
        assert any(d.text == truth for d in chain.decode(image))
    assert chain.stats["pyzbar"] >= 1


def test_chain_reads_more_1d_codes_than_zxing_alone() -> None:
    for pattern in ("ean13-*", "upca-*"):
        assert _rate(default_chain(PARCEL_FORMATS), pattern) > _rate(
            ZxingDecoder(PARCEL_FORMATS), pattern
        )


def test_pyzbar_looks_only_for_the_formats_asked() -> None:
    ean = [load_image(p) for p, t in samples("ean13-1") if t][:5]
    assert any(PyzbarDecoder(frozenset({"EAN13"})).decode(image) for image in ean)
    assert not any(PyzbarDecoder(frozenset({"Code128"})).decode(image) for image in ean)


def test_pyzbar_gives_upc_codes_the_text_zxing_gives() -> None:
    """A parcel label is one id whichever decoder reads it: UPC-A and UPC-E in EAN-13 form."""
    compared = 0
    for path, _ in samples("upca-1")[:6] + samples("upce-1")[:6]:
        image = load_image(path)
        by_zxing = {d.text for d in ZxingDecoder(PARCEL_FORMATS).decode(image)}
        by_zbar = {d.text for d in PyzbarDecoder(PARCEL_FORMATS).decode(image)}
        if by_zxing and by_zbar:
            assert by_zbar == by_zxing, path
            compared += 1
    assert compared >= 6


def test_kiosk_chain_does_not_read_retail_barcodes() -> None:
    """A kiosk reads QR and Code 128: an EAN-13 on a shopper's parcel is not a voucher."""
    chain = default_chain(KIOSK_FORMATS)
    for path, _ in samples("ean13-1")[:10]:
        assert chain.decode(load_image(path)) == []


def test_pyzbar_scan_density_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="scan_density"):
        PyzbarDecoder(scan_density=0)


def test_candidates_merge_when_they_overlap_and_are_of_one_kind() -> None:
    qr = Candidate((40, 40, 200, 200), matrix=True)
    micro_qr = Candidate((100, 50, 210, 140), matrix=True)
    ean_row = Candidate((30, 120, 220, 122), matrix=False)
    elsewhere = Candidate((300, 300, 340, 340), matrix=True)
    merged = merge_candidates([micro_qr, ean_row, qr, elsewhere])
    assert sorted(merged, key=lambda c: c.box) == [
        ean_row,
        Candidate((40, 40, 210, 200), matrix=True),
        elsewhere,
    ]
