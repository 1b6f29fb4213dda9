"""``dropline scan IMAGE...``: the kiosk's decoder chain on image files, one JSON line each."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from hardware.decoder import ImageLoadError, default_chain, load_image


def run_scan(paths: Sequence[str], out: TextIO) -> int:
    """Decode every image; 0 when every file could be read, 2 when one could not."""
    chain = default_chain()
    status = 0
    for path in paths:
        result: dict[str, object] = {"file": path}
        try:
            found = chain.decode(load_image(Path(path)))
        except ImageLoadError as exc:
            result["error"] = str(exc)
            status = 2
        else:
            if found:
                result.update(format=found[0].format, text=found[0].text)
                if len(found) > 1:
                    result["others"] = [{"format": d.format, "text": d.text} for d in found[1:]]
            else:
                result["error"] = "no code found"
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return status
