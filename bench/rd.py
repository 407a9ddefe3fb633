"""Rate-distortion sweeps: per-image measurements, averaged curves, BD-rates and same-size files of
other codecs."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from .codecs import PillowCodec, RDCodec, Setting
from .images import Sample
from .metrics import bd_rate, ms_ssim, ms_ssim_db, psnr, quality_at, ssimulacra2

#: The reference codec for BD-rates and same-size comparisons.
REFERENCE = "jpeg420"
#: Averaged-curve metrics BD-rates are taken on (the anchors' two, and a perceptual one).
BD_METRICS = {"psnr": "psnr-rgb", "ms-ssim-db": "ms-ssim-rgb-db", "ssimulacra2": "ssimulacra2"}


def quality_metrics(original: np.ndarray, decoded: np.ndarray) -> dict[str, float | None]:
    """PSNR, MS-SSIM, MS-SSIM in dB and SSIMULACRA 2 of a decoded image (None for images too
    small for a metric's scales)."""
    value = ms_ssim(original, decoded)
    return {"psnr": psnr(original, decoded), "ms_ssim": value, "ms_ssim_db": ms_ssim_db(value),
            "ssimulacra2": ssimulacra2(original, decoded)}  # fmt: skip


def measure(codec: RDCodec, sample: Sample, setting: Setting, repeats: int) -> dict:
    """One per-image record: sizes, rates, qualities and times of ``sample`` through ``codec``."""
    coded = codec.run(sample.image, setting, repeats)
    bits = 8 * len(coded.data)
    return {
        "codec": codec.name,
        "setting": setting,
        "image": sample.name,
        "width": sample.image.width,
        "height": sample.image.height,
        "bytes": len(coded.data),
        "bpp": bits / sample.pixels,
        "bits_per_subpixel": bits / (3 * sample.pixels),
        **quality_metrics(np.asarray(sample.image), coded.decoded),
        "encode_s": coded.encode_s,
        "decode_s": coded.decode_s,
        "top_bits_per_code": coded.bits_per_code[0] if coded.bits_per_code else None,
        "bottom_bits_per_code": coded.bits_per_code[1] if coded.bits_per_code else None,
    }


def sweep(codecs: Sequence[RDCodec], samples: Sequence[Sample], repeats: int) -> list[dict]:
    """Per-image records of every codec at every setting on every sample, with a progress bar."""
    jobs = [(codec, setting, sample) for codec in codecs for setting in codec.settings for sample in samples]
    return [
        measure(codec, sample, setting, repeats)
        for codec, setting, sample in tqdm(jobs, desc="rd", unit="image", leave=False)
    ]


def mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is missing (an average over part of the images would mislead)."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _mpx_per_s(rows: list[dict], key: str) -> float | None:
    """Megapixels per second, averaged over images as in the anchors (mean of H*W/time)."""
    return mean([None if r[key] is None else r["width"] * r["height"] / r[key] / 1e6 for r in rows])


def average_curve(codec: RDCodec, records: Sequence[dict]) -> dict:
    """The codec's curve in CompressAI's results layout: one entry per setting, means over images."""
    per_setting = [[r for r in records if r["codec"] == codec.name and r["setting"] == s] for s in codec.settings]
    columns: dict[str, Callable[[list[dict]], float | None]] = {
        "bpp": lambda rows: mean([r["bpp"] for r in rows]),
        "bits-per-subpixel": lambda rows: mean([r["bits_per_subpixel"] for r in rows]),
        "psnr-rgb": lambda rows: mean([r["psnr"] for r in rows]),
        "ms-ssim-rgb": lambda rows: mean([r["ms_ssim"] for r in rows]),
        "ms-ssim-rgb-db": lambda rows: mean([r["ms_ssim_db"] for r in rows]),
        "ssimulacra2": lambda rows: mean([r["ssimulacra2"] for r in rows]),
        "encoding_time": lambda rows: mean([r["encode_s"] for r in rows]),
        "decoding_time": lambda rows: mean([r["decode_s"] for r in rows]),
        "encoding_mpx_per_s": lambda rows: _mpx_per_s(rows, "encode_s"),
        "decoding_mpx_per_s": lambda rows: _mpx_per_s(rows, "decode_s"),
        "top-bits-per-code": lambda rows: mean([r["top_bits_per_code"] for r in rows]),
        "bottom-bits-per-code": lambda rows: mean([r["bottom_bits_per_code"] for r in rows]),
    }
    results = {"setting": list(codec.settings)}
    results |= {key: [fn(rows) for rows in per_setting] for key, fn in columns.items()}
    return {"name": codec.name, "description": codec.description, "results": results}


def _bd_pair(ref: dict, res: dict) -> dict[str, dict | None]:
    """BD-rate of the results ``res`` against ``ref`` on each of ``BD_METRICS``, with its interval."""
    out: dict[str, dict | None] = {}
    for metric, key in BD_METRICS.items():
        bd = bd_rate(ref["bpp"], ref[key], res["bpp"], res[key])
        out[metric] = bd._asdict() if bd else None
    return out


def bd_rates(curves: dict[str, dict]) -> dict[str, dict[str, dict | None]]:
    """BD-rate (%) of every curve against ``REFERENCE`` on PSNR and MS-SSIM dB, with its interval."""
    ref = curves[REFERENCE]["results"]
    return {name: _bd_pair(ref, curve["results"]) for name, curve in curves.items()}


def head_to_head(curves: dict[str, dict], learned: set[str]) -> list[dict]:
    """BD-rate (%) of each learned codec against each other codec directly, on PSNR and MS-SSIM
    dB, over the quality interval both curves cover (negative: the learned codec needs fewer
    bits). BD-rates against a common reference over different intervals do not rank codecs;
    these do."""
    return [
        {"codec": name, "against": other} | _bd_pair(curve["results"], curves[name]["results"])
        for name in sorted(learned)
        for other, curve in curves.items()
        if other != name
    ]


#: The codecs each learned codec's points are compared with at the same rate.
SAME_RATE_CODECS = ("jpeg420", "webp_m4", "avif")


def same_rate(curves: dict[str, dict], learned: set[str]) -> list[dict]:
    """Each point of the learned codecs with the PSNR and MS-SSIM of ``SAME_RATE_CODECS`` at its
    bpp, read off their averaged curves (PCHIP over log bpp; None outside a curve's range)."""
    rows = []
    for name in sorted(learned):
        res = curves[name]["results"]
        for i, setting in enumerate(res["setting"]):
            row = {"codec": name, "setting": setting, "bpp": res["bpp"][i], "psnr": res["psnr-rgb"][i],
                   "ms_ssim": res["ms-ssim-rgb"][i]}  # fmt: skip
            for other in SAME_RATE_CODECS:
                if other in curves:
                    ref = curves[other]["results"]
                    row[f"{other}_psnr"] = quality_at(ref["bpp"], ref["psnr-rgb"], res["bpp"][i])
                    row[f"{other}_ms_ssim"] = quality_at(ref["bpp"], ref["ms-ssim-rgb"], res["bpp"][i])
            rows.append(row)
    return rows


#: The quality range of the codecs (by Pillow format) a same-size comparison can search.
QUALITY_RANGES = {"JPEG": (1, 100), "WEBP": (0, 100), "AVIF": (0, 100), "JXL": (0, 100)}
#: The qualities a same-size comparison reports.
SAME_SIZE_METRICS = ("psnr", "ms_ssim", "ssimulacra2")


def match_size(image: Image.Image, target_bytes: int, codec: PillowCodec) -> tuple[int, bytes]:
    """The quality of ``codec`` (one of ``QUALITY_RANGES``) and its file whose size is closest to
    ``target_bytes`` without exceeding it (found by bisection; the lowest quality when even that
    is larger)."""
    low, high = QUALITY_RANGES[codec.format]
    best = (low, codec.encode(image, low))
    while low <= high:
        q = (low + high) // 2
        data = codec.encode(image, q)
        if len(data) <= target_bytes:
            best, low = (q, data), q + 1
        else:
            high = q - 1
    return best


def same_size(
    records: Sequence[dict], samples: Sequence[Sample], codec_names: set[str], other: PillowCodec
) -> list[dict]:
    """For each file of the named codecs, ``other``'s file of the same size (``match_size``) and
    the quality differences (codec minus other; positive means the codec is better)."""
    images = {s.name: s.image for s in samples}
    rows = []
    for r in (r for r in records if r["codec"] in codec_names):
        image = images[r["image"]]
        quality, data = match_size(image, r["bytes"], other)
        theirs = quality_metrics(np.asarray(image), other.decode(data))
        rows.append({
            "codec": r["codec"], "setting": r["setting"], "image": r["image"], "bytes": r["bytes"],
            "against": other.name, "other_quality": quality, "other_bytes": len(data),
            **{m: r[m] for m in SAME_SIZE_METRICS},
            **{f"other_{m}": theirs[m] for m in SAME_SIZE_METRICS},
            **{f"delta_{m}": _diff(r[m], theirs[m]) for m in SAME_SIZE_METRICS},
        })  # fmt: skip
    return rows


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
