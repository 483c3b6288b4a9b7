"""Triton kernels of the plinio ops (GPU; also run on CPU under TRITON_INTERPRET=1).

combine:     one program per block of elements; the branches arrive as a tuple of
             pointers (one compiled variant per branch count).
PIT masks:   masks_kernel (one program) builds the channel / receptive-field / dilation
             masks; apply_kernel multiplies them into a weight viewed as [Cout, R, K];
             reduce_kernel (one program per channel) writes the masked gradient and the
             per-tap sums Σ_r grad·weight; param_grads_kernel (one program) turns those
             into α/β/γ gradients. Formulas: docs/behaviour.md §5.1 (as in
             csrc/pit_mask_math.h).
"""
import triton
import triton.language as tl


@triton.jit
def combine_forward_kernel(xs, theta_ptr, out_ptr, n, NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    acc = tl.zeros([BLOCK], dtype=theta_ptr.dtype.element_ty)
    for i in tl.static_range(NB):
        th = tl.load(theta_ptr + i)
        acc += th * tl.load(xs[i] + offs, mask=inb, other=0.0).to(acc.dtype)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def combine_backward_kernel(grad_ptr, xs, grads, theta_ptr, partial_ptr, n,
                            NB: tl.constexpr, NEED_MASK: tl.constexpr, WANT_THETA: tl.constexpr,
                            BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    g = tl.load(grad_ptr + offs, mask=inb, other=0.0).to(theta_ptr.dtype.element_ty)
    for i in tl.static_range(NB):
        if (NEED_MASK >> i) & 1:
            th = tl.load(theta_ptr + i)
            tl.store(grads[i] + offs, (th * g).to(grads[i].dtype.element_ty), mask=inb)
        if WANT_THETA:
            x = tl.load(xs[i] + offs, mask=inb, other=0.0).to(g.dtype)
            tl.store(partial_ptr + pid * NB + i, tl.sum(g * x, axis=0))


@triton.jit
def _gamma_level(taps_idx, taps, LEVELS_MAX: tl.constexpr, levels):
    """min(v(K-1-j), L-1) per tap: the number of p in 1..L-1 with 2^p | (K-1-j)."""
    d = taps - 1 - taps_idx
    lvl = tl.zeros_like(taps_idx)
    for p in tl.static_range(1, LEVELS_MAX):
        hit = ((d % (1 << p)) == 0) & (p < levels)
        lvl += hit.to(lvl.dtype)
    return lvl


@triton.jit
def _abs_keep_last(ptr, idx, count, ty: tl.constexpr):
    """|p| with the last entry forced to 1, zero outside [0, count)."""
    v = tl.load(ptr + idx, mask=idx < count, other=0.0).to(ty)
    return tl.where(idx == count - 1, 1.0, tl.abs(v)).to(ty)


@triton.jit
def masks_kernel(alpha_ptr, beta_ptr, gamma_ptr, cm_ptr, mb_ptr, mg_ptr, mt_ptr,
                 cout, taps, levels, keep_alive, threshold,
                 HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, HAS_GAMMA: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, LEVELS_MAX: tl.constexpr):
    if HAS_ALPHA:
        for start in range(0, cout, BLOCK_C):
            c = start + tl.arange(0, BLOCK_C)
            inb = c < cout
            a = tl.abs(tl.load(alpha_ptr + c, mask=inb, other=0.0).to(cm_ptr.dtype.element_ty))
            theta = tl.where(c >= cout - keep_alive, 1.0, a)
            tl.store(cm_ptr + c, (theta > threshold).to(cm_ptr.dtype.element_ty), mask=inb)
    if HAS_BETA or HAS_GAMMA:
        acc_ty = mt_ptr.dtype.element_ty
        j = tl.arange(0, BLOCK_K)
        inb = j < taps
        mb = tl.full([BLOCK_K], 1.0, acc_ty)
        mg = tl.full([BLOCK_K], 1.0, acc_ty)
        if HAS_BETA:
            bh = _abs_keep_last(beta_ptr, j, taps, acc_ty)  # indexed by i
            tri = (j[None, :] <= j[:, None]) & inb[None, :]  # [tap j, term i]: i <= j
            theta_b = tl.sum(tl.where(tri, bh[None, :], 0.0), axis=1)
            mb = (theta_b > threshold).to(acc_ty)
        if HAS_GAMMA:
            p = tl.arange(0, LEVELS_MAX)
            gh = _abs_keep_last(gamma_ptr, p, levels, acc_ty)
            lvl = _gamma_level(j, taps, LEVELS_MAX, levels)
            sel = (p[None, :] <= lvl[:, None]) & (p[None, :] < levels)
            theta_g = tl.sum(tl.where(sel, gh[None, :], 0.0), axis=1)
            mg = (theta_g > threshold).to(acc_ty)
        tl.store(mb_ptr + j, mb, mask=inb)
        tl.store(mg_ptr + j, mg, mask=inb)
        tl.store(mt_ptr + j, mb * mg, mask=inb)


@triton.jit
def apply_kernel(w_ptr, cm_ptr, mt_ptr, out_ptr, n, row_len, taps,
                 HAS_CM: tl.constexpr, HAS_MT: tl.constexpr, BLOCK: tl.constexpr):
    """out = w ⊙ m_α[c] ⊙ m_t[k] over a flat [Cout, R, taps] weight (row_len = R·taps)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    acc_ty = cm_ptr.dtype.element_ty
    v = tl.load(w_ptr + offs, mask=inb, other=0.0).to(acc_ty)
    if HAS_CM:
        v = v * tl.load(cm_ptr + offs // row_len, mask=inb, other=0.0)
    if HAS_MT:
        v = v * tl.load(mt_ptr + offs % taps, mask=inb, other=0.0)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def reduce_kernel(g_ptr, w_ptr, cm_ptr, mt_ptr, gout_ptr, partial_ptr, rows_per_channel, taps,
                  HAS_CM: tl.constexpr, HAS_MT: tl.constexpr, WANT_GRAD: tl.constexpr,
                  WANT_PARTIAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    kin = k < taps
    acc_ty = partial_ptr.dtype.element_ty
    scale = tl.full([BLOCK_K], 1.0, acc_ty)
    if HAS_MT:
        scale = tl.load(mt_ptr + k, mask=kin, other=0.0).to(acc_ty)
    if HAS_CM:
        scale = scale * tl.load(cm_ptr + c).to(acc_ty)
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_ty)
    base = c * rows_per_channel * taps
    for start in range(0, rows_per_channel, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        inb = (r[:, None] < rows_per_channel) & kin[None, :]
        offs = base + r[:, None] * taps + k[None, :]
        g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(acc_ty)
        if WANT_GRAD:
            tl.store(gout_ptr + offs, (g * scale[None, :]).to(gout_ptr.dtype.element_ty),
                     mask=inb)
        if WANT_PARTIAL:
            acc += g * tl.load(w_ptr + offs, mask=inb, other=0.0).to(acc_ty)
    if WANT_PARTIAL:
        tl.store(partial_ptr + c * taps + k, tl.sum(acc, axis=0), mask=kin)


@triton.jit
def param_grads_kernel(partial_ptr, gb_ptr, b_ptr, ext_cm_ptr, ext_t_ptr,
                       alpha_ptr, beta_ptr, gamma_ptr, cm_ptr, mt_ptr, mb_ptr, mg_ptr,
                       ga_ptr, gbeta_ptr, ggamma_ptr, cout, taps, levels, keep_alive,
                       HAS_PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                       HAS_EXT_CM: tl.constexpr, HAS_EXT_T: tl.constexpr,
                       HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
                       HAS_GAMMA: tl.constexpr, HAS_MT: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                       LEVELS_MAX: tl.constexpr):
    acc_ty = ga_ptr.dtype.element_ty
    k = tl.arange(0, BLOCK_K)
    kin = k < taps
    mt = tl.full([BLOCK_K], 1.0, acc_ty)
    if HAS_MT:
        mt = tl.load(mt_ptr + k, mask=kin, other=0.0).to(acc_ty)
    g_time = tl.zeros([BLOCK_K], dtype=acc_ty)
    for start in range(0, cout, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        cin = c < cout
        g_alpha = tl.zeros([BLOCK_C], dtype=acc_ty)
        if HAS_PARTIAL:
            part = tl.load(partial_ptr + c[:, None] * taps + k[None, :],
                           mask=cin[:, None] & kin[None, :], other=0.0)
            g_alpha += tl.sum(part * mt[None, :], axis=1)
            cmv = tl.full([BLOCK_C], 1.0, acc_ty)
            if HAS_ALPHA:
                cmv = tl.load(cm_ptr + c, mask=cin, other=0.0)
            g_time += tl.sum(part * cmv[:, None], axis=0)
        if HAS_ALPHA:
            if HAS_BIAS:
                g_alpha += (tl.load(gb_ptr + c, mask=cin, other=0.0)
                            * tl.load(b_ptr + c, mask=cin, other=0.0))
            if HAS_EXT_CM:
                g_alpha += tl.load(ext_cm_ptr + c, mask=cin, other=0.0)
            a = tl.load(alpha_ptr + c, mask=cin, other=0.0).to(acc_ty)
            sign = tl.where(a > 0, 1.0, tl.where(a < 0, -1.0, 0.0))
            out = tl.where(c >= cout - keep_alive, 0.0, sign * g_alpha)
            tl.store(ga_ptr + c, out, mask=cin)
    if HAS_MT:
        if HAS_EXT_T:
            g_time += tl.load(ext_t_ptr + k, mask=kin, other=0.0)
        if HAS_BETA:
            mg = tl.load(mg_ptr + k, mask=kin, other=0.0)
            gb = g_time * mg  # gradient w.r.t. the β mask, per tap i
            suffix = (k[None, :] >= k[:, None]) & kin[None, :]  # [param j, tap i]: i >= j
            s = tl.sum(tl.where(suffix, gb[None, :], 0.0), axis=1)
            bv = tl.load(beta_ptr + k, mask=kin, other=0.0).to(acc_ty)
            sign = tl.where(bv > 0, 1.0, tl.where(bv < 0, -1.0, 0.0))
            tl.store(gbeta_ptr + k, tl.where(k == taps - 1, 0.0, sign * s), mask=kin)
        if HAS_GAMMA:
            mb = tl.load(mb_ptr + k, mask=kin, other=0.0)
            gg = g_time * mb  # gradient w.r.t. the γ mask, per tap j
            p = tl.arange(0, LEVELS_MAX)
            lvl = _gamma_level(k, taps, LEVELS_MAX, levels)
            sel = (p[:, None] <= lvl[None, :]) & kin[None, :]  # [level p, tap j]
            s = tl.sum(tl.where(sel, gg[None, :], 0.0), axis=1)
            gv = tl.load(gamma_ptr + p, mask=p < levels, other=0.0).to(acc_ty)
            sign = tl.where(gv > 0, 1.0, tl.where(gv < 0, -1.0, 0.0))
            tl.store(ggamma_ptr + p, tl.where(p == levels - 1, 0.0, sign * s), mask=p < levels)
