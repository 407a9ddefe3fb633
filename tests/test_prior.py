"""The priors: the integer prior gives the same probabilities in one pass and wavefront by
wavefront, never looks at later wavefronts, and stays close to the float prior it comes from."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from tests.conftest import make_model
from vqcodec.coding.qprior import IntegerPrior, arithmetic, backend, ops
from vqcodec.coding.steps import PaddedSteps
from vqcodec.nn.config import PriorConfig
from vqcodec.nn.prior import PixelSNAIL, WindowAttention, attention_offsets, calibrate, causal_offsets


def random_maps(prior, h: int, w: int, seed: int):
    rng = np.random.default_rng(seed)
    top = rng.integers(0, prior.codes, (h // 2, w // 2)) if prior.cond_ops else None
    return rng.integers(0, prior.codes, (h, w)), top


def one_pass(prior: IntegerPrior, codes, top) -> np.ndarray:
    """Probability rows of every position (in raster order), all at once."""
    h, w = codes.shape
    state = prior.start([(h, w)], None if top is None else [top])
    every = state.rows_of(np.arange(h * w))
    prior.set_codes(state, every, codes.reshape(-1))
    return prior.probabilities(state, every)


def by_wavefront(prior: IntegerPrior, codes, top) -> np.ndarray:
    """Probability rows of every position (in raster order), as a decoder gets them."""
    h, w = codes.shape
    state = prior.start([(h, w)], None if top is None else [top])
    out = np.zeros((h * w, prior.codes))
    for rows in state.fronts:
        positions = state.order[rows]
        out[positions] = prior.probabilities(state, rows)
        prior.set_codes(state, rows, codes.reshape(-1)[positions])
    return out


@pytest.mark.parametrize("h,w", [(2, 2), (4, 6), (6, 10), (10, 4)])
@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
def test_wavefront_decoding_reproduces_one_pass_exactly(which, h, w):
    prior = IntegerPrior(getattr(make_model(seed=h * w), which))
    codes, top = random_maps(prior, h, w, seed=h + w)
    np.testing.assert_array_equal(by_wavefront(prior, codes, top), one_pass(prior, codes, top))


@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
@pytest.mark.parametrize(
    "chunk,int8_reduction,int8",
    [(arithmetic.CHUNK, arithmetic.INT8_REDUCTION, True), (16, 1 << 20, True), (16, 16, True), (16, 16, False)],
)
def test_numpy_and_torch_backends_agree(which, chunk, int8_reduction, int8, monkeypatch):
    """The CPU path (numpy) and the GPU path (torch, here on the CPU) give identical integers:
    with 8-bit products, also where float32 products would split into several chunks summed in
    float64, where 8-bit products could overflow and float32 ones are kept, and with none (float32
    caches and products, as on a GPU)."""
    monkeypatch.setattr(arithmetic, "CHUNK", chunk)
    monkeypatch.setattr(arithmetic, "INT8_REDUCTION", int8_reduction)
    if int8 and not backend._exact_int8_products(*backend._probe_matrices()):
        pytest.skip("this torch has no 8-bit products on the CPU")
    monkeypatch.setattr(backend, "cpu_products", lambda: "int8" if int8 else "float32")
    model = make_model(seed=11)
    codes, top = random_maps(IntegerPrior(getattr(model, which)), 6, 8, seed=3)
    on_numpy = one_pass(IntegerPrior(getattr(model, which)), codes, top)
    on_torch = by_wavefront(IntegerPrior(getattr(model, which), use_torch=True), codes, top)
    np.testing.assert_array_equal(on_numpy, on_torch)


def test_int8_products_only_where_torch_has_them_on_the_cpu(monkeypatch):
    """A torch without CPU int8 products (older releases: CUDA only) gets float32 ones."""
    assert backend.cpu_products.__wrapped__() in ("int8", "float32")

    def cuda_only(a, b):
        raise RuntimeError("_int_mm: not implemented for 'CPU'")

    monkeypatch.setattr(torch, "_int_mm", cuda_only)
    assert backend.cpu_products.__wrapped__() == "float32"
    monkeypatch.delattr(torch, "_int_mm")
    assert backend.cpu_products.__wrapped__() == "float32"


def test_int8_products_only_where_they_are_exact(monkeypatch):
    """A kernel that adds pairs of 8-bit products in 16 bits and saturates, as oneDNN's does on
    CPUs without VNNI (activations shifted to unsigned, the shift taken off after), gets float32
    products, however fast it is."""

    def saturating(a, b):
        shifted = (a.int() + 128).reshape(a.shape[0], -1, 2, 1) * b.int().reshape(1, -1, 2, b.shape[1])
        return (shifted.sum(2).clamp(-(1 << 15), (1 << 15) - 1).sum(1) - 128 * b.int().sum(0)).int()

    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not backend._exact_int8_products(*backend._probe_matrices())
    assert backend.cpu_products.__wrapped__() == "float32"


def test_int8_products_only_where_they_are_faster(monkeypatch):
    """Where torch's 8-bit product is slow (a plain loop on CPUs without 8-bit dot products), the
    prior takes float32 ones: here one made a hundred times slower than the probe's float32 product."""
    if not backend._exact_int8_products(*backend._probe_matrices()):
        pytest.skip("this torch has no exact 8-bit products on the CPU")
    int_mm = torch._int_mm

    def slow(a, b):
        time.sleep(0.005)
        return int_mm(a, b)

    monkeypatch.setattr(torch, "_int_mm", slow)
    assert backend.cpu_products.__wrapped__() == "float32"


@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
def test_encoders_whole_map_pass_matches_wavefronts(which, monkeypatch):
    """The encoder's pass (every position, in slices of ROW_CHUNK rows, on torch, each layer's
    cache handed on once no later layer reads it) gives the decoder's integers (wavefront by
    wavefront, on numpy), also where slices split a map."""
    monkeypatch.setattr(arithmetic, "ROW_CHUNK", 7)
    model = make_model(seed=4)
    prior = IntegerPrior(getattr(model, which), use_torch=True)
    codes, top = random_maps(prior, 6, 10, seed=8)
    state = prior.start([codes.shape], None if top is None else [top])
    prior.set_codes(state, slice(0, state.n), codes.reshape(-1)[state.order])
    prior.prepare(state)
    assert len(state.caches) < len(prior.ops)  # the pass gave up caches along the way
    every = state.rows_of(np.arange(codes.size))
    np.testing.assert_array_equal(
        prior.tables(state, every), by_wavefront(IntegerPrior(getattr(model, which)), codes, top)
    )


@pytest.mark.parametrize("use_torch", [False, True])
def test_relative_bits_rank_codes_as_the_tables_do(use_torch):
    """The encoder's prices of a few codes per position are -log2 of their table entries less a
    constant per position: its choices are those the tables would make."""
    prior = IntegerPrior(make_model(seed=9).bottom_prior, use_torch=use_torch)
    codes, top = random_maps(prior, 6, 8, seed=4)
    state = prior.start([codes.shape], [top])
    prior.set_codes(state, slice(0, state.n), codes.reshape(-1)[state.order])
    prior.prepare(state)
    rows = slice(0, state.n)
    picked = np.random.default_rng(5).integers(0, prior.codes, (state.n, 5))
    tables = prior.tables(state, rows).astype(np.float64)
    assert tables.min() > 1  # no entry at the floor, where the tables stop following the logits
    exact = -np.log2(np.take_along_axis(tables, picked, 1))
    shift = exact - prior.relative_bits(state, rows, picked)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(5, 1), atol=1e-3)


def test_attention_tables_end_in_zero():
    """Taps outside a region land on an exp table's last entry, which must weigh nothing."""
    model = make_model(seed=6)
    for p in (model.top_prior, model.bottom_prior):
        tables = [op.exp for op in IntegerPrior(p).ops if isinstance(op, ops.Attention)]
        assert tables and all(t[-1] == 0 for t in tables)


@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
def test_probabilities_ignore_later_wavefronts(which):
    prior = IntegerPrior(getattr(make_model(seed=5), which))
    h, w = 6, 8
    codes, top = random_maps(prior, h, w, seed=1)
    reference = one_pass(prior, codes, top)
    step = (np.arange(w)[None, :] + np.arange(h)[:, None] * prior.slope).reshape(-1)
    rng = np.random.default_rng(2)
    for t in range(0, int(step.max()) + 1, 3):
        scrambled = codes.reshape(-1).copy()
        later = step >= t
        scrambled[later] = rng.integers(0, prior.codes, int(later.sum()))
        probs = one_pass(prior, scrambled.reshape(h, w), top)
        np.testing.assert_array_equal(probs[step == t], reference[step == t])


def test_integer_prior_follows_float_prior():
    """Rounding to 8 bits costs little: cross-entropy within a few percent of the float model's."""
    torch.manual_seed(0)
    config = PriorConfig(codes=32, channels=32, kernel=5, blocks=2, res_blocks=1, attn_heads=2,
                         attn_channels=16, dropout=0.0)  # fmt: skip
    prior = PixelSNAIL(config).eval()
    # Structured maps (smooth gradients of codes) give the prior something to predict.
    r, c = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    maps = torch.stack([((r + c + s) // 3) % 32 for s in range(4)])
    calibrate(prior, [(maps, None)])
    with torch.no_grad():
        float_probs = torch.softmax(prior(maps[:1]).double(), 1)[0].flatten(1).t().numpy()
    int_probs = one_pass(IntegerPrior(prior), maps[0].numpy(), None)
    int_probs = int_probs / int_probs.sum(1, keepdims=True)
    symbols = maps[0].reshape(-1).numpy()
    rows = np.arange(len(symbols))
    float_bits = -np.log2(float_probs[rows, symbols]).sum()
    int_bits = -np.log2(int_probs[rows, symbols]).sum()
    assert abs(int_bits - float_bits) < 0.03 * float_bits


def test_caches_hold_positions_in_decoding_order():
    """Rows are every position once, wavefront after wavefront, each wavefront one slice."""
    prior = IntegerPrior(make_model(seed=4).top_prior)
    shapes = [(4, 6), (2, 2), (6, 4)]
    state = prior.start(shapes)
    assert sorted(state.order.tolist()) == list(range(state.n))
    np.testing.assert_array_equal(state.rows_of(state.order), np.arange(state.n))
    assert [f.start for f in state.fronts[1:]] == [f.stop for f in state.fronts[:-1]]
    assert state.fronts[0].start == 0 and state.fronts[-1].stop == state.n
    local = np.concatenate([np.arange(h * w) for h, w in shapes])
    widths = np.concatenate([np.full(h * w, w) for h, w in shapes])
    front = (local % widths + (local // widths) * prior.slope)[state.order]
    assert [set(front[f].tolist()) for f in state.fronts] == [{t} for t in sorted(set(front.tolist()))]


@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
def test_regions_in_a_batch_are_independent(which):
    """A region's probabilities are the same alone or batched with others of other sizes."""
    prior = IntegerPrior(getattr(make_model(seed=4), which))
    maps = [random_maps(prior, h, w, seed=h) for h, w in ((4, 6), (2, 2), (6, 4))]
    shapes = [codes.shape for codes, _ in maps]
    state = prior.start(shapes, None if maps[0][1] is None else [top for _, top in maps])
    flat = np.concatenate([codes.reshape(-1) for codes, _ in maps])
    every = state.rows_of(np.arange(len(flat)))
    prior.set_codes(state, every, flat)
    batched = prior.probabilities(state, every)
    alone = np.concatenate([one_pass(prior, codes, top) for codes, top in maps])
    np.testing.assert_array_equal(batched, alone)


@pytest.mark.parametrize("which", ["top_prior", "bottom_prior"])
@pytest.mark.parametrize("extra", [0, 5])
def test_padded_steps_reproduce_one_pass(which, extra, monkeypatch):
    """The steps a CUDA graph replays (run eagerly here): every step on a fixed number of rows,
    padding on the scratch row, each step's codes written by the next, over several regions."""
    monkeypatch.setattr(arithmetic, "ROW_CHUNK", 3)  # steps split into chunks, as large ones are
    model = make_model(seed=9)
    prior = IntegerPrior(getattr(model, which), use_torch=True)
    maps = [random_maps(prior, h, w, seed=h) for h, w in ((4, 6), (2, 2), (6, 10))]
    shapes = [codes.shape for codes, _ in maps]
    tops = None if maps[0][1] is None else [top for _, top in maps]
    flat = np.concatenate([codes.reshape(-1) for codes, _ in maps])
    state = prior.start(shapes, tops)
    steps = PaddedSteps(prior, state, state.widest + extra, capture=False)
    out = np.zeros((len(flat), prior.codes))
    for rows in state.fronts:
        positions = state.order[rows]
        out[positions] = steps.probabilities(rows)
        steps.set_codes(rows, flat[positions])
    alone = np.concatenate([one_pass(IntegerPrior(getattr(model, which)), codes, top) for codes, top in maps])
    np.testing.assert_array_equal(out, alone)
    with pytest.raises(ValueError, match="wavefront"):
        steps.probabilities(np.arange(state.widest + extra + 1))


def test_causal_offsets():
    assert causal_offsets(3, strict=True, right=1) == ((-1, -1), (-1, 0), (-1, 1), (0, -1))
    assert causal_offsets(3, strict=False, right=0) == ((-1, -1), (-1, 0), (0, -1), (0, 0))


def test_conditional_prior_needs_top_map():
    prior = make_model().bottom_prior
    with pytest.raises(ValueError, match="top code map"):
        prior.condition(None)


def test_training_pass_gives_gradients():
    prior = make_model().bottom_prior.train()
    codes = torch.randint(0, 16, (2, 4, 6))
    top = torch.randint(0, 16, (2, 2, 3))
    logits = prior(codes, top)
    assert logits.shape == (2, 16, 4, 6)
    torch.nn.functional.cross_entropy(logits, codes).backward()
    assert prior.embed.weight.grad is not None


def test_window_attention_matches_a_position_by_position_loop():
    torch.manual_seed(0)
    offsets = attention_offsets(2, 2, 1)
    attn = WindowAttention(5, 6, 4, 2, offsets, 0.0)
    query, key = torch.randn(2, 5, 3, 4), torch.randn(2, 6, 3, 4)
    with torch.no_grad():
        out = attn(query, key)
        q, k, v = attn.query(query), attn.key(key), attn.value(key)
        d = 4 // 2
        for y, x in itertools.product(range(3), range(4)):
            taps = [(y + dy, x + dx) for dy, dx in offsets if 0 <= y + dy < 3 and 0 <= x + dx < 4]
            for head in range(2):
                ch = slice(head * d, (head + 1) * d)
                expected = torch.zeros(2, d)
                if taps:
                    scores = torch.stack([(q[:, ch, y, x] * k[:, ch, ty, tx]).sum(1) for ty, tx in taps], 1)
                    weights = torch.softmax(scores / d**0.5, 1)
                    expected = sum(weights[:, i, None] * v[:, ch, ty, tx] for i, (ty, tx) in enumerate(taps))
                torch.testing.assert_close(out[:, ch, y, x], expected)
