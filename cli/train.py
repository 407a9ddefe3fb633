"""``vqcodec train``: the training stages (``vqcodec.training``), imported only when one runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from vqcodec.defaults import AUGMENTS, DEFAULT_TILE, WEIGHINGS
from vqcodec.nn.config import ARCHITECTURES, PricerConfig

from .main import main
from .options import file_steps_option, finite


@main.group()
def train() -> None:
    """Train models: `train vqvae` first, then `train prior` on its code maps; `train decoder`
    fine-tunes a finished model's synthesis, `train combine` joins it to retrained priors;
    `train enhancement` adds a layer for higher rates."""


def _settings_options(crop_default: int, crop_help: str):
    def wrap(f):
        options = [
            click.option("--steps", type=click.IntRange(1), default=20000, show_default=True),
            click.option("--batch", type=click.IntRange(1), default=16, show_default=True),
            click.option("--crop", type=click.IntRange(1), default=crop_default, show_default=True, help=crop_help),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--val-every", type=click.IntRange(1), default=500, show_default=True),
            click.option("--checkpoint-every", type=click.IntRange(1), default=1000, show_default=True),
            click.option(
                "--ema",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.0,
                show_default=True,
                help="Decay of a moving average of the weights, which the finished model takes (0: none).",
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


_init_option = click.option(
    "--init", metavar="PRESET|PATH", help="Fine-tune: start from the weights of a shipped preset or model file."
)


_bf16_option = click.option("--bf16", is_flag=True, help="Train in bfloat16 autocast (about twice as fast).")
_colour_option = click.option(
    "--colour-augment",
    "colour",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of crops recoloured or replaced by flat colours and ramps, so rare colours come back right.",
)
_ms_ssim_option = click.option(
    "--ms-ssim",
    "ms_ssim_share",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of the distortion measured as MS-SSIM instead of MSE (needs --crop 161 or more).",
)
_weigh_option = click.option(
    "--weigh",
    type=click.Choice(WEIGHINGS),
    default="area",
    show_default=True,
    help="Draw crops from the images by area (every pixel alike) or each image alike.",
)


def _data_and_out(out_help: str) -> Callable:
    """``--data`` (the folder of training images) and ``--out`` (the file a stage writes)."""

    def decorate(f: Callable) -> Callable:
        f = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=out_help)(f)
        return click.option("--data", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))(f)

    return decorate


def _training(stage: str) -> ModuleType:
    """The module ``vqcodec.training.<stage>``, imported when a training command runs: it brings
    torch, which the other commands' start-up does without. Joins torchrun's process group."""
    _stage("run").init_distributed()
    return _stage(stage)


def _stage(name: str) -> ModuleType:
    return importlib.import_module(f"vqcodec.training.{name}")


def _settings(kwargs: dict) -> Any:
    settings = _stage("run").TrainSettings
    return settings(**{k: kwargs.pop(k) for k in list(kwargs) if k in settings.__dataclass_fields__})


@train.command(name="vqvae")
@_data_and_out("Checkpoint file.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="medium", show_default=True)
@_init_option
@_colour_option
@_weigh_option
@click.option(
    "--replicate-edges", is_flag=True, help="Convolutions see the edge values repeated beyond the edges, not zeros."
)
@_settings_options(128, "Crop side in pixels.")
def train_vqvae_command(
    folder: Path, out: Path, arch: str, init: str | None, replicate_edges: bool, **kwargs: Any
) -> None:
    """Stage 1: train a VQ-VAE on the images in DATA (resumes from OUT if it exists)."""
    _training("vqvae").train_vqvae(folder, out, arch, _settings(kwargs), init, replicate_edges)
    click.echo(f"VQ-VAE checkpoint: {out} (log: {out.with_suffix('.jsonl')})")


@train.command(name="prior")
@click.option(
    "--vqvae",
    "vqvae_source",
    required=True,
    metavar="CKPT|PRESET|PATH",
    help="A stage-1 checkpoint, or a finished model whose VQ-VAE to keep (its priors are retrained).",
)
@_data_and_out("Finished model file.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), help="Priors' architecture [default: the VQ-VAE's].")
@_init_option
@click.option("--rdo", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=finite,
              help="Learn the codes the encoder writes at this RDO strength, priced by the priors of "
              "--vqvae (a finished model), instead of the nearest codes.")  # fmt: skip
@click.option("--augment", type=click.Choice(AUGMENTS), multiple=True,
              help="Also learn the maps of mirrored (left to right) or shifted (by half a bottom code) "
              "copies of the training photos; give both for four maps a photo.")  # fmt: skip
@_bf16_option
@_settings_options(DEFAULT_TILE, "Crop side in top-map codes (bottom crops are twice that).")
def train_prior_command(
    vqvae_source: str,
    folder: Path,
    out: Path,
    arch: str | None,
    init: str | None,
    rdo: float,
    augment: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Stage 2: train the priors on the code maps of DATA; writes the codec model OUT."""
    checkpoint = out.with_name(out.name + ".ckpt")
    stage = _training("priors")
    stage.train_prior(vqvae_source, folder, checkpoint, out, _settings(kwargs), arch, init, rdo, augment)
    _report_model(out, checkpoint)


@train.command(name="decoder")
@click.option("--model", "source", required=True, metavar="PRESET|PATH", help="The finished model to fine-tune.")
@_data_and_out("Tuned model file.")
@click.option("--synth-channels", type=click.IntRange(2), help="Grow the synthesis to this width.")
@click.option("--synth-res-blocks", type=click.IntRange(0), help="Grow the synthesis to this many residual blocks.")
@click.option("--synth-res-channels", type=click.IntRange(2), help="Grow the residual blocks to this width.")
@click.option("--synth-up-blocks", type=click.IntRange(0), help="Grow: residual blocks after each inner upsampling.")
@_bf16_option
@_colour_option
@_weigh_option
@_ms_ssim_option
@_settings_options(128, "Crop side in pixels.")
def train_decoder_command(source: str, folder: Path, out: Path, ms_ssim_share: float, **kwargs) -> None:
    """Stage 3: fine-tune MODEL's synthesis on its own codes of DATA; codes and file sizes stay
    the same, only the reconstruction changes. Writes the tuned model OUT. The --synth-* options
    first grow the synthesis, starting from exactly what it computes (files of MODEL still decode
    to the same maps; the new model has its own identifier)."""
    checkpoint = out.with_name(out.name + ".ckpt")
    sizes = {k: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("synth_")]}
    grow = {k: v for k, v in sizes.items() if v is not None}
    _training("synthesis").train_decoder(source, folder, checkpoint, out, _settings(kwargs), grow, ms_ssim_share)
    _report_model(out, checkpoint)


@train.command(name="enhancement")
@click.option("--model", "source", required=True, metavar="PRESET|PATH", help="The finished model to enhance.")
@_data_and_out("Enhanced model file.")
@click.option(
    "--lam",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    callback=finite,
    help="Rate: loss = bits per pixel + LAM x 255^2 x MSE, or the MS-SSIM mix (larger: more bits, higher quality).",
)
@click.option("--layer", type=click.IntRange(1), help="Continue this layer of MODEL (1-based) instead of adding one.")
@_ms_ssim_option
@click.option(
    "--straight-through",
    is_flag=True,
    help="Synthesise from rounded coefficients, as decoding does (gradients pass the rounding); noise prices them.",
)
@click.option(
    "--anchor-channels",
    type=click.IntRange(1, 1024),
    help="Give the layers a second pass of this width (a checkerboard of blocks, the second half "
    "priced from the first), starting as no change.",
)
@click.option(
    "--overlap",
    type=click.IntRange(1, 4),
    help="Make the layers' block transforms lapped ones reaching this many pixels into the "
    "neighbouring blocks, starting as the same transforms.",
)
@click.option(
    "--file-steps",
    default="0",
    show_default=True,
    metavar="STEP,...",
    callback=file_steps_option,
    help="Train for files at these steps of the layer (one drawn per batch; validated at each).",
)
@_settings_options(128, "Crop side in pixels.")
def train_enhancement_command(
    source: str,
    folder: Path,
    out: Path,
    lam: float,
    layer: int | None,
    ms_ssim_share: float,
    straight_through: bool,
    anchor_channels: int | None,
    overlap: int | None,
    file_steps: tuple[int, ...],
    **kwargs,
) -> None:
    """Stage 4: train an enhancement layer over MODEL, which stays frozen (its files still
    decode): coefficients of what its synthesis misses, for rates above its own. Writes MODEL with
    the layer to OUT (the new model has its own identifier). Add layers from the lowest rate up."""
    checkpoint = out.with_name(out.name + ".ckpt")
    _training("enhancement").train_enhancement(
        source,
        folder,
        checkpoint,
        out,
        lam,
        _settings(kwargs),
        layer,
        ms_ssim_share,
        straight_through,
        anchor_channels,
        overlap,
        file_steps,
    )
    _report_model(out, checkpoint)


@train.command(name="tables")
@click.option("--model", "source", required=True, metavar="PRESET|PATH", help="The model whose layers to refit.")
@_data_and_out("Refitted model file.")
@click.option(
    "--file-steps",
    metavar="STEP,...",
    callback=file_steps_option,
    help="Count every layer at these steps [default: the steps the --quality rungs use each layer at].",
)
def train_tables_command(source: str, folder: Path, out: Path, file_steps: tuple[int, ...] | None) -> None:
    """Stage 5: refit the frequency tables of MODEL's enhancement layers to how often each
    integer occurs when they code DATA's training photos (at the steps files use them at): the
    same coefficients and images, smaller files. Writes the model OUT (its own identifier)."""
    _training("tables").train_tables(source, folder, out, file_steps)
    click.echo(f"model: {out}")


@train.command(name="pricer")
@click.option("--model", "source", required=True, metavar="PRESET|PATH", help="The finished model to price for.")
@_data_and_out("Model file with the pricer (the same identifier).")
@click.option("--channels", type=click.IntRange(1, 1024), default=32, show_default=True, help="The pricer's width.")
@click.option("--res-blocks", type=click.IntRange(0, 32), default=2, show_default=True, help="Its residual blocks.")
@_settings_options(32, "Crop side in top-map codes (bottom crops are twice that).")
def train_pricer_command(source: str, folder: Path, out: Path, channels: int, res_blocks: int, **kwargs) -> None:
    """Stage 6: distil from MODEL's bottom prior a small network that prices RDO's candidate codes
    for a fraction of the prior's time (encoder only). Writes MODEL with it to OUT: the same
    identifier, the same decoding, faster encoding at the RDO points."""
    checkpoint = out.with_name(out.name + ".ckpt")
    config = PricerConfig(channels, res_blocks)
    _training("pricer").train_pricer(source, folder, checkpoint, out, _settings(kwargs), config)
    _report_model(out, checkpoint)


@train.command(name="combine")
@click.option("--priors", required=True, metavar="PRESET|PATH", help="The model whose priors (and codes) to keep.")
@click.option("--synthesis", required=True, metavar="PRESET|PATH", help="The model whose synthesis to take.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Combined model file.")
@click.option(
    "--resampled",
    is_flag=True,
    help="Keep the first model whole and add the synthesis as its synthesis of resampled copies "
    "(the --quality points below the default), which decode fewer codes and so afford a larger one.",
)
def train_combine_command(priors: str, synthesis: str, out: Path, resampled: bool) -> None:
    """Join a `train prior` run and a `train decoder` run made side by side on one model: the
    priors of the first with the synthesis of the second. Both must code images alike."""
    _stage("synthesis").combine(priors, synthesis, out, resampled)
    click.echo(f"model: {out}")


def _report_model(out: Path, checkpoint: Path) -> None:
    click.echo(f"model: {out} (checkpoint: {checkpoint}, log: {checkpoint.with_suffix('.jsonl')})")
