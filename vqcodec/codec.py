"""The codec API: images to ``.vqc`` bytes and back, with a loaded model on a chosen device."""

from __future__ import annotations

import itertools
import math
import numbers
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from PIL import Image

from .coding import entropy, forked, partial, restoration, tiles
from .coding.qprior import IntegerPrior, MapState
from .coding.rdo import CANDIDATES, PRESET_PASSES, Terms, choose, curvature_margin, window_terms
from .coding.restoration import Filter
from .coding.steps import wavefront_steps
from .defaults import DEFAULT_PRESET, DEFAULT_RDO, DEFAULT_TILE, MAX_SCALE, MIN_SCALE, WINDOW, WINDOW_MARGIN
from .errors import DecodeMismatchError, FormatError, InputError, ModelError, ModelMismatchError, UsageError
from .format import container
from .format.container import DEFAULT_MAX_PIXELS, MAX_TILE, Header, Streams
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
from .threads import one_torch_thread
from .timing import ENTROPY_CODING, PRIOR, QUANTIZATION, RESTORATION, SYNTHESIS, Timer, no_timer
from .zoo import catalog
from .zoo.weights import load_model, model_id

T = TypeVar("T")

#: Positions coded together: bounds the priors' memory, whatever the image size.
MAX_BATCH_POSITIONS = 1 << 15
#: RDO's last pass leaves a synthesis at the codes before its choice, which the restoration filter
#: is fitted to in place of one of the chosen codes (one synthesis less) while the choice changed
#: fewer than this share of them: 1% to 28% of photos' codes change at the default. Flat colours
#: may see most of theirs go to one cheaper code, whose colour that fit would not correct (the mean
#: of (128, 64, 192) off by 3.5 levels, 0.1 when fitted to the chosen codes).
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
class CodeMaps:
    """The top (H/2s, W/2s) and bottom (H/s, W/s) code index maps of one image."""

    top: np.ndarray
    bottom: np.ndarray


@dataclass(frozen=True)
class MapStats:
    """How one code map was coded: the real bits written and the ideal sum of -log2 p."""

    codes: int
    real_bits: int
    ideal_bits: float

    @property
    def bits_per_code(self) -> float:
        return self.real_bits / self.codes

    @property
    def overhead(self) -> float:
        """Real bits over ideal bits, minus one (0.01 is 1% overhead)."""
        return self.real_bits / self.ideal_bits - 1.0 if self.ideal_bits else 0.0


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
    rdo: float = DEFAULT_RDO,
    rdo_passes: int | None = None,
    scale: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strip_metadata: bool = False,
    restore: bool = True,
    processes: int = 1,
) -> Codec:
    """A ``Codec`` with a shipped preset (default ``DEFAULT_PRESET``) or the model file at ``path``
    (``rdo``, ``rdo_passes``, ``scale``, ``max_pixels``, ``strip_metadata``, ``restore``,
    ``processes``: see ``Codec``; by default a preset brings its RDO passes, a file one)."""
    if preset is not None and path is not None:
        raise ModelError("give a preset or a model path, not both")
    name = preset or (str(path) if path else DEFAULT_PRESET)
    model = load_model(path if path is not None else catalog.preset_path(name))
    passes = rdo_passes if rdo_passes is not None else PRESET_PASSES.get(name, 1)
    return Codec(
        model,
        device=device,
        name=name,
        rdo=rdo,
        rdo_passes=passes,
        scale=scale,
        max_pixels=max_pixels,
        strip_metadata=strip_metadata,
        restore=restore,
        processes=processes,
    )


def load_for(data: VqcLike, *, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, processes: int = 1) -> Codec:
    """A ``Codec`` with the shipped model that made the ``.vqc`` file ``data``, found by the
    identifier in its header: a preset, or a model an earlier release shipped and a later one
    replaced (kept so that its files still decode)."""
    name, path = catalog.find(container.read_header(vqc_bytes(data)).model_id)
    return Codec(load_model(path), device=device, name=name, max_pixels=max_pixels, processes=processes)


class Codec:
    """Compresses images to ``.vqc`` bytes and back with one ``CodecModel``."""

    def __init__(
        self,
        model: CodecModel,
        device: str | torch.device = "auto",
        name: str = "custom",
        tile: int = DEFAULT_TILE,
        rdo: float = DEFAULT_RDO,
        rdo_passes: int = 1,
        cuda_graphs: bool = True,
        scale: float = 1.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        strip_metadata: bool = False,
        restore: bool = True,
        processes: int = 1,
    ):
        """``tile``, ``rdo`` (0: always the nearest code; more: smaller files, lower quality),
        ``rdo_passes`` (more: smaller files, slower encoding) and ``scale`` set how files are
        written; any file decodes whatever they were. ``scale`` (``MIN_SCALE``..``MAX_SCALE``)
        codes a copy of the image resampled by that factor, which the decoder resamples back:
        above 1 for higher rates and quality than the model gives at its own resolution (about
        ``scale`` squared times the rate and the time), below 1 for lower ones. ``cuda_graphs``:
        on a GPU, the decoder replays each batch's wavefront steps from a CUDA graph (see
        ``vqcodec.coding.steps``); the same codes either way.
        ``max_pixels``: larger images are refused, to code and to decode, before any work (a tiny
        file can claim a huge image: the limit bounds what one file costs). An image's ICC profile
        and EXIF data travel in the file unless ``strip_metadata``. ``restore``: the encoder fits
        a restoration filter to each image (``vqcodec.coding.restoration``) and writes it where it is
        worth its bytes; files are a little larger and better, encoding takes the fit longer (and,
        without ``rdo``, a synthesis of the image). ``processes``: the decoder decodes the segments
        of a map (``container``) in that many processes side by side, this one and forked
        children (on the CPU, on Linux; the same codes either way)."""
        if not 1 <= tile <= MAX_TILE:
            raise UsageError(f"tile must be in 1..{MAX_TILE}, got {tile}")
        if not 0 <= rdo < math.inf:
            raise UsageError(f"rdo must be a finite number >= 0, got {rdo}")
        if rdo_passes < 1:
            raise UsageError(f"rdo_passes must be at least 1, got {rdo_passes}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise UsageError(f"max_pixels must be a whole number of at least 1, got {max_pixels!r}")
        if isinstance(processes, bool) or not isinstance(processes, numbers.Integral) or processes < 1:
            raise UsageError(f"processes must be a whole number of at least 1, got {processes!r}")
        if not MIN_SCALE <= scale <= MAX_SCALE:
            raise UsageError(f"scale must be in {MIN_SCALE:g}..{MAX_SCALE:g}, got {scale}")
        self.tile, self.rdo, self.rdo_passes, self.cuda_graphs = tile, rdo, rdo_passes, cuda_graphs
        self.scale = scale
        self.max_pixels, self.strip_metadata, self.restore = max_pixels, strip_metadata, restore
        self.processes = int(processes)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.name = name
        self.model_id = model_id(self.model)
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
        #: coder cannot encode the last code (see ``_encode_maps``).
        self._substitutes = tuple(
            _nearest_other(q.embed, q.embed.shape[0] - 1) for q in (vqvae.quantize_t, vqvae.quantize_b)
        )

    # -- encoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, image: ImageLike, timer: Timer = no_timer) -> Encoded:
        """Compress ``image`` and report its code maps and the bits each map took (``timer``: see
        ``vqcodec.timing``)."""
        return self.encode_many([image], timer)[0]

    @torch.no_grad()
    def encode_many(self, images: Sequence[ImageLike], timer: Timer = no_timer) -> list[Encoded]:
        """``encode`` several images at once: their maps share the priors' batches (more positions
        per step, which a GPU needs to be busy). Each file is the one ``encode`` would write."""
        pics = [read_image(image, self.max_pixels) for image in images]
        sizes = [scaled_size(*pic.size, self.scale, self.max_pixels) for pic in pics]
        coded = self._code_maps([resample(p.rgb, *size) for p, size in zip(pics, sizes, strict=True)], timer)
        tops, bottoms, syntheses = coded
        top_maps = [_Map(t.shape, self.tile, segmented=True) for t in tops]
        bottom_maps = [_Map(b.shape, 2 * self.tile, t, segmented=True) for t, b in zip(tops, bottoms, strict=True)]
        top_prior, bottom_prior = self.encoding_priors
        top_substitute, bottom_substitute = self._substitutes
        top_coded = self._encode_maps(top_prior, tops, top_maps, top_substitute, timer)
        bottom_coded = self._encode_maps(bottom_prior, bottoms, bottom_maps, bottom_substitute, timer)
        filters = [
            self._fit_restoration(pic, size, CodeMaps(top, bottom), synthesis, len(t[0]) + len(b[0]), timer)
            for pic, size, top, bottom, synthesis, t, b in zip(
                pics, sizes, tops, bottoms, syntheses, top_coded, bottom_coded, strict=True
            )
        ]
        return [
            self._pack(*args) for args in zip(pics, sizes, tops, bottoms, top_coded, bottom_coded, filters, strict=True)
        ]

    def _fit_restoration(
        self,
        pic: Picture,
        coded_size: tuple[int, int],
        codes: CodeMaps,
        synthesis: np.ndarray | None,
        map_bytes: int,
        timer: Timer,
    ) -> Filter | None:
        """The restoration filter worth writing for ``pic`` coded as ``codes`` (None: none), fitted
        to ``synthesis`` where RDO left one (see ``_code_maps``), else to what ``codes`` give."""
        if not self.restore:
            return None
        padded = self._synthesise(codes, timer) if synthesis is None else synthesis
        decoded = self._picture(padded, coded_size, *pic.size, timer)
        with timer(RESTORATION):
            return restoration.fit(pic.rgb, decoded, map_bytes)

    def compress(self, image: ImageLike) -> bytes:
        """``.vqc`` bytes of a PIL image, an HxW(xC) uint8 array, an image file's path or its bytes
        (bytes or a binary file object)."""
        return self.encode(image).data

    def compress_many(self, images: Sequence[ImageLike]) -> list[bytes]:
        """``compress`` several images at once (see ``encode_many``)."""
        return [encoded.data for encoded in self.encode_many(images)]

    def _pack(
        self,
        pic: Picture,
        coded_size: tuple[int, int],
        top: np.ndarray,
        bottom: np.ndarray,
        top_coded: tuple[bytes, MapStats],
        bottom_coded: tuple[bytes, MapStats],
        restored: Filter | None,
    ) -> Encoded:
        width, height = pic.size
        streams = Streams(
            top_coded[0],
            bottom_coded[0],
            container.compress_alpha(pic.alpha) if pic.alpha is not None else b"",
            b"" if self.strip_metadata else container.encode_metadata(pic.metadata),
            restoration.to_bytes(restored) if restored is not None else b"",
        )
        header = Header(
            channels=pic.channels, tile=self.tile, model_id=self.model_id, width=width, height=height,
            pad_x=padding(coded_size[0], self.top_stride), pad_y=padding(coded_size[1], self.top_stride),
            top_shape=top.shape, bottom_shape=bottom.shape,
            top_len=0, bottom_len=0, alpha_len=0, payload_crc=0,
            content_crc=container.content_crc(top, bottom, pic.alpha),
            flags=(container.FLAG_RESAMPLED if coded_size != pic.size else 0)
            | (container.FLAG_SEGMENTS if _has_segments(top.shape, bottom.shape, self.tile) else 0),
        )  # fmt: skip
        data = container.pack(header, streams)
        return Encoded(data, CodeMaps(top, bottom), top_coded[1], bottom_coded[1], width, height, coded_size, restored)

    @staticmethod
    def _encode_maps(
        prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[_Map], substitute: int, timer: Timer
    ) -> list[tuple[bytes, MapStats]]:
        """Each map's stream, its codes coded in decoding order. A code the coder cannot encode
        in its context (``entropy.uncodable``) becomes ``substitute`` in ``codes`` (in place), and
        the maps are coded again, since the codes after it have a new context."""
        while True:
            encoders: dict[int, entropy.Encoder] = {}
            units_of: list[list[int]] = [[] for _ in maps]  # each map's units, in stream order
            replaced = False
            for unit, i, positions, probs in _probability_rows(prior, codes, maps, timer):
                with timer(ENTROPY_CODING):
                    symbols = codes[i].reshape(-1)[positions]
                    stuck = entropy.uncodable(symbols, probs)
                    if stuck.any():  # only the last code can be stuck, and never its substitute
                        codes[i].flat[positions[stuck]] = substitute
                        replaced = True
                    if not replaced:
                        if unit not in encoders:
                            encoders[unit] = entropy.Encoder()
                            units_of[i].append(unit)
                        encoders[unit].encode(symbols, probs)
            if not replaced:
                break
        coded = []
        for units in units_of:
            data = container.join_segments([encoders[u].data() for u in units])
            ideal = sum(encoders[u].ideal_bits for u in units)
            coded.append((data, MapStats(sum(encoders[u].symbols for u in units), 8 * len(data), ideal)))
        return coded

    def _code_maps(
        self, images: list[np.ndarray], timer: Timer
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
        """Each RGB image's top and bottom code maps: the nearest codes, or with ``rdo`` the bottom
        codes RDO prefers after ``rdo_passes`` choices, each pricing the candidates by the prior in
        the context of the previous choice (at first, the nearest codes). With RDO, also what its
        last pass synthesised (at the codes before its choice; padded to the top stride) where it
        stands in for the chosen codes (``STAND_IN_SHARE``), else None: the restoration filter is
        fitted to it, which saves a synthesis for 0.005 dB less gain (validation photos at the
        default: 28.481 dB instead of 28.486)."""
        vqvae = self.model.vqvae
        if not self.rdo:
            maps = [self._analyse(rgb, lambda x, _: vqvae.encode(x, timer)) for rgb in images]
            return [t for t, _ in maps], [b for _, b in maps], [None] * len(maps)
        found = [self._analyse(rgb, lambda x, _: vqvae.encode_candidates(x, CANDIDATES, timer)) for rgb in images]
        tops, candidates = [t for t, _ in found], [c for _, c in found]
        maps = [_Map(c.shape[:2], 2 * self.tile, t) for t, c in zip(tops, candidates, strict=True)]
        chosen = [c[..., 0] for c in candidates]
        margin = curvature_margin(self.rdo_passes)
        for _ in range(self.rdo_passes):
            terms = [
                Terms(*self._analyse(rgb, self._terms_of(t, c, b, timer)))
                for rgb, t, c, b in zip(images, tops, candidates, chosen, strict=True)
            ]
            bits = _candidate_bits(self.encoding_priors[1], chosen, candidates, maps, timer)
            with timer(QUANTIZATION):
                previous = chosen
                chosen = [choose(*args, self.rdo, margin) for args in zip(candidates, terms, bits, strict=True)]
        syntheses = [
            t.synthesis if np.mean(now != before) < STAND_IN_SHARE else None
            for t, now, before in zip(terms, chosen, previous, strict=True)
        ]
        return tops, chosen, syntheses

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
            decoded.append((CodeMaps(top, bottom), header, alpha, meta, restored))
        return decoded

    def _decode_map_pairs(
        self,
        headers: Sequence[Header],
        streams: Sequence[Streams],
        timer: Timer,
        wanted: list[tuple[set[int], set[int]]] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The top and the bottom map of each file (with ``wanted``, only those (top, bottom)
        segments of each file's maps)."""
        top_prior, bottom_prior = self.decoding_priors
        top_maps = [_Map(h.top_shape, h.tile, segmented=h.segmented) for h in headers]
        top_wanted = None if wanted is None else [w[0] for w in wanted]
        tops = self._decode_maps(top_prior, [s.top for s in streams], top_maps, timer, top_wanted)
        bottom_maps = [
            _Map(h.bottom_shape, 2 * h.tile, top, segmented=h.segmented) for h, top in zip(headers, tops, strict=True)
        ]
        bottom_wanted = None if wanted is None else [w[1] for w in wanted]
        return tops, self._decode_maps(bottom_prior, [s.bottom for s in streams], bottom_maps, timer, bottom_wanted)

    def _decode_maps(
        self,
        prior: IntegerPrior,
        streams: Sequence[bytes],
        maps: list[_Map],
        timer: Timer,
        wanted: list[set[int]] | None = None,
    ) -> list[np.ndarray]:
        """Decode maps batch by batch of regions, wavefront by wavefront within a batch; with
        ``processes``, the segments of segmented maps side by side in forked processes (on the
        CPU, on Linux). ``wanted``: only these segments of each segmented map (the rest of its
        codes stay 0)."""
        codes = [np.zeros(m.shape, dtype=np.int64) for m in maps]
        segments = [
            container.split_segments(stream, container.segment_count(m.shape, m.tile)) if m.segmented else [stream]
            for stream, m in zip(streams, maps, strict=True)
        ]
        whole = {i: entropy.Decoder(stream) for i, (stream, m) in enumerate(zip(streams, maps, strict=True))
                 if not m.segmented}  # fmt: skip
        workers = self.processes if self.device.type == "cpu" and forked.AVAILABLE else 1
        shares = _shares(maps, segments, workers, wanted)

        def decode_share(share: Iterator[_Unit]) -> list[tuple[int, tiles.Region, np.ndarray]]:
            decoders: dict[int, entropy.Decoder] = {}
            blocks = []
            for batch, owner, state in _batches(prior, maps, timer, share):
                for u in {unit.index: unit for unit, _, _ in batch}.values():
                    decoders[u.index] = whole[u.map] if u.map in whole else entropy.Decoder(segments[u.map][u.segment])
                blocks += self._decode_batch(prior, batch, owner, state, decoders, timer)
            return blocks

        with prior.stepping():
            children = [forked.Forked(decode_share, share) for share in shares[1:]]
            try:
                blocks = decode_share(shares[0])
                for child in children:
                    blocks += child.result()
            finally:
                for child in children:
                    child.close()
        for i, region, block in blocks:
            region.take(codes[i])[...] = block
        return codes

    def _decode_batch(
        self,
        prior: IntegerPrior,
        batch: list[tuple[_Unit, int, tiles.Region]],
        owner: np.ndarray,
        state: MapState,
        decoders: dict[int, entropy.Decoder],
        timer: Timer,
    ) -> list[tuple[int, tiles.Region, np.ndarray]]:
        """Decode one batch of regions, each unit's codes from its decoder: (map index, region,
        its codes) of each region."""
        owner = owner[state.order]
        decoded = np.zeros(state.n, dtype=np.int64)  # by row: in decoding order
        with timer(PRIOR):
            steps = wavefront_steps(prior, state, state.widest, self.cuda_graphs)
        for rows in _chunks(state.fronts):
            with timer(PRIOR):
                probs = steps.probabilities(rows)
            front = decoded[rows]
            with timer(ENTROPY_CODING):
                for u, mine in _by_owner(owner[rows]):
                    front[mine] = decoders[u].decode(probs[mine])
            steps.set_codes(rows, front)
        flat = np.empty_like(decoded)
        flat[state.order] = decoded
        return [
            (i, region, flat[base : base + region.positions].reshape(region.shape))
            for (_, i, region), base in zip(batch, state.bases, strict=True)
        ]

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
        pixels = self._picture(self._synthesise(codes, timer, windows), coded_size, width, height, timer)
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
        self, codes: CodeMaps, timer: Timer, windows: list[tuple[tiles.Region, tiles.Region]] | None = None
    ) -> np.ndarray:
        """The RGB image (uint8, padded to the top stride) the model synthesises from ``codes``,
        window by window (only ``windows``, if given; 0 elsewhere)."""
        s = self.top_stride

        def window(outer: tiles.Region) -> np.ndarray:
            top = torch.as_tensor(outer.take(codes.top), device=self.device).unsqueeze(0)
            bottom = torch.as_tensor(outer.scaled(2).take(codes.bottom), device=self.device).unsqueeze(0)
            with timer(SYNTHESIS):
                return to_rgb(self.model.vqvae.decode(top, bottom))

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
            windows = tiles.windows(*shape, WINDOW, WINDOW_MARGIN)
        workers = min(torch.get_num_threads(), len(windows)) if self.device.type == "cpu" else 1
        grad = torch.is_grad_enabled()

        def run(outer: tiles.Region) -> T:
            torch.set_num_threads(1)  # a new thread starts with the default count and grad mode
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
        maps are not in segments decode their maps whole)."""
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
        windows = partial.windows(xs, ys, header.top_shape, self.top_stride, WINDOW, WINDOW_MARGIN)
        wanted = partial.segments([o for _, o in windows], header.top_shape, header.tile)
        (top,), (bottom,) = self._decode_map_pairs([header], [streams], timer, [wanted])
        codes = CodeMaps(top, bottom)
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


@dataclass(frozen=True)
class _Map:
    """A code map to code: its size, the side of its regions and, for a bottom map, its top map;
    whether its stream is in segments (``container``)."""

    shape: tuple[int, int]
    tile: int
    cond: np.ndarray | None = None
    segmented: bool = False


@dataclass(frozen=True)
class _Unit:
    """Regions of a map that are coded one after another in one range-coded stream: a segment
    (the ``segment``-th of map ``map``), or a batch of an unsegmented map's single stream.
    ``index`` numbers the units of all maps in stream order."""

    index: int
    map: int
    segment: int
    regions: list[tiles.Region]


def _has_segments(top_shape: tuple[int, int], bottom_shape: tuple[int, int], tile: int) -> bool:
    """Whether a file with these maps needs ``container.FLAG_SEGMENTS``: a map of several
    segments, or one whose single segment an unsegmented stream would cut into several batches."""
    return any(
        container.segment_count(shape, side) > 1 or shape[0] * shape[1] > MAX_BATCH_POSITIONS
        for shape, side in ((top_shape, tile), (bottom_shape, 2 * tile))
    )


def _units(maps: list[_Map], segments: dict[int, Collection[int]] | None = None) -> Iterator[_Unit]:
    """The units of ``maps`` in stream order, lazily (a forged file is refused in its first
    batch, before the rest is cut); with ``segments``, only the segments named of each map named
    (an unsegmented map named gives all its units)."""
    index = itertools.count()
    for i, m in enumerate(maps):
        if segments is not None and i not in segments:
            continue
        regions = tiles.regions(*m.shape, m.tile)
        if not m.segmented:
            for batch in tiles.batches(regions, MAX_BATCH_POSITIONS):
                yield _Unit(next(index), i, 0, batch)
            continue
        for k, group in enumerate(tiles.batches(regions, container.regions_per_segment(m.tile), lambda r: 1)):
            if segments is None or k in segments[i]:
                yield _Unit(next(index), i, k, group)


def _shares(
    maps: list[_Map], segments: list[list[bytes]], workers: int, wanted: list[set[int]] | None = None
) -> list[Iterator[_Unit]]:
    """The units of ``maps`` (of their ``wanted`` segments) cut into at most ``workers`` shares
    that decode side by side: runs of each segmented map's segments (an unsegmented map's one
    stream goes whole to the first)."""
    picks = [
        sorted(range(len(s)) if wanted is None else wanted[i]) if m.segmented else []
        for i, (m, s) in enumerate(zip(maps, segments, strict=True))
    ]
    workers = max(1, min(workers, max(map(len, picks), default=0)))
    shares = []
    for w in range(workers):
        chosen = {i: set(p[len(p) * w // workers : len(p) * (w + 1) // workers]) for i, p in enumerate(picks) if p}
        if w == 0:
            chosen |= {i: set() for i, m in enumerate(maps) if not m.segmented}
        shares.append(_units(maps, chosen))
    return shares


def _batches(
    prior: IntegerPrior, maps: list[_Map], timer: Timer, units: Iterator[_Unit] | None = None
) -> Iterator[tuple[list[tuple[_Unit, int, tiles.Region]], np.ndarray, MapState]]:
    """The batches of (unit, map index, region) that ``units`` (by default every unit of
    ``maps``) are coded in, with the unit index of each position and fresh prior caches (given
    the regions' top codes, for the bottom prior): the same on both sides.

    Consecutive units are pooled up to ``MAX_BATCH_POSITIONS`` positions. Within a batch each
    unit's positions keep the order they have when it is coded alone (``MapState``), so a file
    does not depend on what its units were batched with.
    """
    size = lambda unit: sum(r.positions for r in unit.regions)  # noqa: E731
    for pooled in tiles.batches(_units(maps) if units is None else units, MAX_BATCH_POSITIONS, size):
        batch = [(unit, unit.map, region) for unit in pooled for region in unit.regions]
        owner = np.repeat([unit.index for unit, _, _ in batch], [r.positions for _, _, r in batch])
        with timer(PRIOR):
            conds = [r.half().take(maps[i].cond) for _, i, r in batch] if maps[0].cond is not None else None
            state = prior.start([r.shape for _, _, r in batch], conds)
        yield batch, owner, state


#: Rows of a wavefront decoded at once, at most: a stream that runs out is noticed within this
#: many codes, even where a whole batch is one wavefront (tiles of 1 code).
FRONT_CHUNK = 4096


def _chunks(fronts: list[slice]) -> Iterator[slice]:
    """The wavefronts' rows in pieces of at most ``FRONT_CHUNK`` (a wavefront's positions do not
    depend on one another, so its pieces may be decoded one after another)."""
    for front in fronts:
        for start in range(front.start, front.stop, FRONT_CHUNK):
            yield slice(start, min(start + FRONT_CHUNK, front.stop))


def _by_owner(owner: np.ndarray) -> Iterator[tuple[int, np.ndarray | slice]]:
    """Each index in ``owner`` (a map's or a unit's) with the entries that are its own, in order
    (all of them as a slice when there is one owner, which saves copying its probability rows)."""
    ids = np.unique(owner)
    if len(ids) == 1:
        yield int(ids[0]), slice(None)
        return
    for i in ids:
        yield int(i), np.flatnonzero(owner == i)


def _prepared_rows(
    prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[_Map], timer: Timer
) -> Iterator[tuple[MapState, slice, np.ndarray, np.ndarray, np.ndarray]]:
    """Every position of ``codes`` in decoding order, a chunk of rows at a time, with the prior
    run up to its head there: (state, the chunk's rows, the unit index, the map index and the
    flattened position of each). One pass of the prior per batch of regions, as the encoder has
    every code already."""
    grids = [np.arange(c.size).reshape(c.shape) for c in codes]
    for batch, owner, state in _batches(prior, maps, timer):
        with timer(PRIOR):
            flat = np.concatenate([region.take(codes[i]).reshape(-1) for _, i, region in batch])
            where = np.concatenate([region.take(grids[i]).reshape(-1) for _, i, region in batch])
            map_of = np.repeat([i for _, i, _ in batch], [r.positions for _, _, r in batch])
            prior.set_codes(state, slice(0, state.n), flat[state.order])
            prior.prepare(state)  # every position at once
            owner, map_of, where = owner[state.order], map_of[state.order], where[state.order]
        for start in range(0, state.n, prior.row_chunk):
            rows = slice(start, min(start + prior.row_chunk, state.n))
            yield state, rows, owner[rows], map_of[rows], where[rows]


def _probability_rows(
    prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[_Map], timer: Timer
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The probability row of every position of ``codes`` in decoding order, a chunk at a time:
    (unit index, map index, the positions in that map, flattened, their rows)."""
    for state, rows, owner, map_of, where in _prepared_rows(prior, codes, maps, timer):
        with timer(PRIOR):
            probs = prior.tables(state, rows)
        for u, mine in _by_owner(owner):
            yield u, int(map_of[mine][0]), where[mine], probs[mine]


def _nearest_other(embed: torch.Tensor, code: int) -> int:
    """The code of ``embed`` (K, D) nearest to ``code``, other than itself."""
    distances = (embed - embed[code]).pow(2).sum(1)
    distances[code] = float("inf")
    return int(distances.argmin())


def _candidate_bits(
    prior: IntegerPrior,
    codes: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    maps: list[_Map],
    timer: Timer,
) -> list[np.ndarray]:
    """What each of the (H, W, k) ``candidates`` would cost, in bits, in the context of ``codes``,
    less a constant per position (``IntegerPrior.relative_bits``): all a position's choice needs."""
    bits = [np.empty(c.shape, dtype=np.float32) for c in candidates]
    if not candidates:
        return bits
    k = candidates[0].shape[-1]
    for state, rows, _, owner, where in _prepared_rows(prior, codes, maps, timer):
        picked = np.empty((len(where), k), dtype=candidates[0].dtype)
        for i, mine in _by_owner(owner):
            picked[mine] = candidates[i].reshape(-1, k)[where[mine]]
        with timer(PRIOR):
            prices = prior.relative_bits(state, rows, picked)
        for i, mine in _by_owner(owner):
            bits[i].reshape(-1, k)[where[mine]] = prices[mine]
    return bits
