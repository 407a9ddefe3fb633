"""The codec API: images to ``.vqc`` bytes and back, with a loaded model on a chosen device."""

from __future__ import annotations

import copy
import numbers
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch
from PIL import Image

from .coding import enhancement, mapcoder, partial, restoration, tiles
from .coding.enhancement import IntegerContext
from .coding.mapcoder import MapLayout, MapStats
from .coding.qprior import IntegerPrior
from .coding.rdo import CANDIDATES, Terms, choose, curvature_margin, window_terms
from .coding.restoration import Filter
from .defaults import DEFAULT_PRESET, WHOLE_WINDOW, WINDOW, WINDOW_MARGIN
from .errors import DecodeMismatchError, FormatError, InputError, ModelError, ModelMismatchError, UsageError
from .format import container
from .format.container import DEFAULT_MAX_PIXELS, Header, Streams
from .io.image import (
    ImageLike,
    Picture,
    check_size,
    pad_to,
    padding,
    read_image,
    resample,
    scaled_size,
    to_pil,
    to_rgb,
    to_tensor,
)
from .nn.model import CodecModel
from .quality import operating_point
from .settings import Settings
from .threads import one_torch_thread, use_threads
from .timing import ENHANCEMENT, PRIOR, QUANTIZATION, RESTORATION, SYNTHESIS, Timer, no_timer
from .zoo import catalog
from .zoo.weights import load_model, model_id

T = TypeVar("T")

#: RDO's last pass leaves a synthesis at the codes before its choice, which the restoration filter
#: is fitted to in place of one of the chosen codes (one synthesis less) while the choice changed
#: fewer than this share of them. Flat colours may see most of theirs go to one cheaper code,
#: whose colour that fit would not correct (docs/design.md, "Constants").
STAND_IN_SHARE = 0.25


#: What the decoder takes: the bytes of a ``.vqc`` file (bytes, bytearray, memoryview), its path,
#: or a binary file object to read it from.
VqcLike = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def vqc_bytes(data: VqcLike) -> bytes:
    """The bytes of a ``.vqc`` file given as bytes, a path or a binary file object (read no
    further than its header says the file runs: ``container.read_file``)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data, "rb") as f:
                return container.read_file(f)
        except OSError as exc:
            raise InputError(f"cannot read {data}: {exc.strerror or exc}") from exc
    if hasattr(data, "read"):
        try:
            head = data.read(0)
        except (UnicodeDecodeError, OSError) as exc:
            raise InputError(f"cannot read the .vqc file object (it must be opened in binary mode): {exc}") from exc
        if not isinstance(head, bytes):
            raise InputError("the .vqc file object must be opened in binary mode")
        try:
            return container.read_file(data)
        except (UnicodeDecodeError, OSError) as exc:
            raise InputError(f"cannot read the .vqc file object: {exc}") from exc
    raise InputError(f"cannot decode a {type(data).__name__}: pass bytes, a path or a binary file object")


@dataclass(frozen=True)
class Coefficients:
    """An enhancement layer's dequantised coefficients (H/s, W/s, 48) of one image: the model's
    ``layer`` (1-based) at quantisation ``step`` (``nn.enhancement.step_factor``)."""

    layer: int
    step: int
    values: np.ndarray


@dataclass(frozen=True)
class CodeMaps:
    """The top (H/2s, W/2s) and bottom (H/s, W/s) code index maps of one image, and the
    coefficients of an enhancement layer where it has one."""

    top: np.ndarray
    bottom: np.ndarray
    enhancement: Coefficients | None = None


@dataclass(frozen=True)
class Encoded:
    """The result of ``Codec.encode``: the file's bytes, its code maps and per-map statistics."""

    data: bytes
    codes: CodeMaps
    top: MapStats
    bottom: MapStats
    width: int
    height: int
    #: Size of the image the maps code: (width, height), or the resampled copy's (see ``Codec``).
    coded_size: tuple[int, int]
    #: The restoration filter the file carries, if any.
    restoration: Filter | None = None

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, header included."""
        return 8 * len(self.data) / (self.width * self.height)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but no CUDA GPU is available")
    if resolved.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r}: use auto, cpu or cuda")
    return resolved


def load(
    preset: str | None = None,
    *,
    path: str | Path | None = None,
    device: str = "auto",
    quality: int | None = None,
    settings: Settings | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    processes: int = 1,
    **overrides: Any,
) -> Codec:
    """A ``Codec`` with a shipped preset (default ``DEFAULT_PRESET``) or the model file at
    ``path``, writing with the model's settings, or ``settings``, at the operating point of
    ``quality`` if given, with ``overrides`` (``Settings`` fields); ``max_pixels`` and
    ``processes``: see ``Codec``."""
    if preset is not None and path is not None:
        raise ModelError("give a preset or a model path, not both")
    name = preset or (str(path) if path else DEFAULT_PRESET)
    model = load_model(path if path is not None else catalog.preset_path(name))
    return Codec(
        model, device=device, name=name, settings=settings, quality=quality, max_pixels=max_pixels,
        processes=processes, **overrides,
    )  # fmt: skip


def load_for(data: VqcLike, *, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, processes: int = 1) -> Codec:
    """A ``Codec`` with the shipped model that made the ``.vqc`` file ``data``, found by the
    identifier in its header: a preset, or a model an earlier release shipped and a later one
    replaced (kept so that its files still decode)."""
    name, path = catalog.find(container.read_header(vqc_bytes(data)).model_id)
    return Codec(load_model(path), device=device, name=name, max_pixels=max_pixels, processes=processes)


def window_side(top_shape: tuple[int, ...]) -> int:
    """Side in top codes of the VQ-VAE's windows over a top map of ``top_shape``: the whole map
    where it is at most ``WHOLE_WINDOW`` codes on each side, else ``WINDOW``."""
    return max(top_shape[:2]) if max(top_shape[:2]) <= WHOLE_WINDOW else WINDOW


class Codec:
    """Compresses images to ``.vqc`` bytes and back with one ``CodecModel``, at any operating
    point: each call may name its own settings, and ``with_settings`` gives the same codec with
    other defaults, sharing the loaded model and its compiled priors."""

    def __init__(
        self,
        model: CodecModel,
        device: str | torch.device = "auto",
        name: str = "custom",
        settings: Settings | None = None,
        *,
        quality: int | None = None,
        cuda_graphs: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        processes: int = 1,
        **overrides: Any,
    ):
        """The encoder writes with ``settings`` (by default the model's: ``zoo.catalog``), at
        the operating point of ``quality`` (0..100) if given, with ``overrides`` (``Settings``
        fields): ``self.settings``. Any file decodes whatever they were. ``cuda_graphs``: on a
        GPU, the decoder replays each batch's wavefront steps from a CUDA graph (see
        ``vqcodec.coding.steps``); the same codes either way. ``max_pixels``: larger images are
        refused, to code and to decode, before any work (a tiny file can claim a huge image: the
        limit bounds what one file costs). ``processes``: the decoder decodes the segments of a
        map (``container``) in that many processes side by side, this one and forked children
        (on the CPU, on Linux; the same codes either way)."""
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise UsageError(f"max_pixels must be a whole number of at least 1, got {max_pixels!r}")
        if isinstance(processes, bool) or not isinstance(processes, numbers.Integral) or processes < 1:
            raise UsageError(f"processes must be a whole number of at least 1, got {processes!r}")
        self.cuda_graphs, self.max_pixels, self.processes = cuda_graphs, max_pixels, int(processes)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.name = name
        self.model_id = model_id(self.model)
        if self.device.type == "cpu":
            # The CPU's convolutions (analysis, synthesis) run faster on channels-last weights
            # and activations (docs/benchmarks.md): the same function, in another memory order.
            for part in (self.model.vqvae, self.model.resampled_synthesis):
                if part is not None:
                    part.to(memory_format=torch.channels_last)
        base = settings if settings is not None else Settings(**catalog.settings_of(self.model_id))
        self.settings = _settings_for(base, quality, overrides, len(model.enhancements))
        # The encoder's single pass over whole maps runs fastest on torch (its BLAS and indexing
        # use every core); the decoder's many small wavefront steps run fastest on numpy. Both
        # give the same integers, which every CPU round trip checks through the content CRC.
        priors = (model.top_prior, model.bottom_prior)
        self.encoding_priors = tuple(IntegerPrior(p, self.device, use_torch=True) for p in priors)
        self.decoding_priors = (
            tuple(IntegerPrior(p, self.device) for p in priors) if self.device.type == "cpu" else self.encoding_priors
        )
        self.top_stride = model.config.vqvae.top_stride
        vqvae = self.model.vqvae
        #: For each codebook, the code nearest its last one: what the encoder writes where the
        #: coder cannot encode the last code (see ``mapcoder.encode``).
        self._substitutes = tuple(
            _nearest_other(q.embed, q.embed.shape[0] - 1) for q in (vqvae.quantize_t, vqvae.quantize_b)
        )
        #: The integer context of each enhancement layer (``coding.enhancement``).
        self.contexts = [IntegerContext(layer, self.device) for layer in self.model.enhancements]

    def with_settings(self, settings: Settings | None = None, *, quality: int | None = None, **overrides: Any) -> Codec:
        """This codec writing with ``settings`` (by default its own), at the operating point of
        ``quality`` if given, with ``overrides``: the loaded model and priors are shared."""
        view = copy.copy(self)
        view.settings = _settings_for(settings or self.settings, quality, overrides, len(self.model.enhancements))
        return view

    # -- encoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, image: ImageLike, timer: Timer = no_timer, *, quality: int | None = None, **overrides: Any
    ) -> Encoded:
        """Compress ``image`` and report its code maps and the bits each map took (``timer``: see
        ``vqcodec.timing``; ``quality`` and ``overrides``: this call's settings, see
        ``with_settings``)."""
        return self.encode_many([image], timer, quality=quality, **overrides)[0]

    @torch.no_grad()
    def encode_many(
        self, images: Sequence[ImageLike], timer: Timer = no_timer, *, quality: int | None = None, **overrides: Any
    ) -> list[Encoded]:
        """``encode`` several images at once: their maps share the priors' batches (more positions
        per step, which a GPU needs to be busy). Each file is the one ``encode`` would write."""
        if quality is not None or overrides:
            return self.with_settings(quality=quality, **overrides).encode_many(images, timer)
        s = self.settings
        if s.enhancement > len(self.contexts):
            raise UsageError(f"enhancement layer {s.enhancement}: the model ({self.name}) has {len(self.contexts)}")
        pics = [read_image(image, self.max_pixels) for image in images]
        sizes = [scaled_size(*pic.size, s.scale, self.max_pixels) for pic in pics]
        resampled = [size != pic.size for pic, size in zip(pics, sizes, strict=True)]
        coded = self._code_maps([resample(p.rgb, *size) for p, size in zip(pics, sizes, strict=True)], resampled, timer)
        tops, bottoms, syntheses = coded
        top_maps = [MapLayout(t.shape, s.tile, segmented=True) for t in tops]
        bottom_maps = [MapLayout(b.shape, 2 * s.tile, t, segmented=True) for t, b in zip(tops, bottoms, strict=True)]
        top_prior, bottom_prior = self.encoding_priors
        top_substitute, bottom_substitute = self._substitutes
        top_coded = mapcoder.encode(top_prior, tops, top_maps, top_substitute, timer)
        bottom_coded = mapcoder.encode(bottom_prior, bottoms, bottom_maps, bottom_substitute, timer)
        if s.enhancement:
            enhanced = [
                self._enhance(p.rgb, top, bottom, timer) for p, top, bottom in zip(pics, tops, bottoms, strict=True)
            ]
        else:
            enhanced = [(CodeMaps(top, bottom), b"", None) for top, bottom in zip(tops, bottoms, strict=True)]
        filters = [
            self._fit_restoration(pic, size, codes, synthesis, bases, len(t[0]) + len(b[0]) + len(record), timer)
            for pic, size, (codes, record, bases), synthesis, t, b in zip(
                pics, sizes, enhanced, syntheses, top_coded, bottom_coded, strict=True
            )
        ]
        return [
            self._pack(pic, size, (codes, record), t, b, f)
            for pic, size, (codes, record, _), t, b, f in zip(
                pics, sizes, enhanced, top_coded, bottom_coded, filters, strict=True
            )
        ]

    def _enhance(
        self, rgb: np.ndarray, top: np.ndarray, bottom: np.ndarray, timer: Timer
    ) -> tuple[CodeMaps, bytes, dict[tiles.Region, torch.Tensor]]:
        """The code maps with the coefficients of the settings' enhancement layer, its record (the
        residual of each synthesis window's image, rounded around the integer context's means),
        and each window's image of the code maps alone, which the enhanced synthesis starts from."""
        s = self.settings
        layer = self.model.enhancements[s.enhancement - 1]
        bases: dict[tiles.Region, torch.Tensor] = {}

        def analyse(x: torch.Tensor, outer: tiles.Region) -> list[torch.Tensor]:
            window = (outer.take(top), outer.scaled(2).take(bottom))
            t, b = (torch.as_tensor(m, device=self.device).unsqueeze(0) for m in window)
            with timer(SYNTHESIS):
                base = bases[outer] = self.model.vqvae.decode(t, b)
            with timer(ENHANCEMENT):
                return [layer.coefficients(x, base, s.enhancement_step).permute(0, 2, 3, 1)]

        (y,) = self._analyse(rgb, analyse)
        with timer(ENHANCEMENT):
            context = self.contexts[s.enhancement - 1]
            q, mean, stream = enhancement.encode_layer(context, y, top, bottom, s.enhancement_step)
        values = enhancement.dequantise(q, mean)
        record = container.enhancement_record(s.enhancement, s.enhancement_step, enhancement.crc(q), stream)
        return CodeMaps(top, bottom, Coefficients(s.enhancement, s.enhancement_step, values)), record, bases

    def _fit_restoration(
        self,
        pic: Picture,
        coded_size: tuple[int, int],
        codes: CodeMaps,
        synthesis: np.ndarray | None,
        bases: dict[tiles.Region, torch.Tensor] | None,
        map_bytes: int,
        timer: Timer,
    ) -> Filter | None:
        """The restoration filter worth writing for ``pic`` coded as ``codes`` (None: none), fitted
        to ``synthesis`` where RDO left one (see ``_code_maps``), else to what ``codes`` give (from
        the windows' ``bases``, see ``_synthesise``)."""
        if not self.settings.restore:
            return None
        if synthesis is None:
            padded = self._synthesise(codes, timer, bases=bases, resampled=coded_size != pic.size)
        else:
            padded = synthesis
        decoded = self._picture(padded, coded_size, *pic.size, timer)
        with timer(RESTORATION):
            return restoration.fit(pic.rgb, decoded, map_bytes)

    def compress(self, image: ImageLike, *, quality: int | None = None, **overrides: Any) -> bytes:
        """``.vqc`` bytes of a PIL image, an HxW(xC) uint8 array, an image file's path or its bytes
        (bytes or a binary file object); ``quality`` and ``overrides``: see ``encode``."""
        return self.encode(image, quality=quality, **overrides).data

    def compress_many(
        self, images: Sequence[ImageLike], *, quality: int | None = None, **overrides: Any
    ) -> list[bytes]:
        """``compress`` several images at once (see ``encode_many``)."""
        return [encoded.data for encoded in self.encode_many(images, quality=quality, **overrides)]

    def _pack(
        self,
        pic: Picture,
        coded_size: tuple[int, int],
        enhanced: tuple[CodeMaps, bytes],
        top_coded: tuple[bytes, MapStats],
        bottom_coded: tuple[bytes, MapStats],
        restored: Filter | None,
    ) -> Encoded:
        width, height = pic.size
        codes, record = enhanced
        top, bottom = codes.top, codes.bottom
        streams = Streams(
            top_coded[0],
            bottom_coded[0],
            container.compress_alpha(pic.alpha) if pic.alpha is not None else b"",
            b"" if self.settings.strip_metadata else container.encode_metadata(pic.metadata),
            restoration.to_bytes(restored) if restored is not None else b"",
            record,
        )
        header = Header(
            channels=pic.channels, tile=self.settings.tile, model_id=self.model_id, width=width, height=height,
            pad_x=padding(coded_size[0], self.top_stride), pad_y=padding(coded_size[1], self.top_stride),
            top_shape=top.shape, bottom_shape=bottom.shape,
            top_len=0, bottom_len=0, alpha_len=0, payload_crc=0,
            content_crc=container.content_crc(top, bottom, pic.alpha),
            flags=(container.FLAG_RESAMPLED if coded_size != pic.size else 0)
            | (container.FLAG_SEGMENTS if mapcoder.needs_segments(top.shape, bottom.shape, self.settings.tile) else 0),
        )  # fmt: skip
        data = container.pack(header, streams)
        return Encoded(data, codes, top_coded[1], bottom_coded[1], width, height, coded_size, restored)

    def _code_maps(
        self, images: list[np.ndarray], resampled: list[bool], timer: Timer
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
        """Each RGB image's top and bottom code maps: the nearest codes, or with ``rdo`` the bottom
        codes RDO prefers after ``rdo_passes`` choices, each pricing the candidates by the prior in
        the context of the previous choice (at first, the nearest codes), and the error by the
        model's own synthesis. With RDO, also what its last pass synthesised (at the codes before
        its choice; padded to the top stride) where it stands in for the chosen codes
        (``STAND_IN_SHARE``; never under an enhancement layer, nor for a copy the model's
        synthesis of resampled copies decodes (``resampled``: each image is a copy at another size
        than its own), whose images it is not), else None: the restoration filter is fitted to it,
        which saves a synthesis for a little less gain (docs/design.md). RDO's error by a
        synthesis of resampled copies would cost more encoding time than their points can spare
        (docs/design.md, "Constants")."""
        vqvae, s = self.model.vqvae, self.settings
        if not s.rdo:
            maps = [self._analyse(rgb, lambda x, _: vqvae.encode(x, timer)) for rgb in images]
            return [t for t, _ in maps], [b for _, b in maps], [None] * len(maps)
        found = [self._analyse(rgb, lambda x, _: vqvae.encode_candidates(x, CANDIDATES, timer)) for rgb in images]
        tops, candidates = [t for t, _ in found], [c for _, c in found]
        maps = [MapLayout(c.shape[:2], 2 * s.tile, t) for t, c in zip(tops, candidates, strict=True)]
        chosen = [c[..., 0] for c in candidates]
        margin = curvature_margin(s.rdo_passes)
        for _ in range(s.rdo_passes):
            terms = [
                Terms(*self._analyse(rgb, self._terms_of(t, c, b, timer)))
                for rgb, t, c, b in zip(images, tops, candidates, chosen, strict=True)
            ]
            bits = self._prices(tops, chosen, candidates, maps, timer)
            with timer(QUANTIZATION):
                previous = chosen
                chosen = [choose(*args, s.rdo, margin) for args in zip(candidates, terms, bits, strict=True)]
        own = [not r or self.model.resampled_synthesis is None for r in resampled]  # see vqvae_for
        syntheses = [
            t.synthesis if mine and np.mean(now != before) < STAND_IN_SHARE and not s.enhancement else None
            for t, now, before, mine in zip(terms, chosen, previous, own, strict=True)
        ]
        return tops, chosen, syntheses

    def _prices(
        self,
        tops: list[np.ndarray],
        chosen: list[np.ndarray],
        candidates: list[np.ndarray],
        maps: list[MapLayout],
        timer: Timer,
    ) -> list[np.ndarray]:
        """What each candidate would cost in the context of the ``chosen`` codes, give or take a
        constant per position: by the model's pricer where it has one (on one thread, so that the
        choice, and the file, does not depend on the thread count), else by the bottom prior."""
        pricer = self.model.pricer
        if pricer is None:
            return mapcoder.candidate_bits(self.encoding_priors[1], chosen, candidates, maps, timer)
        with timer(PRIOR), one_torch_thread():
            return [pricer.relative_bits(b, t, c) for t, b, c in zip(tops, chosen, candidates, strict=True)]

    def _terms_of(
        self, top: np.ndarray, candidates: np.ndarray, current: np.ndarray, timer: Timer
    ) -> Callable[[torch.Tensor, tiles.Region], Sequence[torch.Tensor]]:
        """``rdo.window_terms`` of a window of an image whose maps are ``top``, ``candidates`` and ``current``."""

        def terms(x: torch.Tensor, outer: tiles.Region) -> Sequence[torch.Tensor]:
            window = (outer.take(top), outer.scaled(2).take(candidates), outer.scaled(2).take(current))
            maps = (torch.from_numpy(m).unsqueeze(0).to(self.device) for m in window)
            return window_terms(self.model.vqvae, x, *maps, timer)

        return terms

    # -- decoding ---------------------------------------------------------------------------

    def read_header(self, data: VqcLike) -> Header:
        """Validate ``data``'s header against this codec's model (size, model identifier) and
        the pixel limit (of the image and of the coded copy)."""
        header = container.read_header(vqc_bytes(data))
        check_size(header.width, header.height, self.max_pixels)
        if header.model_id != self.model_id:
            raise ModelMismatchError(
                f"this file was made with model {header.model_id.hex()}, "
                f"but the loaded model ({self.name}) is {self.model_id.hex()}"
            )
        s = self.top_stride
        width, height = self.coded_size(header)
        if (
            not (0 <= header.pad_x < s and 0 <= header.pad_y < s and width >= 1 and height >= 1)
            or (not header.resampled and (width, height) != (header.width, header.height))
            or header.bottom_shape != (2 * header.top_shape[0], 2 * header.top_shape[1])
        ):
            raise FormatError("damaged .vqc file: code map sizes do not match the image size")
        check_size(width, height, self.max_pixels)
        return header

    def coded_size(self, header: Header) -> tuple[int, int]:
        """(width, height) of the image a file's maps code: its own, or its resampled copy's."""
        s = self.top_stride
        return header.top_shape[1] * s - header.pad_x, header.top_shape[0] * s - header.pad_y

    @torch.no_grad()
    def decode_codes(self, data: VqcLike, timer: Timer = no_timer) -> CodeMaps:
        """Entropy-decode the code maps of a ``.vqc`` file, checking them against its content CRC."""
        return self._decode([data], timer)[0][0]

    @torch.no_grad()
    def _decode(
        self, files: Sequence[VqcLike], timer: Timer
    ) -> list[tuple[CodeMaps, Header, np.ndarray | None, dict[str, bytes], Filter | None]]:
        """Code maps, header, alpha, metadata and restoration filter of each file; every header
        and filter is checked before any decoding."""
        files = [vqc_bytes(data) for data in files]
        headers = [self.read_header(data) for data in files]
        streams = [container.unpack(data)[1] for data in files]
        filters = [restoration.from_bytes(s.filter) if s.filter else None for s in streams]
        tops, bottoms = self._decode_map_pairs(headers, streams, timer)
        decoded = []
        for header, stream, top, bottom, restored in zip(headers, streams, tops, bottoms, filters, strict=True):
            alpha = (
                container.decompress_alpha(stream.alpha, (header.height, header.width)) if header.has_alpha else None
            )
            if container.content_crc(top, bottom, alpha) != header.content_crc:
                raise DecodeMismatchError(
                    "decoded content fails its checksum: the file is damaged or forged, or, if it "
                    "is known to be intact, this decoder's probabilities differ from the encoder's "
                    "(different hardware or software); no image was written"
                )
            meta = container.decode_metadata(stream.metadata)
            coefficients = self._coefficients(stream.enhancement, top, bottom, timer) if stream.enhancement else None
            decoded.append((CodeMaps(top, bottom, coefficients), header, alpha, meta, restored))
        return decoded

    def _coefficients(self, record: bytes, top: np.ndarray, bottom: np.ndarray, timer: Timer) -> Coefficients:
        """The enhancement coefficients of a file's record, checked against its CRC."""
        layer, step, crc, stream = container.read_enhancement(record)
        if layer > len(self.contexts):
            raise FormatError(
                f"this file uses enhancement layer {layer}, but the loaded model ({self.name}) has {len(self.contexts)}"
            )
        context = self.contexts[layer - 1]
        with timer(ENHANCEMENT):
            q, mean = enhancement.decode_layer(context, stream, top, bottom, step)
        if enhancement.crc(q) != crc:
            raise DecodeMismatchError(
                "decoded enhancement fails its checksum: the file is damaged or forged, or, if it is "
                "known to be intact, this decoder's probabilities differ from the encoder's; no image was written"
            )
        return Coefficients(layer, step, enhancement.dequantise(q, mean))

    def _decode_map_pairs(
        self,
        headers: Sequence[Header],
        streams: Sequence[Streams],
        timer: Timer,
        wanted: list[tuple[set[int], set[int]]] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The top and the bottom map of each file (with ``wanted``, only those (top, bottom)
        segments of each file's maps); with ``processes``, shared out over that many processes
        side by side (on the CPU)."""
        pairs = [
            (MapLayout(h.top_shape, h.tile, segmented=h.segmented),
             MapLayout(h.bottom_shape, 2 * h.tile, segmented=h.segmented))
            for h in headers
        ]  # fmt: skip
        return mapcoder.decode_pairs(
            self.decoding_priors, [(s.top, s.bottom) for s in streams], pairs, timer, wanted,
            self.processes if self.device.type == "cpu" else 1, self.cuda_graphs,
        )  # fmt: skip

    def _analyse(
        self, rgb: np.ndarray, analyse: Callable[[torch.Tensor, tiles.Region], Sequence[torch.Tensor]]
    ) -> list[np.ndarray]:
        """Maps of an RGB image computed window by window: ``analyse`` gives, for a batch of one
        window's pixels and the window (in top-map codes), maps at the top or the bottom map's
        resolution (with trailing dimensions or not), and they are pieced together."""
        s = self.top_stride
        padded = pad_to(rgb, s)
        h, w = padded.shape[0] // s, padded.shape[1] // s

        def window(outer: tiles.Region) -> list[np.ndarray]:
            x = to_tensor(outer.scaled(s).take(padded)).to(self.device)
            return [t[0].cpu().numpy() for t in analyse(x, outer)]

        maps: list[np.ndarray] = []
        for inner, outer, parts in self._each_window((h, w), window):
            scales = [p.shape[0] // outer.h for p in parts]
            if not maps:
                maps = [np.zeros((f * h, f * w, *p.shape[2:]), p.dtype) for f, p in zip(scales, parts, strict=True)]
            local = inner.within(outer)
            for full, part, f in zip(maps, parts, scales, strict=True):
                inner.scaled(f).take(full)[...] = local.scaled(f).take(part)
        return maps

    @torch.no_grad()
    def reconstruct(
        self,
        codes: CodeMaps,
        width: int,
        height: int,
        timer: Timer = no_timer,
        coded_size: tuple[int, int] | None = None,
        restored: Filter | None = None,
    ) -> np.ndarray:
        """The (height, width, 3) uint8 RGB image of ``codes``: what the model synthesises from
        them, at ``coded_size`` (default: the image's), resampled to the image's size and, with a
        file's filter ``restored``, filtered."""
        self._check_codes(codes)
        return self._pixels(codes, width, height, timer, coded_size or (width, height), restored)

    def _pixels(
        self,
        codes: CodeMaps,
        width: int,
        height: int,
        timer: Timer,
        coded_size: tuple[int, int],
        restored: Filter | None,
        windows: list[tuple[tiles.Region, tiles.Region]] | None = None,
        rows: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """``reconstruct``'s image, from only ``windows`` of the synthesis and filtered only in the
        bands that hold ``rows``, if given (a region's pixels, exact where those cover it)."""
        padded = self._synthesise(codes, timer, windows, resampled=coded_size != (width, height))
        pixels = self._picture(padded, coded_size, width, height, timer)
        if restored is None:
            return pixels
        with timer(RESTORATION):
            return restoration.apply(pixels, restored, rows)

    def _check_codes(self, codes: CodeMaps) -> None:
        """Refuse maps this model cannot synthesise: other shapes than (h, w) and (2h, 2w), or
        indices outside its codebooks."""
        vq = self.model.vqvae.config
        top, bottom = np.asarray(codes.top), np.asarray(codes.bottom)
        if top.ndim != 2 or bottom.shape != (2 * top.shape[0], 2 * top.shape[1]) or top.size == 0:
            raise UsageError(f"code maps of shapes {top.shape} and {bottom.shape}: the bottom must be twice the top")
        for name, m, size in (("top", top, vq.top_codes), ("bottom", bottom, vq.bottom_codes)):
            if not np.issubdtype(m.dtype, np.integer) or m.min() < 0 or m.max() >= size:
                raise UsageError(f"{name} codes must be whole numbers in 0..{size - 1}")

    @staticmethod
    def _picture(padded: np.ndarray, coded_size: tuple[int, int], width: int, height: int, timer: Timer) -> np.ndarray:
        """The (height, width, 3) image of a synthesis ``padded`` to the top stride: cropped to the
        coded image's size, then resampled to the image's."""
        with timer(SYNTHESIS):
            return resample(np.ascontiguousarray(padded[: coded_size[1], : coded_size[0]]), width, height)

    def _synthesise(
        self,
        codes: CodeMaps,
        timer: Timer,
        windows: list[tuple[tiles.Region, tiles.Region]] | None = None,
        bases: dict[tiles.Region, torch.Tensor] | None = None,
        resampled: bool = False,
    ) -> np.ndarray:
        """The RGB image (uint8, padded to the top stride) the model synthesises from ``codes``,
        window by window (only ``windows``, if given; 0 elsewhere); ``bases``: each window's image
        of the code maps alone, where the encoder has it already (the same floats); ``resampled``:
        the codes of a copy at another size than the image's (``CodecModel.vqvae_for``)."""
        s = self.top_stride
        vqvae = self.model.vqvae_for(resampled)

        def window(outer: tiles.Region) -> np.ndarray:
            if bases is not None:
                image = bases[outer]
            else:
                top = torch.as_tensor(outer.take(codes.top), device=self.device).unsqueeze(0)
                bottom = torch.as_tensor(outer.scaled(2).take(codes.bottom), device=self.device).unsqueeze(0)
                with timer(SYNTHESIS):
                    image = vqvae.decode(top, bottom)
            e = codes.enhancement
            if e is not None:
                y = torch.as_tensor(outer.scaled(2).take(e.values), device=self.device).permute(2, 0, 1).unsqueeze(0)
                with timer(ENHANCEMENT):
                    image = self.model.enhancements[e.layer - 1].synthesise(image, y, e.step)
            return to_rgb(image)

        out = np.zeros((codes.top.shape[0] * s, codes.top.shape[1] * s, 3), dtype=np.uint8)
        for inner, outer, pixels in self._each_window(codes.top.shape, window, windows):
            inner.scaled(s).take(out)[...] = inner.within(outer).scaled(s).take(pixels)
        return out

    def _each_window(
        self,
        shape: tuple[int, int],
        work: Callable[[tiles.Region], T],
        windows: list[tuple[tiles.Region, tiles.Region]] | None = None,
    ) -> list[tuple[tiles.Region, tiles.Region, T]]:
        """(inner, outer, ``work(outer)``) for every window of a top map of ``shape``, each
        window's work on one CPU thread: oneDNN's and BLAS's kernels split their sums by the number
        of threads, so the VQ-VAE's floats (and a code or a pixel level here and there) would depend
        on it; on one thread the encoder writes the same bytes, and the decoder the same pixels,
        however many threads the process uses. The windows are independent, so on the CPU they run
        side by side, one per torch thread: the results are those of one thread."""
        if windows is None:
            windows = tiles.windows(*shape, window_side(shape), WINDOW_MARGIN)
        workers = min(torch.get_num_threads(), len(windows)) if self.device.type == "cpu" else 1
        grad = torch.is_grad_enabled()

        def run(outer: tiles.Region) -> T:
            use_threads(1)  # a new thread starts with the default count and grad mode
            with torch.set_grad_enabled(grad):
                return work(outer)

        with one_torch_thread():  # restores the caller's thread count once every window is done
            if workers == 1:
                results = [run(outer) for _, outer in windows]
            else:
                with ThreadPoolExecutor(workers) as pool:
                    results = list(pool.map(run, [outer for _, outer in windows]))
        return [(inner, outer, r) for (inner, outer), r in zip(windows, results, strict=True)]

    def decompress(
        self, data: VqcLike, timer: Timer = no_timer, region: tuple[int, int, int, int] | None = None
    ) -> Image.Image:
        """The image stored in ``.vqc`` bytes (mode L, LA, RGB or RGBA, as compressed); with
        ``region`` (x, y, width, height), that rectangle of it, exactly as in the whole image,
        decoding only the segments of the maps and the synthesis windows it needs (files whose
        maps are not in segments, or with an enhancement layer, decode their maps whole)."""
        if region is None:
            return self.decompress_many([data], timer)[0]
        return self._decompress_region(vqc_bytes(data), region, timer)

    @torch.no_grad()
    def _decompress_region(self, data: bytes, rect: tuple[int, int, int, int], timer: Timer) -> Image.Image:
        header = self.read_header(data)
        _, streams = container.unpack(data)
        x, y, w, h = partial.check(rect, header.width, header.height)
        restored = restoration.from_bytes(streams.filter) if streams.filter else None
        r = restoration.SHAPES[restored.shape].radius if restored is not None else 0
        coded = self.coded_size(header)
        xs = partial.source_span(x - r, x + w + r, header.width, coded[0])
        ys = partial.source_span(y - r, y + h + r, header.height, coded[1])
        side = window_side(header.top_shape)
        windows = partial.windows(xs, ys, header.top_shape, self.top_stride, side, WINDOW_MARGIN)
        # An enhancement layer's coefficients are coded in one stream, by scale, from the whole maps.
        wanted = (
            None
            if header.has_enhancement
            else [partial.segments([o for _, o in windows], header.top_shape, header.tile)]
        )
        (top,), (bottom,) = self._decode_map_pairs([header], [streams], timer, wanted)
        coefficients = self._coefficients(streams.enhancement, top, bottom, timer) if header.has_enhancement else None
        codes = CodeMaps(top, bottom, coefficients)
        pixels = self._pixels(codes, header.width, header.height, timer, coded, restored, windows, (y, y + h))
        alpha = container.decompress_alpha(streams.alpha, (header.height, header.width)) if header.has_alpha else None
        crop = np.s_[y : y + h, x : x + w]
        meta = container.decode_metadata(streams.metadata)
        return to_pil(Picture(pixels[crop], None if alpha is None else alpha[crop], header.channels, meta))

    def decompress_many(self, files: Sequence[VqcLike], timer: Timer = no_timer) -> list[Image.Image]:
        """``decompress`` several files at once, their maps sharing the priors' batches."""
        return [
            to_pil(
                Picture(
                    self.reconstruct(codes, header.width, header.height, timer, self.coded_size(header), restored),
                    alpha,
                    header.channels,
                    meta,
                )
            )
            for codes, header, alpha, meta, restored in self._decode(files, timer)
        ]


def _settings_for(base: Settings, quality: int | None, overrides: dict[str, Any], layers: int) -> Settings:
    """``base`` at the operating point of ``quality`` (if given) for a model with ``layers``
    enhancement layers, with ``overrides``."""
    if quality is not None:
        base = base.replace(**operating_point(quality, layers)._asdict())
    return base.replace(**overrides)


def _nearest_other(embed: torch.Tensor, code: int) -> int:
    """The code of ``embed`` (K, D) nearest to ``code``, other than itself."""
    distances = (embed - embed[code]).pow(2).sum(1)
    distances[code] = float("inf")
    return int(distances.argmin())
