"""The one-pass tiled statistics kernel equals a materialised float64 computation, row by row.

Every row quantity of :func:`hf_attn_inspect.core.kernels.attention_row_stats` is recomputed here from the
full softmax weights (float64, built independently of the package's kernels and masks), on random inputs
covering causal and bidirectional attention, key padding (in the mask, or only zeroed through
``key_valid``), grouped-query heads, windows, softcap, additive bias, general boolean masks, a longer key
than query (cached prefix), tiles that do not divide ``T``, ``T`` smaller than one tile, thresholds that
select several keys per row, and logits large enough to move the online softmax's reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_attn_inspect.core.kernels import attention_row_stats

NAMES = ("entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
         "max_weight", "mean_distance", "local_window", "mass", "sq_sum", "above", "lse")


def materialised(q, k, *, scale=None, causal=False, window=None, keep=None, bias=None, softcap=None,
                 key_valid=None, special=None, punctuation=None, thr=0.3, local_window=4, edges=()):
    """Every row quantity from the full float64 weights ``[B, H, T, S]``."""
    b, h, t, d = q.shape
    s = k.shape[2]
    kk = k.double().repeat_interleave(h // k.shape[1], dim=1)
    scale = 1 / math.sqrt(d) if scale is None else scale
    sc = q.double() @ kk.transpose(-1, -2) * scale
    if softcap is not None:
        sc = torch.tanh(sc / softcap) * softcap
    if bias is not None:
        sc = sc + bias.double()
    qpos = torch.arange(t)[:, None] + (s - t)
    kpos = torch.arange(s)[None, :]
    allow = torch.ones(b, h, t, s, dtype=torch.bool)
    if causal:
        allow &= kpos <= qpos
    if window is not None:
        allow &= (qpos - kpos < window) if causal else ((qpos - kpos).abs() < window)
    if keep is not None:
        allow &= keep
    sc = sc.masked_fill(~allow, float("-inf"))
    lse = torch.logsumexp(sc, -1)
    w = torch.where(allow.any(-1, keepdim=True), torch.softmax(sc, -1), torch.zeros(()))
    w = torch.nan_to_num(w)
    kv = torch.ones(b, s, dtype=torch.bool) if key_valid is None else key_valid
    w = w * kv[:, None, None, :]
    dist = (qpos - kpos).abs().double()

    def at(col):  # w[..., i, col_i], 0 where the column is outside the keys
        c = col.expand(t)
        inside = (c >= 0) & (c < s)
        return torch.where(inside, w.gather(-1, c.clamp(0, s - 1).expand(b, h, t)[..., None])[..., 0], torch.zeros(()))

    diag = qpos[:, 0]
    out = {
        "entropy": -(w * torch.where(w > 0, w.log(), torch.zeros(()))).sum(-1),
        "diagonal": at(diag),
        "previous_token": at(diag - 1),
        "next_token": at(diag + 1),
        "first_token": w[..., 0],
        "special_tokens": (w * special[:, None, None, :]).sum(-1) if special is not None else torch.zeros(b, h, t),
        "punctuation": (w * punctuation[:, None, None, :]).sum(-1) if punctuation is not None else torch.zeros(b, h, t),
        "max_weight": w.amax(-1),
        "mean_distance": (w * dist).sum(-1),
        "local_window": (w * (dist <= local_window)).sum(-1),
        "mass": w.sum(-1),
        "sq_sum": (w * w).sum(-1),
        "above": (w > thr).sum(-1).double() if thr >= 0 else kv.sum(-1).double()[:, None, None].expand(b, h, t),
        "lse": lse,
    }
    if edges:
        out["within"] = torch.stack([(w * (dist <= e)).sum(-1) for e in edges], -1)
    return out


def check(q, k, *, q_tile, k_tile, atol=1e-5, **kw):
    """Compare every row quantity of the kernel with :func:`materialised` on the same arguments."""
    mask = kw.pop("mask", None)
    names = {"keep": "mask"}
    ref_kw = dict(kw)
    ker_kw = {names.get(n, n): v for n, v in kw.items()
              if n not in ("thr", "edges", "bias")}
    if mask is not None:  # a tensor mask goes to the kernel as is, to the reference as keep/bias
        ker_kw["mask"] = mask
        if mask.dtype == torch.bool:
            ref_kw["keep"] = mask
        else:
            ref_kw["keep"] = mask > torch.finfo(mask.dtype).min / 2
            ref_kw["bias"] = torch.where(ref_kw["keep"], mask, torch.zeros(()))
    ker_kw["sparsity_threshold"] = kw.get("thr", 0.3)
    if kw.get("edges"):
        ker_kw["distance_edges"] = kw["edges"]
    ker_kw.pop("keep", None)
    got = attention_row_stats(q, k, q_tile=q_tile, k_tile=k_tile, **ker_kw)
    want = materialised(q, k, **ref_kw)
    assert set(got) == set(NAMES) | ({"within"} if kw.get("edges") else set())
    for name, value in want.items():
        g, value = got[name].double(), value.double()
        assert g.shape == value.shape, name
        fin = torch.isfinite(value)
        assert torch.equal(fin, torch.isfinite(g)), name
        torch.testing.assert_close(g[fin], value[fin], atol=atol, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    return got


def case(seed, b, h, hkv, t, s=None, d=8, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g) * spread
    k = torch.randn(b, hkv, s or t, d, generator=g) * spread
    return q, k


def padding(b, s, lengths):
    valid = torch.zeros(b, s, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    return valid


@pytest.mark.parametrize("q_tile,k_tile,hkv", [(256, 1024, 4), (7, 5, 2), (16, 32, 1), (5, 48, 4), (64, 16, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_gqa_tiles(q_tile, k_tile, hkv, causal):
    q, k = case(hkv * 10 + causal, 3, 4, hkv, 37)
    valid = padding(3, 37, [37, 20, 1])
    g = torch.Generator().manual_seed(5)
    special = torch.rand(3, 37, generator=g) > 0.8
    punct = (torch.rand(3, 37, generator=g) > 0.7) & valid
    check(q, k, q_tile=q_tile, k_tile=k_tile, causal=causal, mask=valid[:, None, None, :], key_valid=valid,
          special=special, punctuation=punct, edges=(0, 1, 4, 16, 64))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 3, 20])
def test_windows_and_cached_prefix(causal, window):
    q, k = case(window, 2, 4, 2, 23, s=41)  # 18 cached keys before the 23 queries
    check(q, k, q_tile=6, k_tile=16, causal=causal, window=window, edges=(2, 9, 30))


def test_t_smaller_than_one_tile_and_single_token():
    for t in (1, 2, 17):
        q, k = case(t, 2, 2, 1, t)
        check(q, k, q_tile=256, k_tile=1024, causal=True)
        check(q, k, q_tile=256, k_tile=1024)


def test_key_valid_not_hidden_by_the_mask():
    """Padding keys the mask lets through: in the softmax's normaliser, zeroed in every statistic."""
    q, k = case(3, 2, 4, 2, 33)
    valid = padding(2, 33, [33, 19])
    check(q, k, q_tile=8, k_tile=16, causal=True, key_valid=valid, edges=(1, 12))
    check(q, k, q_tile=32, k_tile=32, key_valid=valid, thr=0.05)


@pytest.mark.parametrize("thr", [0.3, 0.02, 0.0, -1.0, 1.0])
def test_sparsity_thresholds(thr):
    q, k = case(7, 2, 2, 2, 48, spread=3.0)  # peaked rows: several keys above the threshold
    valid = padding(2, 48, [48, 30])
    check(q, k, q_tile=16, k_tile=32, causal=True, mask=valid[:, None, None, :], key_valid=valid, thr=thr)
    check(q, k, q_tile=9, k_tile=13, mask=valid[:, None, None, :], key_valid=valid, thr=thr)


def test_large_logits_move_the_reference():
    """Logits of several hundred (base 2: far beyond float32's exp range) in increasing and random order."""
    q, k = case(11, 1, 2, 2, 64, spread=8.0)
    ramp = torch.linspace(0, 400, 64)
    k = k + ramp[None, None, :, None] * q.mean(2, keepdim=True) / q.mean(2, keepdim=True).norm() ** 2
    check(q, k, q_tile=16, k_tile=16, causal=True, atol=1e-4)
    check(q, k, q_tile=64, k_tile=16, atol=1e-4)


def test_softcap_bias_and_general_masks():
    q, k = case(13, 2, 4, 2, 29)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(2, 4, 29, 29, generator=g)
    bias[0, :, :, 3] = torch.finfo(torch.float32).min  # a masked key, per head
    bias[1, 2, 5, :] = torch.finfo(torch.float32).min  # a fully masked row
    check(q, k, q_tile=7, k_tile=16, mask=bias, edges=(1, 10))
    check(q, k, q_tile=7, k_tile=16, mask=bias, softcap=3.0, causal=True)
    keep = torch.rand(2, 1, 29, 29, generator=g) > 0.3  # an arbitrary boolean mask shared by the heads
    check(q, k, q_tile=32, k_tile=9, mask=keep, edges=(0, 2, 40))
    valid = padding(2, 29, [29, 11])
    check(q, k, q_tile=5, k_tile=16, mask=valid[:, None, None, :], key_valid=valid, softcap=2.0, causal=True)


def test_head_groups_in_threads_equal_one_thread(monkeypatch):
    """The CPU split of the key heads over threads gives the single-thread numbers (masks with a head dim too)."""
    from hf_attn_inspect.core.kernels import cpu_stats

    q, k = case(17, 2, 8, 4, 40)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(2, 8, 40, 40, generator=g)
    valid = padding(2, 40, [40, 26])
    calls = [dict(causal=True, mask=valid[:, None, None, :], key_valid=valid, distance_edges=(1, 16)),
             dict(mask=bias, q_tile=16, k_tile=16), dict(causal=True, window=5, special=valid)]
    serial = [attention_row_stats(q, k, **kw) for kw in calls]
    monkeypatch.setattr(cpu_stats, "_PARALLEL_MIN", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the split needs more than one thread (the suite may run single-threaded)
    try:
        _threads_equal_serial(cpu_stats, q, k, calls, serial, monkeypatch)
    finally:
        torch.set_num_threads(before)


def _threads_equal_serial(cpu_stats, q, k, calls, serial, monkeypatch):
    if torch.backends.openmp.is_available() and torch.get_num_threads() > 1:
        assert cpu_stats._stats_workers(q, k, None) == min(4, torch.get_num_threads())
    threads = torch.get_num_threads()
    real = cpu_stats._stats_workers
    monkeypatch.setattr(cpu_stats, "_stats_workers", lambda *a: 3 if real(*a) > 0 else 0)  # 3 groups of 4 heads
    for kw, want in zip(calls, serial):
        got = attention_row_stats(q, k, **kw)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6, equal_nan=True)
    assert torch.get_num_threads() == threads  # the caller's thread count is back


# --------------------------------------------------------------------------- the tiled output + statistics kernel
@pytest.mark.parametrize("layout", ["right", "left", "causal", "full"])
@pytest.mark.parametrize("tile_elements,workers", [(1 << 22, 1), (300, 1), (2000, 2)])
@pytest.mark.parametrize("thr", [0.3, 0.05])
def test_tiles_output_rows_and_columns_equal_materialised(layout, tile_elements, workers, thr):
    """:func:`attention_output_row_stats` (dataset engines, CPU): the output, every row quantity and the
    column sums equal the float64 materialisation on the real query rows, for right/left key padding (key
    ranges), a causal additive mask (tiles plus the mask), grouped-query heads, query tiles that split a
    sequence and several worker threads."""
    from hf_attn_inspect.core.kernels import attention_output_row_stats, plan_tiles
    from hf_attn_inspect.core.kernels.reference import repeat_kv

    b, h, hkv, t, d = 3, 4, 2, 29, 8
    q, k = case(7, b, h, hkv, t, d=d)
    v = torch.randn(b, hkv, t, d, generator=torch.Generator().manual_seed(3))
    lengths = [29, 17, 3]
    valid = padding(b, t, lengths)
    if layout == "left":
        valid = valid.flip(-1)
    if layout == "full":
        valid = torch.ones(b, t, dtype=torch.bool)
    keep = valid[:, None, None, :].expand(b, 1, t, t)
    causal = layout == "causal"
    if causal:
        keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
    mask = torch.zeros(b, 1, t, t).masked_fill(~keep, torch.finfo(torch.float32).min)
    g = torch.Generator().manual_seed(11)
    special = (torch.rand(b, t, generator=g) > 0.8) & valid
    punct = (torch.rand(b, t, generator=g) > 0.7) & valid
    plan = plan_tiles(mask, valid, h)
    assert plan is not None and (plan.additive is not None) == causal
    out, rows, cols = attention_output_row_stats(q, k, v, plan, valid=valid, special=special, punctuation=punct,
                                                 sparsity_threshold=thr, tile_elements=tile_elements, workers=workers)
    want = materialised(q, k, keep=keep.expand(b, h, t, t), key_valid=valid, special=special, punctuation=punct,
                        thr=thr)
    real = valid[:, None, :].expand(b, h, t)
    for name in NAMES[:-1]:
        torch.testing.assert_close(rows[name].double()[real], want[name][real], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    sc = q.double() @ repeat_kv(k, h).double().transpose(-1, -2) / math.sqrt(d)
    w = torch.softmax(sc.masked_fill(~keep, float("-inf")), -1)
    ref_out = w @ repeat_kv(v, h).double()
    torch.testing.assert_close(out.double()[real], ref_out[real], atol=1e-5, rtol=1e-5)
    ref_cols = (w * valid[:, None, :, None]).sum(-2)
    torch.testing.assert_close(cols.double(), ref_cols, atol=1e-5, rtol=1e-5)


def test_tile_plan_refuses_masks_that_show_padding():
    """The tiles' statistics equal the materialised ones only when the mask hides padding keys from real
    queries; otherwise :func:`plan_tiles` says None (the engines keep the weights path)."""
    from hf_attn_inspect.core.kernels import plan_tiles

    valid = padding(2, 6, [6, 4])
    assert plan_tiles(None, valid, 2) is None
    assert plan_tiles(torch.ones(2, 1, 1, 6, dtype=torch.bool), valid, 2) is None
    plan = plan_tiles(valid[:, None, None, :], valid, 2)
    assert plan.ranges == [(0, 6), (0, 4)] and plan.additive is None
    gap = valid.clone()
    gap[1, 1] = False  # a hole in the keys: no key range, the mask is added to the tiles instead
    plan = plan_tiles(gap[:, None, None, :], gap, 2)
    assert plan is not None and plan.additive is not None
