"""The Triton source of the fused attention-statistics kernel (see :func:`.fused.fused_attention_stats`).

Triton is optional: it is imported on first use only (:func:`fused_kernel`), so the package works
without it; :func:`triton_mode` says whether and how it runs in this process.
"""

from __future__ import annotations

_FUSED_KERNELS: dict[str, object] = {}
tl = None  # triton.language, bound on first use (the kernel below reads it as a global)


def triton_mode() -> str | None:
    """``"compiled"``, ``"interpret"`` (Triton imported with ``TRITON_INTERPRET=1``) or None (no Triton).

    Triton fixes the mode of its own library functions when it is first imported, so one process runs
    either compiled kernels (CUDA tensors) or interpreted ones (CPU tensors), never both.
    """
    try:
        import triton  # noqa: F401
        import triton.language as tlang
    except Exception:  # noqa: BLE001 - any failure to import means "no Triton here"
        return None
    return "interpret" if type(tlang.sum).__name__ == "InterpretedFunction" else "compiled"


def fused_kernel() -> object:
    """The jitted kernel (decorated once, in the mode Triton was imported in)."""
    if "kernel" not in _FUSED_KERNELS:
        import triton
        import triton.language

        globals()["tl"] = triton.language
        for helper in ("_scores", "_allowed"):  # the kernel calls them by these names: bind the jitted ones
            globals()[helper] = triton.jit(globals()[helper])
        _FUSED_KERNELS["kernel"] = triton.jit(_fused_attention_kernel)
    return _FUSED_KERNELS["kernel"]


def _scores(
    q, K, BIAS, b, h, hk, offs_m, offs_n, offs_d, row_ok, col_ok, d_ok,
    sk_b, sk_h, sk_s, sbias_b, sbias_h, sbias_t, sbias_s, scale, softcap, qk_scale,
    FP32_DOT: tl.constexpr, NATURAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Scores in base 2 of the program's query rows against the key tile at ``offs_n`` (both passes).

    ``q k^T * scale``, then the softcap and the additive bias when given (natural units, converted to
    base 2 after them), else scaled by ``scale * log2(e)`` at once (``qk_scale``).
    """
    k = tl.load(K + b * sk_b + hk * sk_h + offs_n[:, None] * sk_s + offs_d[None, :],
                mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    if FP32_DOT:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    if NATURAL:
        s = s * scale
        if HAS_SOFTCAP:  # softcap * tanh(s / softcap), tanh from exp (no tanh in older Triton)
            x = s / softcap
            ax = tl.where(x < 0, -x, x)
            z = tl.exp(-2.0 * ax)
            th = (1.0 - z) / (1.0 + z)
            s = tl.where(x < 0, -th, th) * softcap
        if HAS_BIAS:
            s += tl.load(BIAS + b * sbias_b + h * sbias_h + offs_m[:, None] * sbias_t + offs_n[None, :] * sbias_s,
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        s = s * 1.4426950408889634
    else:
        s = s * qk_scale
    return s


def _allowed(allowed, dd, s, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``allowed`` narrowed to the keys the causal and window rules (``dd = i - j``) and the bias leave a query."""
    if CAUSAL:
        allowed = allowed & (dd >= 0)
    if HAS_WINDOW:
        if CAUSAL:
            allowed = allowed & (dd < window)
        else:
            allowed = allowed & (dd < window) & (dd > -window)
    if HAS_BIAS:
        allowed = allowed & (s > float("-inf"))
    return allowed


def _fused_attention_kernel(
    Q, K, V, O, BITS, BIAS, EDGES, STATS, COL, FLAGS,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_t,
    sbias_b, sbias_h, sbias_t, sbias_s,
    H, G, T, S, D, OFFSET, n_rows, max_edge, n_tiles,
    scale, softcap, window, thr, log2_thr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NE: tl.constexpr, BLOCK_E: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLASSES: tl.constexpr, FP32_DOT: tl.constexpr,
    WANT_OUT: tl.constexpr, PASS2: tl.constexpr, WANT_COL: tl.constexpr,
    NATURAL: tl.constexpr, SKIP2: tl.constexpr,
):
    """One program = one (batch, head) x BLOCK_M query rows. See :func:`fused_attention_stats`.

    Scores are kept in base-2 units (``s * log2(e)``, exp2/log2); the statistics are converted back to
    natural units when stored. Key tiles in which every key is allowed and valid (no causal/window/padding
    masking, no bias) take a cheap path without any mask work; the diagonal/first-token/class/distance
    terms are computed only in tiles that can contain them (scalar branches on the tile's indices).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    row_ok = offs_m < T
    d_ok = offs_d < D
    qpos = offs_m + OFFSET
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q_first = pid_m * BLOCK_M + OFFSET
    q_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, T - 1) + OFFSET
    lo = q_first * 0
    hi = q_first * 0 + S
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, q_last + 1), 0)
        if HAS_WINDOW:
            lo = tl.maximum(q_first - window + 1, 0)
    else:
        if HAS_WINDOW:
            lo = tl.maximum(q_first - window + 1, 0)
            hi = tl.maximum(tl.minimum(hi, q_last + window), 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    ninf = float("-inf")
    qk_scale = scale * 1.4426950408889634  # log2(e): scores in base 2
    flag_row = (pid_bh * tl.num_programs(0) + pid_m) * n_tiles

    m_i = tl.full([BLOCK_M], ninf, tl.float32)  # running max of the scores (base 2)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_j e_ij, e = exp2(s - m) (every allowed key)
    mass = tl.full([BLOCK_M], 0.0, tl.float32)  # the same over valid keys
    es = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_valid e_ij (s_ij - m_i) (base 2)
    sq = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_valid e_ij^2
    first = tl.full([BLOCK_M], 0.0, tl.float32)
    diag = tl.full([BLOCK_M], 0.0, tl.float32)
    prev = tl.full([BLOCK_M], 0.0, tl.float32)
    nxt = tl.full([BLOCK_M], 0.0, tl.float32)
    spec = tl.full([BLOCK_M], 0.0, tl.float32)
    punc = tl.full([BLOCK_M], 0.0, tl.float32)
    dist = tl.full([BLOCK_M], 0.0, tl.float32)
    vmax = tl.full([BLOCK_M], ninf, tl.float32)  # max score over valid keys (base 2)
    within = tl.full([BLOCK_M, BLOCK_E], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        col_ok = offs_n < S
        s = _scores(q, K, BIAS, b, h, hk, offs_m, offs_n, offs_d, row_ok, col_ok, d_ok,
                    sk_b, sk_h, sk_s, sbias_b, sbias_h, sbias_t, sbias_s, scale, softcap, qk_scale,
                    FP32_DOT, NATURAL, HAS_SOFTCAP, HAS_BIAS)
        bits = tl.load(BITS + b * S + offs_n, mask=col_ok, other=0).to(tl.int32)
        # a full tile: every key in range, allowed and valid for every row (no mask work at all)
        full = tl.min(bits & 3, 0) == 3
        if CAUSAL:
            full = full & (start_n + BLOCK_N - 1 <= q_first)
            if HAS_WINDOW:
                full = full & (q_last - start_n < window)
        else:
            if HAS_WINDOW:
                full = full & (q_last - start_n < window) & (start_n + BLOCK_N - 1 - q_first < window)
        if HAS_BIAS:
            full = full & (start_n < 0)
        if full:
            tmax = tl.max(s, 1)
            m_new = tl.maximum(m_i, tmax)
            m_safe = m_new
            e = tl.math.exp2(s - m_new[:, None])
            ev = e
            l_add = tl.sum(e, 1)
            mass_add = l_add
            es_add = tl.sum(e * (s - m_new[:, None]), 1)
            vm = tmax
        else:
            keep = (bits & 1) != 0
            validk = (bits & 2) != 0
            dd = qpos[:, None] - offs_n[None, :]
            allowed = _allowed(keep[None, :] & row_ok[:, None], dd, s, window, CAUSAL, HAS_WINDOW, HAS_BIAS)
            s = tl.where(allowed, s, ninf)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == ninf, 0.0, m_new)
            e = tl.math.exp2(s - m_safe[:, None])
            use = allowed & validk[None, :]
            ev = tl.where(use, e, 0.0)
            l_add = tl.sum(e, 1)
            mass_add = tl.sum(ev, 1)
            es_add = tl.sum(ev * (tl.where(use, s, m_safe[:, None]) - m_safe[:, None]), 1)
            vm = tl.max(tl.where(use, s, ninf), 1)
        m_old = tl.where(m_i == ninf, 0.0, m_i)
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + l_add
        es = alpha * (es - (m_safe - m_old) * mass) + es_add
        mass = mass * alpha + mass_add
        sq = sq * alpha * alpha + tl.sum(ev * ev, 1)
        rel = (qpos - start_n).to(tl.float32)[:, None] - offs_n0.to(tl.float32)[None, :]  # i - j
        if CAUSAL:  # keys that count are never after the query: |i - j| = i - j
            dist = dist * alpha + tl.sum(ev * rel, 1)
        else:
            dist = dist * alpha + tl.sum(ev * tl.abs(rel), 1)
        vmax = tl.maximum(vmax, vm)
        if SKIP2:  # remember whether this tile can hold a weight above the threshold
            # lse only grows with more keys, so s - lse_now bounds s - lse_final from above
            lse_now = m_safe + tl.math.log2(tl.where(l_i > 0, l_i, 1.0))
            gap = tl.where(row_ok & (l_i > 0), vm - lse_now, ninf)
            hot = tl.max(gap, 0) > log2_thr - 0.001
            tl.store(FLAGS + flag_row + start_n // BLOCK_N, hot.to(tl.int8))
        tile_min = tl.maximum(tl.maximum(start_n - q_last, q_first - (start_n + BLOCK_N - 1)), 0)
        tile_max = tl.maximum(q_last - start_n, start_n + BLOCK_N - 1 - q_first)
        first = first * alpha
        diag = diag * alpha
        prev = prev * alpha
        nxt = nxt * alpha
        if start_n == 0:
            first += tl.sum(tl.where(offs_n0[None, :] == 0, ev, 0.0), 1)
        if tile_min <= 1:  # the diagonal and its two neighbours lie in tiles near the diagonal only
            diag += tl.sum(tl.where(rel == 0.0, ev, 0.0), 1)
            prev += tl.sum(tl.where(rel == 1.0, ev, 0.0), 1)
            nxt += tl.sum(tl.where(rel == -1.0, ev, 0.0), 1)
        if HAS_CLASSES:
            spec = spec * alpha
            punc = punc * alpha
            if tl.max(bits & 4, 0) != 0:
                spec += tl.sum(tl.where(((bits & 4) != 0)[None, :], ev, 0.0), 1)
            if tl.max(bits & 8, 0) != 0:
                punc += tl.sum(tl.where(((bits & 8) != 0)[None, :], ev, 0.0), 1)
        within = within * alpha[:, None]
        if tile_min <= max_edge:  # only tiles near the diagonal hold keys within an edge
            for ei in range(NE):
                edge = tl.load(EDGES + ei)
                if tile_min <= edge:
                    if tile_max <= edge:  # the whole tile lies within this edge
                        part = mass_add
                    else:
                        part = tl.sum(tl.where(tl.abs(rel) <= edge, ev, 0.0), 1)
                    within += tl.where(offs_e[None, :] == ei, part[:, None], 0.0)
        if WANT_OUT:
            v = tl.load(V + b * sv_b + hk * sv_h + offs_n[:, None] * sv_s + offs_d[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if FP32_DOT:
                acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v)
        m_i = m_new

    has = l_i > 0
    l_safe = tl.where(has, l_i, 1.0)
    inv_l = tl.where(has, 1.0 / l_safe, 0.0)
    log2_l = tl.where(has, tl.math.log2(l_safe), 0.0)
    m_fin = tl.where(m_i == ninf, 0.0, m_i)
    lse2 = tl.where(has, m_fin + log2_l, ninf)  # base 2
    lse2_safe = tl.where(has, lse2, 0.0)
    if WANT_OUT:
        o = acc * inv_l[:, None]
        tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    row = STATS + pid_bh * T + offs_m
    tl.store(row + 0 * n_rows, tl.where(has, (log2_l * mass - es) * 0.6931471805599453 * inv_l, 0.0), mask=row_ok)
    tl.store(row + 1 * n_rows, diag * inv_l, mask=row_ok)
    tl.store(row + 2 * n_rows, prev * inv_l, mask=row_ok)
    tl.store(row + 3 * n_rows, nxt * inv_l, mask=row_ok)
    tl.store(row + 4 * n_rows, first * inv_l, mask=row_ok)
    tl.store(row + 5 * n_rows, spec * inv_l, mask=row_ok)
    tl.store(row + 6 * n_rows, punc * inv_l, mask=row_ok)
    tl.store(row + 7 * n_rows, tl.math.exp2(vmax - m_fin) * inv_l, mask=row_ok)
    tl.store(row + 8 * n_rows, dist * inv_l, mask=row_ok)
    tl.store(row + 9 * n_rows, mass * inv_l, mask=row_ok)
    tl.store(row + 10 * n_rows, sq * inv_l * inv_l, mask=row_ok)
    tl.store(row + 12 * n_rows, lse2 * 0.6931471805599453, mask=row_ok)
    tl.store(row[:, None] + (13 + offs_e[None, :]) * n_rows, within * inv_l[:, None],
             mask=row_ok[:, None] & (offs_e[None, :] < NE))

    if PASS2:  # quantities that need the final normaliser: the sparsity count and the column sums
        above = tl.full([BLOCK_M], 0.0, tl.float32)
        if WANT_COL:
            qbits = tl.load(BITS + b * S + qpos, mask=row_ok & (qpos >= 0) & (qpos < S), other=0).to(tl.int32)
            qvalid = ((qbits & 2) != 0) & has
        for start_n in range(lo, hi, BLOCK_N):
            go = start_n >= 0
            if SKIP2:  # tiles that pass 1 proved hold no weight above the threshold are skipped
                go = tl.load(FLAGS + flag_row + start_n // BLOCK_N) != 0
            if go:
                offs_n = start_n + offs_n0
                col_ok = offs_n < S
                s = _scores(q, K, BIAS, b, h, hk, offs_m, offs_n, offs_d, row_ok, col_ok, d_ok,
                            sk_b, sk_h, sk_s, sbias_b, sbias_h, sbias_t, sbias_s, scale, softcap, qk_scale,
                            FP32_DOT, NATURAL, HAS_SOFTCAP, HAS_BIAS)
                bits = tl.load(BITS + b * S + offs_n, mask=col_ok, other=0).to(tl.int32)
                dd = qpos[:, None] - offs_n[None, :]
                use = ((bits & 3) == 3)[None, :] & row_ok[:, None] & has[:, None]
                use = _allowed(use, dd, s, window, CAUSAL, HAS_WINDOW, HAS_BIAS)
                p = tl.where(use, tl.math.exp2(tl.where(use, s, 0.0) - lse2_safe[:, None]), 0.0)
                above += tl.sum(tl.where(p > thr, 1.0, 0.0), 1)
                if WANT_COL:
                    colv = tl.sum(tl.where(qvalid[:, None], p, 0.0), 0)
                    tl.atomic_add(COL + pid_bh * S + offs_n, colv, mask=col_ok)
        tl.store(row + 11 * n_rows, above, mask=row_ok)

