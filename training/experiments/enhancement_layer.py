"""A/B tool for a high-rate design: a scalar-quantised enhancement layer over a frozen model.

The base model codes its nearest codes as today; the enhancement codes what its synthesis
misses. Its analysis is a 4x4 block transform of the residual (initialised as the orthonormal
DCT, so it works from the first step, then learnt), each coefficient scaled by a learnt gain and
rounded to an integer around a predicted mean. A Gaussian per coefficient, whose mean and scale
come from the base code maps alone (a context network: one pass, no wavefronts, so decoding
costs one network and not a prior replay), prices the integers. The synthesis adds the inverse
transform to the base reconstruction, then an optional post-filter. Loss: the enhancement's bits
per pixel + ``lam`` x 255^2 x MSE (CompressAI's convention).

Validation (every ``--val-every`` steps, on the fixed validation photos of ``--data``): the
enhancement's bits per pixel from the rounded integers (what an entropy coder writes, to within
a fraction of a percent) and the aggregate PSNR of the enhanced and of the base reconstruction.
The base's own bits come from the codec (``--rdo 0`` files); see docs/models/medium.md.

    python training/experiments/enhancement_layer.py --data TRAIN --out RUN.safetensors \
        --lam 0.013 --postfilter 32 --steps 8000

Resumes from ``--out`` (a training checkpoint) when it exists; ``--init`` starts from another
run's checkpoint, taking the layers whose shapes match.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vqcodec.io.image import pad_to, to_tensor
from vqcodec.nn.enhancement import BLOCK, COEFFICIENTS, dct_basis
from vqcodec.nn.vqvae import VQVAE2, ResBlock
from vqcodec.training import data
from vqcodec.training.run import Run, TrainSettings
from vqcodec.zoo.catalog import model_file
from vqcodec.zoo.weights import load_model

#: Per colour channel, the DCT coefficients (vertical, horizontal frequency) the channel-
#: conditional context sees before the others: the mean and the two lowest frequencies.
FIRST = [c * BLOCK * BLOCK + k for c in range(3) for k in (0, 1, BLOCK)]
SCALE_BOUND = 0.11


class FeatureContext(nn.Module):
    """Gaussian parameters from the base synthesis' input (``VQVAE2.synthesis_input``): the code
    vectors, the top ones through the base's learnt 2x upsampling, a linear function of the codes
    (integer-exact once its weights and the code vectors are 8-bit, as the priors' are), then a
    residual stack."""

    def __init__(self, vqvae: VQVAE2, channels: int):
        super().__init__()
        e = 2 * vqvae.config.embed_dim
        self.net = nn.Sequential(
            nn.Conv2d(e, channels, 3, 1, 1),
            ResBlock(channels, channels // 2),
            ResBlock(channels, channels // 2),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * COEFFICIENTS, 3, 1, 1),
        )

    def forward(self, base: BasePass) -> torch.Tensor:
        return self.net(base.features)


class CodeContext(nn.Module):
    """Gaussian parameters from the base code maps through embeddings of their own (started from
    the base codebooks; the top one repeated 2x) and a residual stack with ELUs: the operations
    the integer prior already has."""

    def __init__(self, vqvae: VQVAE2, channels: int, blocks: int = 2):
        super().__init__()
        self.top = nn.Embedding.from_pretrained(vqvae.quantize_t.embed.clone(), freeze=False)
        self.bottom = nn.Embedding.from_pretrained(vqvae.quantize_b.embed.clone(), freeze=False)
        self.first = nn.Conv2d(2 * vqvae.config.embed_dim, channels, 3, 1, 1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1) for _ in range(2 * blocks))
        self.out = nn.Conv2d(channels, 2 * COEFFICIENTS, 3, 1, 1)

    def forward(self, base: BasePass) -> torch.Tensor:
        t = F.interpolate(self.top(base.top).permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
        h = self.first(torch.cat([t, self.bottom(base.bottom).permute(0, 3, 1, 2)], 1))
        for first, second in zip(self.convs[::2], self.convs[1::2], strict=True):
            h = h + second(F.elu(first(F.elu(h))))
        return self.out(F.elu(h))


class Enhancement(nn.Module):
    def __init__(
        self, vqvae: VQVAE2, context: str, gain: float, postfilter: int, channel_context: int, analysis: int = 0
    ):
        super().__init__()
        self.analysis = nn.Conv2d(3, COEFFICIENTS, BLOCK, BLOCK, bias=False)
        self.nonlinear = None
        if analysis:  # the encoder's own correction of the coefficients: the decoder never runs it
            c = analysis
            self.nonlinear = nn.Sequential(
                nn.Conv2d(6, c, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(c, c, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(c, COEFFICIENTS, 3, 1, 1),
            )
            _zero_last(self.nonlinear)
        self.synthesis = nn.ConvTranspose2d(COEFFICIENTS, 3, BLOCK, BLOCK, bias=False)
        with torch.no_grad():
            self.analysis.weight.copy_(dct_basis())
            self.synthesis.weight.copy_(dct_basis())
        self.log_gain = nn.Parameter(torch.full((1, COEFFICIENTS, 1, 1), math.log(gain)))
        self.context = (CodeContext if context == "codes" else FeatureContext)(vqvae, 96)
        self.refine = None
        if channel_context:  # the other coefficients' parameters also see the first ones
            c = channel_context
            self.refine = nn.Sequential(
                nn.Conv2d(2 * COEFFICIENTS + len(FIRST), c, 3, 1, 1),
                ResBlock(c, c // 2),
                nn.ReLU(),
                nn.Conv2d(c, 2 * COEFFICIENTS, 3, 1, 1),
            )
            _zero_last(self.refine)
        self.postfilter = None
        if postfilter:
            c = postfilter
            self.postfilter = nn.Sequential(
                nn.Conv2d(6, c, 3, 1, 1, padding_mode="replicate"),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, 1, 1, padding_mode="replicate"),
                nn.ReLU(),
                nn.Conv2d(c, 3, 3, 1, 1, padding_mode="replicate"),
            )
            _zero_last(self.postfilter)
        later = torch.ones(1, COEFFICIENTS, 1, 1)
        later[:, FIRST] = 0
        self.register_buffer("later", later, persistent=False)

    def forward(self, x: torch.Tensor, base: BasePass, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(enhanced reconstruction, total bits): with ``noisy``, the training proxy (uniform
        noise for rounding), else the rounded integers."""
        gain = self.log_gain.exp()
        t = self.analysis(x - base.recon)
        if self.nonlinear is not None:
            t = t + self.nonlinear(torch.cat([x - base.recon, base.recon], 1))
        y = t * gain
        params = self.context(base)
        noise = torch.empty_like(y).uniform_(-0.5, 0.5)
        if self.refine is not None:
            mu = params[:, :COEFFICIENTS]
            first = (y + noise if noisy else torch.round(y - mu) + mu)[:, FIRST]
            params = params + self.refine(torch.cat([params, first / 8], 1)) * self.later.repeat(1, 2, 1, 1)
        mu, log_scale = params.chunk(2, 1)
        scale = log_scale.exp().clamp_min(SCALE_BOUND)
        q = torch.round(y - mu)
        y_hat = y + noise if noisy else q + mu
        r = y - mu + noise if noisy else q
        normal = torch.distributions.Normal(0.0, 1.0)
        likelihood = (normal.cdf((r + 0.5) / scale) - normal.cdf((r - 0.5) / scale)).clamp_min(1e-9)
        residual = self.synthesis(y_hat / gain)
        out = base.recon + residual
        if self.postfilter is not None:
            out = out + self.postfilter(torch.cat([out, residual], 1))
        return out, -likelihood.log2().sum()


def _zero_last(net: nn.Sequential) -> None:
    """Zero the last layer, so that a new part starts as no change at all."""
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)


class BasePass(NamedTuple):
    """What the frozen base gives the enhancement: its nearest code maps, its synthesis' input
    and its reconstruction."""

    top: torch.Tensor
    bottom: torch.Tensor
    features: torch.Tensor
    recon: torch.Tensor


@torch.no_grad()
def base_pass(vqvae: VQVAE2, x: torch.Tensor) -> BasePass:
    top, bottom = vqvae.encode(x)
    features = vqvae.synthesis_input(vqvae.quantize_t.lookup(top), vqvae.quantize_b.lookup(bottom))
    return BasePass(top, bottom, features, vqvae.dec(features))


@torch.no_grad()
def enhance(net: Enhancement, vqvae: VQVAE2, rgb: np.ndarray) -> tuple[dict[str, float], float]:
    """One image through base and enhancement (rounded integers): the summed squared error of
    each reconstruction in 8-bit levels, and the enhancement's bits."""
    h, w = rgb.shape[:2]
    x = to_tensor(pad_to(rgb, vqvae.config.top_stride))
    base = base_pass(vqvae, x)
    out, bits = net(x, base, noisy=False)
    ref = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double()
    errors = {}
    for name, t in (("enhanced", out), ("base", base.recon)):
        levels = ((t[0, :, :h, :w].double().clamp(-1, 1) + 1) * 127.5).round()
        errors[name] = float(((levels - ref) ** 2).sum())
    return errors, float(bits)


def psnr(squared_error: float, values: float) -> float:
    return 10 * math.log10(255**2 / (squared_error / values))


def validate(net: Enhancement, vqvae: VQVAE2, images: list[np.ndarray]) -> dict[str, float]:
    """The enhancement's bits per pixel and the aggregate PSNR of both reconstructions."""
    net.eval()
    bits = pixels = 0.0
    errors = {"enhanced": 0.0, "base": 0.0}
    for rgb in images:
        e, b = enhance(net, vqvae, rgb)
        errors = {name: errors[name] + e[name] for name in errors}
        bits += b
        pixels += rgb.shape[0] * rgb.shape[1]
    net.train()
    return {
        "enhancement_bpp": bits / pixels,
        "psnr": psnr(errors["enhanced"], 3 * pixels),
        "base_psnr": psnr(errors["base"], 3 * pixels),
    }


def evaluate(net: Enhancement, vqvae: VQVAE2, base_name: str, folder: str) -> dict[str, float]:
    """Every image of ``folder``, as the bench reports a codec: mean bits per pixel (the base's
    ``--rdo 0`` file + the enhancement's bits) and mean per-image PSNR."""
    import vqcodec

    codec = vqcodec.load(path=model_file(base_name), device="cpu", rdo=0)
    net.eval()
    bpp, psnrs = [], []
    for rgb in data.load_rgb(data.image_files(folder)):
        errors, bits = enhance(net, vqvae, rgb)
        pixels = rgb.shape[0] * rgb.shape[1]
        bpp.append((8 * len(codec.compress(rgb)) + bits) / pixels)
        psnrs.append(psnr(errors["enhanced"], 3 * pixels))
    return {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnrs))}


def export(net: Enhancement, base_name: str, folder: str, out: Path) -> None:
    """Write the base model with ``net`` added as its next enhancement layer (``vqcodec.nn.
    enhancement``, whose code context has this tool's names), calibrated for the integer context."""
    from vqcodec.training.enhancement import calibrate, save_enhanced, with_layer

    if not isinstance(net.context, CodeContext) or net.refine is not None or net.nonlinear is not None:
        raise SystemExit("only a layer with --context codes and neither --channel-context nor --analysis exports")
    model, index = with_layer(load_model(model_file(base_name)), None)
    layer = model.enhancements[index]
    missing = layer.load_state_dict(net.state_dict(), strict=False).missing_keys
    assert all(k == "tables" or k.endswith("absmax") for k in missing), missing
    calibrate(layer, model.vqvae, data.load_rgb(data.split(folder)[1]))
    save_enhanced(model, out)
    print(f"model: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="training photos (one in ten held out by name)")
    p.add_argument("--out", required=True, type=Path, help="training checkpoint (resumed when it exists)")
    p.add_argument("--base", default="medium", help="frozen base model: preset or model file")
    p.add_argument("--init", type=Path, help="start from another run's checkpoint (matching layers)")
    p.add_argument("--lam", type=float, default=0.013)
    p.add_argument("--gain", type=float, default=8.0, help="initial coefficient gain (1/step on [-1, 1])")
    p.add_argument("--context", choices=("features", "codes"), default="features")
    p.add_argument("--postfilter", type=int, default=0, help="post-filter width (0: none)")
    p.add_argument("--fresh-postfilter", action="store_true", help="start the post-filter anew (not from --init)")
    p.add_argument("--channel-context", type=int, default=0, help="width of the channel-conditional refinement")
    p.add_argument("--analysis", type=int, default=0, help="width of a nonlinear correction of the analysis (0: none)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--evaluate", metavar="FOLDER", help="only evaluate --init on every image of FOLDER")
    p.add_argument(
        "--export", type=Path, metavar="MODEL", help="only write --base with --init's layer (--context codes) added, "
        "calibrated on the validation photos of --data, as a model file for the codec"
    )  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    vqvae = load_model(model_file(args.base)).vqvae.eval().requires_grad_(False)
    net = Enhancement(vqvae, args.context, args.gain, args.postfilter, args.channel_context, args.analysis)
    settings = TrainSettings(
        steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
        val_every=args.val_every, checkpoint_every=args.val_every,
    )  # fmt: skip
    meta = {"stage": "enhancement", "base": args.base, "lam": args.lam, "context": args.context}
    run = Run(args.out, {"enhancement": net}, settings, meta)
    run.resume()
    if run.step == 0 and args.init:
        prefix = "enhancement."
        theirs = {k[len(prefix) :]: v for k, v in load_file(str(args.init)).items() if k.startswith(prefix)}
        own = net.state_dict()
        if args.fresh_postfilter:
            theirs = {k: v for k, v in theirs.items() if not k.startswith("postfilter.")}
        net.load_state_dict({k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}, strict=False)
    if args.evaluate:
        print(evaluate(net, vqvae, args.base, args.evaluate))
        return
    if args.export:
        export(net, args.base, args.data, args.export)
        return
    train_files, val_files = data.split(args.data)
    sampler = data.CropSampler(data.load_rgb(train_files), settings.crop, run.generator)
    val_images = data.load_rgb(val_files)

    def train_step() -> dict[str, float]:
        x = sampler.sample(settings.batch)
        out, bits = net(x, base_pass(vqvae, x), noisy=True)
        bpp = bits / (x.shape[0] * x.shape[2] * x.shape[3])
        mse = F.mse_loss(out, x) / 4  # on [0, 1]
        loss = bpp + args.lam * 255**2 * mse
        loss.backward()
        return {"loss": loss.item(), "bpp": bpp.item(), "psnr": -10 * math.log10(mse.item())}

    run.loop(train_step, lambda: validate(net, vqvae, val_images))


if __name__ == "__main__":
    main()
