"""Writing results: JSON (CompressAI's layout), markdown tables and rate-distortion plots."""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from vqcodec.coding import qprior

from .metrics import quality_at
from .rd import BD_METRICS, REFERENCE, SAME_SIZE_METRICS, mean
from .speed import DECODE_STAGES, ENCODE_STAGES

#: Rates at which the summary reads each averaged curve (as in the Kodak anchors).
SUMMARY_BPP = (0.125, 0.25, 0.5, 0.75, 1.0)


def fmt(value: float | None, digits: int = 2) -> str:
    """A table cell: fixed-point, '-' for a missing value, 'inf' for an infinite one."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _clean(value: Any) -> Any:
    """JSON-safe data: non-finite floats become null, floats keep 6 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_clean(value), allow_nan=False)


def _block(value: Any) -> str:
    """A value one level down: lists and dicts with one item per line, the items on one line each."""
    if isinstance(value, list) and value:
        return "[\n  " + ",\n  ".join(_dumps(v) for v in value) + "\n ]"
    if isinstance(value, dict) and value:
        return "{\n  " + ",\n  ".join(f"{_dumps(k)}: {_dumps(v)}" for k, v in value.items()) + "\n }"
    return _dumps(value)


def write_json(path: Path, data: dict) -> None:
    """``data`` as strict JSON laid out two levels deep: compact, yet readable and diffable."""
    path.write_text("{\n" + ",\n".join(f" {_dumps(k)}: {_block(v)}" for k, v in data.items()) + "\n}\n")


def environment() -> dict[str, str | None]:
    """Python, platform, the CPU's vector instructions as torch uses them, the integer prior's
    products on the CPU, and the versions of the packages the numbers depend on."""
    info: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "prior products": qprior.cpu_products(),
    }
    for package in ("vqcodec", "pillow", "numpy", "torch", "pytorch-msssim", "scipy", "pillow-jxl-plugin"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


SUMMARY_HEADER = ["codec", "points", "bpp range", *[f"PSNR@{b}" for b in SUMMARY_BPP],
                  *[f"MS-SSIM@{b}" for b in SUMMARY_BPP], "BD-rate PSNR", "BD-rate MS-SSIM(dB)",
                  "BD-rate SSIMULACRA2", "enc MP/s", "dec MP/s"]  # fmt: skip


def summary_rows(curves: dict[str, dict], bd: dict[str, dict]) -> list[list[str]]:
    """One row per codec: quality at fixed rates, BD-rates against the reference, speed."""
    rows = []
    for name, curve in curves.items():
        res = curve["results"]
        psnr = [fmt(quality_at(res["bpp"], res["psnr-rgb"], b)) for b in SUMMARY_BPP]
        msssim = [fmt(quality_at(res["bpp"], res["ms-ssim-rgb"], b), 4) for b in SUMMARY_BPP]
        bds = [fmt(bd[name][m]["percent"], 1) + "%" if bd[name][m] else "-" for m in BD_METRICS]
        speed = [_sig(_median(res[k])) for k in ("encoding_mpx_per_s", "decoding_mpx_per_s")]
        bpp_range = f"{min(res['bpp']):.3f}-{max(res['bpp']):.3f}"
        rows.append([name, str(len(res["bpp"])), bpp_range, *psnr, *msssim, *bds, *speed])
    return rows


def _sig(value: float | None) -> str:
    """Three significant digits (speeds span several orders of magnitude)."""
    return "-" if value is None else f"{value:.3g}"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def curve_table(curve: dict) -> str:
    """The averaged curve of one codec, one row per setting."""
    res = curve["results"]
    keys = ("bpp", "bits-per-subpixel", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "ssimulacra2", "encoding_time",
            "decoding_time", "top-bits-per-code", "bottom-bits-per-code")  # fmt: skip
    digits = (4, 4, 3, 5, 3, 2, 1, 1, 3, 3)
    scale = (1, 1, 1, 1, 1, 1, 1000, 1000, 1, 1)
    rows = []
    for i, setting in enumerate(res["setting"]):
        cells = [
            fmt(None if res[k][i] is None else res[k][i] * s, d) for k, d, s in zip(keys, digits, scale, strict=True)
        ]
        rows.append([str(setting), *cells])
    header = ["setting", "bpp", "bits/subpixel", "PSNR", "MS-SSIM", "MS-SSIM dB", "SSIMULACRA2", "enc ms", "dec ms",
              "top bits/code", "bottom bits/code"]  # fmt: skip
    return table(header, rows)


def same_rate_table(rows: Sequence[dict]) -> str:
    """Each learned point against the other codecs' curves at its bpp."""
    others = [k[: -len("_psnr")] for k in (rows[0] if rows else {}) if k.endswith("_psnr")]
    header = ["codec", "setting", "bpp", "PSNR", "MS-SSIM", *[f"{o} PSNR" for o in others],
              *[f"{o} MS-SSIM" for o in others]]  # fmt: skip
    body = [
        [r["codec"], str(r["setting"]), fmt(r["bpp"], 4), fmt(r["psnr"]), fmt(r["ms_ssim"], 4),
         *[fmt(r[f"{o}_psnr"]) for o in others], *[fmt(r[f"{o}_ms_ssim"], 4) for o in others]]
        for r in rows
    ]  # fmt: skip
    return table(header, body)


def _bd_cell(value: dict | None) -> str:
    return "-" if value is None else f"{value['percent']:+.1f}% [{value['low']:.2f}, {value['high']:.2f}]"


def head_to_head_table(rows: Sequence[dict]) -> str:
    """Each learned codec's BD-rate against each other codec, with the quality interval shared."""
    header = ["codec", "against", "BD-rate PSNR [dB interval]", "BD-rate MS-SSIM dB [dB interval]",
              "BD-rate SSIMULACRA2 [score interval]"]  # fmt: skip
    body = [[r["codec"], r["against"], *[_bd_cell(r[m]) for m in BD_METRICS]] for r in rows]
    return table(header, body)


def same_size_summary(rows: Sequence[dict]) -> list[dict]:
    """Same-size comparisons per codec, setting and other codec: the mean differences over the
    images and the share of images on which the codec is ahead, per metric."""
    keys = sorted({(r["codec"], str(r["setting"]), r["against"]) for r in rows})
    out = []
    for codec, setting, against in keys:
        group = [r for r in rows if (r["codec"], str(r["setting"]), r["against"]) == (codec, setting, against)]
        summary = {
            "codec": codec, "setting": setting, "against": against, "images": len(group),
            "bytes": mean([r["bytes"] for r in group]), "other_bytes": mean([r["other_bytes"] for r in group]),
            "other_quality": mean([r["other_quality"] for r in group]),
        }  # fmt: skip
        for m in SAME_SIZE_METRICS:
            deltas = [r[f"delta_{m}"] for r in group if r[f"delta_{m}"] is not None]
            summary[f"delta_{m}"] = mean(deltas)
            summary[f"ahead_{m}"] = sum(d > 0 for d in deltas) / len(deltas) if deltas else None
        out.append(summary)
    return out


def same_size_tables(rows: Sequence[dict]) -> str:
    """Averaged and per-image tables of a codec against others at the same file size."""
    names = {"psnr": "PSNR", "ms_ssim": "MS-SSIM", "ssimulacra2": "SSIMULACRA2"}
    places = {"psnr": 2, "ms_ssim": 4, "ssimulacra2": 2}
    averaged = [
        [s["codec"], s["setting"], s["against"], str(s["images"]), fmt(s["bytes"], 0), fmt(s["other_bytes"], 0),
         fmt(s["other_quality"], 1),
         *[cell for m in SAME_SIZE_METRICS for cell in (fmt(s[f"delta_{m}"], places[m]), _share(s[f"ahead_{m}"]))]]
        for s in same_size_summary(rows)
    ]  # fmt: skip
    per_image = [
        [r["codec"], str(r["setting"]), r["against"], r["image"], str(r["bytes"]), str(r["other_bytes"]),
         str(r["other_quality"]),
         *[cell for m in SAME_SIZE_METRICS for cell in (fmt(r[m], places[m]), fmt(r[f"other_{m}"], places[m]))]]
        for r in rows
    ]  # fmt: skip
    avg_header = ["codec", "setting", "against", "images", "bytes", "its bytes", "its quality",
                  *[h for m in SAME_SIZE_METRICS for h in (f"d{names[m]}", f"ahead in {names[m]}")]]  # fmt: skip
    header = ["codec", "setting", "against", "image", "bytes", "its bytes", "its quality",
              *[h for m in SAME_SIZE_METRICS for h in (names[m], f"its {names[m]}")]]  # fmt: skip
    return table(avg_header, averaged) + "\n\nPer image:\n\n" + table(header, per_image)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(run: dict) -> str:
    """The whole report: set-up, summary, BD-rate intervals, curves and same-size JPEG."""
    curves, bd = run["codecs"], run["bd_rate"]
    sizes = sorted({f"{i['width']}x{i['height']}" for i in run["images"]})
    parts = [
        "# Rate-distortion benchmark",
        f"Command: `{run['command']}`",
        f"Images: {len(run['images'])} from `{run['dataset']}` ({', '.join(sizes)}).",
        "Environment: " + ", ".join(f"{k}={v}" for k, v in run["environment"].items()),
        "Conventions: bpp = whole file; PSNR = 8-bit RGB, peak 255, mean of per-image values; MS-SSIM ="
        " pytorch-msssim `ms_ssim(data_range=255)` per channel, averaged; SSIMULACRA2 = the `ssimulacra2` package's"
        " score (100 lossless, 90 visually lossless, 70 high, 50 medium quality); quality@bpp = PCHIP over log bpp on"
        f" the averaged curve ('-' outside its range); BD-rate vs `{REFERENCE}` = PCHIP Bjontegaard on PSNR,"
        " MS-SSIM dB and SSIMULACRA2; MP/s = mean over images of pixels / best time.",
        "## Summary",
        table(SUMMARY_HEADER, summary_rows(curves, bd)),
        "BD-rate intervals (quality range integrated over):",
        "\n".join(_interval_lines(bd)),
    ]
    if run["notes"]:
        parts += ["Notes:", "\n".join(f"- {note}" for note in run["notes"])]
    for name, curve in curves.items():
        parts += [f"## {name}", curve["description"], curve_table(curve)]
    if run.get("head_to_head"):
        parts += [
            "## Head to head: BD-rate of each learned codec against each other codec, over the qualities both cover",
            head_to_head_table(run["head_to_head"]),
        ]
    if run.get("same_rate"):
        parts += ["## At the same rate, on the other codecs' averaged curves", same_rate_table(run["same_rate"])]
    if run["same_size"]:
        others = ", ".join(dict.fromkeys(r["against"] for r in run["same_size"]))
        parts += [f"## Against {others} at the same size, image by image", same_size_tables(run["same_size"])]
    return "\n\n".join(parts) + "\n"


def _interval_lines(bd: dict[str, dict]) -> list[str]:
    lines = []
    for name, by_metric in bd.items():
        for metric, value in by_metric.items():
            if value:
                lines.append(f"- `{name}` {metric}: [{value['low']:.2f}, {value['high']:.2f}]")
    return lines


def plot(curves: dict[str, dict], key: str, label: str, path: Path) -> None:
    """A quality-vs-bpp plot of every averaged curve (PNG, no display needed)."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        points = sorted(
            (b, q) for b, q in zip(curve["results"]["bpp"], curve["results"][key], strict=True) if q is not None
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set(xlabel="bits per pixel", ylabel=label, title=f"{label} vs rate")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data (the images are too small for this metric)", ha="center", transform=ax.transAxes)
    fig.savefig(path)


def write_rd(run: dict, out: Path) -> list[Path]:
    """Every output of an rd run into ``out``: rd.json, one CompressAI JSON per codec, rd.md, plots."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rd.json", run)
    paths = [out / "rd.json"]
    for name, curve in run["codecs"].items():
        write_json(out / f"{name}.json", curve)
        paths.append(out / f"{name}.json")
    (out / "rd.md").write_text(markdown(run))
    plot(run["codecs"], "psnr-rgb", "PSNR (dB)", out / "rd_psnr.png")
    plot(run["codecs"], "ms-ssim-rgb-db", "MS-SSIM (dB)", out / "rd_msssim.png")
    plot(run["codecs"], "ssimulacra2", "SSIMULACRA 2", out / "rd_ssimulacra2.png")
    return [*paths, out / "rd.md", out / "rd_psnr.png", out / "rd_msssim.png", out / "rd_ssimulacra2.png"]


def entropy_markdown(report: dict) -> str:
    """Bits per code (and per pixel) of each map under the priors and the simpler baselines."""
    methods = ("uniform", "prior", "prior_ideal", "static", "zlib", "lzma")
    names = ["uniform log2 K", "priors (real)", "priors (ideal)", "static histogram", "zlib -9", "LZMA2 -9e"]
    books = report["codebooks"]
    per_code = [
        [r["map"], str(r["codes"]), f"{r['used_codes']}/{books[r['map']]}" if r["used_codes"] is not None else "-",
         *[fmt(r[f"{m}_bits_per_code"], 3) for m in methods], fmt(r["overhead_pct"], 3)]
        for r in report["maps"]
    ]  # fmt: skip
    per_pixel = [[r["map"], *[fmt(r[f"{m}_bpp"], 4) for m in methods]] for r in report["maps"]]
    sizes = sorted({f"{i['width']}x{i['height']}" for i in report["images"]})
    return "\n\n".join([
        "# Code-map entropy",
        f"Model: `{report['model']}`; {len(report['images'])} images ({', '.join(sizes)}); "
        f"whole .vqc files: {report['file_bpp']:.4f} bpp.",
        "Bits per code:",
        table(["map", "codes", "used/K", *names, "coder overhead %"], per_code),
        "Bits per pixel (all maps' bits over all pixels):",
        table(["map", *names], per_pixel),
    ]) + "\n"  # fmt: skip


def speed_markdown(rows: Sequence[dict], command: str, environment: dict) -> str:
    """Milliseconds per stage of encode and decode, throughput and memory, per device and image."""

    def ms(seconds: float | None) -> str:
        return fmt(None if seconds is None else 1000 * seconds, 1)

    def memory(timing: dict | None) -> str:
        return "-" if timing is None else f"{timing['peak_mib']:.0f} (+{timing['peak_mib'] - timing['before_mib']:.0f})"

    body = []
    for r in rows:
        enc, dec = r["encode"], r["decode"]
        dec_cells = [ms(dec["seconds"].get(s, 0.0)) if dec else "-" for s in (*DECODE_STAGES, "total")]
        body.append([
            r["device"], str(r["threads"] or "-"), r["image"], f"{r['width']}x{r['height']}", fmt(r["bpp"], 3),
            *[ms(enc["seconds"].get(s, 0.0)) for s in (*ENCODE_STAGES, "total")],
            fmt(r["pixels"] / enc["seconds"]["total"] / 1e6, 3), memory(enc), *dec_cells, memory(dec),
        ])  # fmt: skip
    header = ["device", "threads", "image", "size", "bpp", *[f"enc {s} ms" for s in ENCODE_STAGES], "enc total ms",
              "enc MP/s", "enc peak MiB (+over start)", *[f"dec {s} ms" for s in DECODE_STAGES], "dec total ms",
              "dec peak MiB (+over start)"]  # fmt: skip
    return "\n\n".join([
        "# vqcodec speed per stage",
        f"Command: `{command}`",
        f"CPU: {environment['cpu capability']}, prior products on the CPU: {environment['prior products']}.",
        "Best of N runs after a warm-up encode; enc total = `Codec.encode_many`, dec total ="
        " `Codec.decompress_many`, per image of a batch (size: its first image's; on one thread the stages add"
        " up to about the total, the rest being padding, container and CRCs; on more, analysis, quantization"
        " and synthesis sum the threads that run an image's windows side by side, and the decoder's prior and"
        " entropy coding the processes that decode its maps side by side). Memory: the peak"
        " while encoding (warm-up included) or decoding a batch, and its rise over the start; CPU = the"
        " process's resident set (Linux VmHWM, reset per phase), CUDA = torch's allocations.",
        table(header, body),
    ]) + "\n"  # fmt: skip


def peers_markdown(
    rows: Sequence[dict], ratios: dict[str, dict[str, dict[str, float]]], environment: dict, command: str
) -> str:
    """vqcodec's CPU seconds per image, each peer's ratio image by image, and the ratios of all images."""
    peers = list(ratios)
    header = ["image", "pixels", "bpp", "vqcodec enc s", "vqcodec dec s"]
    header += [f"{p} {way}" for p in peers for way in ("enc", "dec")]
    body = [
        [r["image"], str(r["pixels"]), fmt(r["bpp"], 3), fmt(r["vqcodec encode"], 3), fmt(r["vqcodec decode"], 3),
         *[fmt(r["vqcodec " + way] / max(r[f"{p} {way}"], 1e-9), 2) for p in peers for way in ("encode", "decode")]]
        for r in rows
    ]  # fmt: skip
    summary = [
        [p, fmt(8 * sum(r[f"{p} bytes"] for r in rows) / sum(r["pixels"] for r in rows), 3),
         *[f"{ratios[p][way]['total']:.2f}x (largest {ratios[p][way]['max']:.2f}x)" for way in ("encode", "decode")]]
        for p in peers
    ]  # fmt: skip
    vq_bpp = 8 * sum(r["vqcodec bytes"] for r in rows) / sum(r["pixels"] for r in rows)
    return "\n\n".join([
        "# vqcodec against its peers",
        f"Command: `{command}`",
        f"CPU: {environment['cpu capability']}, prior products: {environment['prior products']}, torch "
        f"{environment['torch']}, {torch.get_num_threads()} thread(s). CPU seconds per image, best of the runs, "
        "vqcodec and the peers interleaved; ratio = vqcodec's time over the peer's (below 1: vqcodec is faster). "
        "Classical peers at the setting whose file is nearest in size to vqcodec's.",
        table(header, body),
        f"All images (vqcodec {vq_bpp:.3f} bpp):",
        table(["peer", "peer bpp", "encode: vqcodec / peer", "decode: vqcodec / peer"], summary),
    ]) + "\n"  # fmt: skip
