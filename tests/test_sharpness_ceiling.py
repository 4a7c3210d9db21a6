"""The sharpness ceiling of a rendering size: 1 at the crop's own size, lower the smaller the rendering."""

from __future__ import annotations

import pytest

from lightning_modules.evaluation import sharpness_ceiling
from tests.synthetic_shards import write_synthetic_shards


def test_the_ceiling_is_one_at_the_crop_size_and_falls_with_the_rendering_size(tmp_path, capsys) -> None:
    root = write_synthetic_shards(tmp_path / "shards", {"train": 1, "val": 2}, frames=16, image_size=64)
    sharpness_ceiling.main(["--shards", str(root), "--sizes", "16", "32", "64", "--crop", "64", "--clips", "2", "--eval-stride", "4"])
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:4]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and " px |" in line}
    (cubic16, linear16), (cubic32, linear32), (cubic64, linear64) = rows["16 px"], rows["32 px"], rows["64 px"]
    assert cubic64 == pytest.approx(1.0, abs=1e-6) and linear64 == pytest.approx(1.0, abs=1e-6)
    assert cubic16 < cubic32 < 1 and linear16 < linear32 < 1
    assert cubic32 > linear32  # the bicubic paste keeps more of the crop's detail
