"""Encoder settings: one object, checked when made, and one loaded codec for every operating point."""

from __future__ import annotations

import pytest

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec import quality
from vqcodec.settings import Settings


@pytest.mark.parametrize(
    "bad",
    [{"rdo": -1.0}, {"rdo": float("inf")}, {"rdo_passes": 0}, {"rdo_passes": 1.5}, {"scale": 3.0},
     {"tile": 0}, {"tile": 65}, {"tile": True}],
)  # fmt: skip
def test_bad_settings_are_refused_with_their_name(bad):
    with pytest.raises(vqcodec.UsageError, match=next(iter(bad))):
        Settings(**bad)


def test_unknown_setting_is_refused(codec, rng):
    with pytest.raises(vqcodec.UsageError, match="unknown setting 'rdo_pases'"):
        codec.compress(smooth_image(rng, 8, 8), rdo_pases=2)


def test_every_operating_point_from_one_codec_is_that_points_codec(rng):
    """``compress(quality=q)`` and ``with_settings`` write the files of a codec made for that
    point, share the loaded model and its compiled priors, and leave the codec's own settings as
    they were."""
    model = make_model(seed=3)
    one = vqcodec.Codec(model, device="cpu")
    image = smooth_image(rng, 40, 56)
    for q in (0, 30, 50, 90):
        alone = vqcodec.Codec(model, device="cpu", quality=q)
        assert alone.settings == Settings().replace(**quality.operating_point(q, layers=0)._asdict())
        assert one.compress(image, quality=q) == alone.compress(image)
        view = one.with_settings(quality=q)
        assert view.settings == alone.settings and view.compress(image) == alone.compress(image)
        assert view.model is one.model and view.encoding_priors is one.encoding_priors
    assert one.settings == Settings()
    assert one.compress(image, rdo=0.0, tile=4) == vqcodec.Codec(model, device="cpu", rdo=0.0, tile=4).compress(image)
