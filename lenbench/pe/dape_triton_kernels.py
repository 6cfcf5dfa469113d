"""Triton kernels of :mod:`lenbench.pe.dape_triton` (forward, backward and their shared tile).

Imported on first use, so ``TRITON_INTERPRET=1`` set before then runs them on CPU tensors.
Formulas: ``dape_fused.c``'s header; layout and padding: :mod:`lenbench.pe.dape_triton`.
"""

import triton
import triton.language as tl


@triton.jit
def _mm(a, b):
    """``tl.dot`` in full fp32 (no TF32), so values match the PyTorch formula to float tolerance."""
    return tl.dot(a, b, input_precision="ieee")

@triton.jit
def _tile(q_ptr, k_ptr, bias_ptr, ws_ptr, wb_ptr, b1_ptr, w2_ptr, b2_ptr, bh, i, j, H, Nq, Nk, d, first,
          sh, si, scale, slope, HP: tl.constexpr, DP: tl.constexpr, dP: tl.constexpr, BM: tl.constexpr,
          BN: tl.constexpr, VARIANT: tl.constexpr, CAUSAL: tl.constexpr):
    """Logits [HP, BM, BN] of queries i and keys j (-inf where not visible), with S, B, z, a."""
    h = tl.arange(0, HP)
    c = tl.arange(0, dP)
    hm = h < H
    qo = (bh + h)[:, None, None] * Nq * d + i[None, :, None] * d + c[None, None, :]
    qt = tl.load(q_ptr + qo, mask=hm[:, None, None] & (i < Nq)[None, :, None] & (c < d)[None, None, :], other=0.0)
    ko = (bh + h)[:, None, None] * Nk * d + j[None, :, None] * d + c[None, None, :]
    kt = tl.load(k_ptr + ko, mask=hm[:, None, None] & (j < Nk)[None, :, None] & (c < d)[None, None, :], other=0.0)
    s = _mm(qt, tl.permute(kt, (0, 2, 1))) * scale
    bo = h[:, None, None] * sh + i[None, :, None] * si + j[None, None, :]
    inside = (i < Nq)[:, None] & (j < Nk)[None, :]
    b = tl.load(bias_ptr + bo, mask=hm[:, None, None] & inside[None, :, :], other=0.0)
    hd = tl.arange(0, HP)[None, :]
    u = tl.arange(0, DP)[:, None]
    ws = tl.load(ws_ptr + u * HP + hd)
    s2 = tl.reshape(s, (HP, BM * BN))
    b2d = tl.reshape(b, (HP, BM * BN))
    if VARIANT == 2:
        z = _mm(ws, s2 + b2d)
    else:
        z = _mm(ws, s2) + _mm(tl.load(wb_ptr + u * HP + hd), b2d)
    z = z + tl.load(b1_ptr + tl.arange(0, DP))[:, None]
    a = tl.where(z > 0, z, z * slope)
    w2 = tl.load(w2_ptr + tl.arange(0, HP)[:, None] * DP + tl.arange(0, DP)[None, :])
    f = _mm(w2, a) + tl.load(b2_ptr + tl.arange(0, HP))[:, None]
    if VARIANT == 1:
        lg = s2 + f
    else:
        lg = s2 + b2d + f
    lg = tl.reshape(lg, (HP, BM, BN))
    vis = (j < Nk)[None, :]
    if CAUSAL:
        vis = vis & (j[None, :] <= first + i[:, None])
    lg = tl.where(vis[None, :, :], lg, float("-inf"))
    return lg, s2, b2d, z, a, qt, kt

@triton.jit
def forward(q_ptr, k_ptr, v_ptr, bias_ptr, ws_ptr, wb_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, lse_ptr, H, Nq, Nk,
            d, first, sh, si, scale, slope, HP: tl.constexpr, DP: tl.constexpr, dP: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, VARIANT: tl.constexpr, CAUSAL: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    bh = b * H
    i = pid * BM + tl.arange(0, BM)
    h = tl.arange(0, HP)
    c = tl.arange(0, dP)
    m = tl.full((HP, BM), float("-inf"), tl.float32)
    lsum = tl.zeros((HP, BM), tl.float32)
    acc = tl.zeros((HP, BM, dP), tl.float32)
    kend = Nk
    if CAUSAL:
        kend = tl.minimum(Nk, first + (pid + 1) * BM)
    for j0 in range(0, kend, BN):
        j = j0 + tl.arange(0, BN)
        lg, _, _, _, _, _, _ = _tile(q_ptr, k_ptr, bias_ptr, ws_ptr, wb_ptr, b1_ptr, w2_ptr, b2_ptr, bh, i, j, H,
                                     Nq, Nk, d, first, sh, si, scale, slope, HP, DP, dP, BM, BN, VARIANT, CAUSAL)
        m_new = tl.maximum(m, tl.max(lg, 2))
        alpha = tl.exp(m - m_new)
        p = tl.exp(lg - m_new[:, :, None])
        lsum = lsum * alpha + tl.sum(p, 2)
        vo = (bh + h)[:, None, None] * Nk * d + j[None, :, None] * d + c[None, None, :]
        vm = (h < H)[:, None, None] & (j < Nk)[None, :, None] & (c < d)[None, None, :]
        vt = tl.load(v_ptr + vo, mask=vm, other=0.0)
        acc = acc * alpha[:, :, None] + _mm(p, vt)
        m = m_new
    keep = (h < H)[:, None] & (i < Nq)[None, :]
    oo = (bh + h)[:, None, None] * Nq * d + i[None, :, None] * d + c[None, None, :]
    tl.store(out_ptr + oo, acc / lsum[:, :, None], mask=keep[:, :, None] & (c < d)[None, None, :])
    tl.store(lse_ptr + (bh + h)[:, None] * Nq + i[None, :], m + tl.log(lsum), mask=keep)

@triton.jit
def backward(q_ptr, k_ptr, v_ptr, bias_ptr, ws_ptr, wb_ptr, b1_ptr, w2_ptr, b2_ptr, do_ptr, lse_ptr, delta_ptr,
             dq_ptr, dk_ptr, dv_ptr, dbias_ptr, dws_ptr, dwb_ptr, db1_ptr, dw2_ptr, db2_ptr, H, Nq, Nk, d, first,
             sh, si, scale, slope, HP: tl.constexpr, DP: tl.constexpr, dP: tl.constexpr, BM: tl.constexpr,
             BN: tl.constexpr, VARIANT: tl.constexpr, CAUSAL: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    bh = b * H
    i = pid * BM + tl.arange(0, BM)
    h = tl.arange(0, HP)
    c = tl.arange(0, dP)
    hm = h < H
    rows = (bh + h)[:, None] * Nq + i[None, :]
    rmask = hm[:, None] & (i < Nq)[None, :]
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    delta = tl.load(delta_ptr + rows, mask=rmask, other=0.0)
    qo = (bh + h)[:, None, None] * Nq * d + i[None, :, None] * d + c[None, None, :]
    qmask = rmask[:, :, None] & (c < d)[None, None, :]
    dout = tl.load(do_ptr + qo, mask=qmask, other=0.0)
    dq = tl.zeros((HP, BM, dP), tl.float32)
    gws = tl.zeros((DP, HP), tl.float32)
    gwb = tl.zeros((DP, HP), tl.float32)
    gw2 = tl.zeros((HP, DP), tl.float32)
    gb1 = tl.zeros((DP,), tl.float32)
    gb2 = tl.zeros((HP,), tl.float32)
    u = tl.arange(0, DP)[:, None]
    hd = tl.arange(0, HP)[None, :]
    ws = tl.load(ws_ptr + u * HP + hd)
    wb = tl.load(wb_ptr + u * HP + hd)
    w2 = tl.load(w2_ptr + tl.arange(0, HP)[:, None] * DP + tl.arange(0, DP)[None, :])
    kend = Nk
    if CAUSAL:
        kend = tl.minimum(Nk, first + (pid + 1) * BM)
    for j0 in range(0, kend, BN):
        j = j0 + tl.arange(0, BN)
        lg, s2, b2d, z, a, qt, kt = _tile(q_ptr, k_ptr, bias_ptr, ws_ptr, wb_ptr, b1_ptr, w2_ptr, b2_ptr, bh, i, j,
                                          H, Nq, Nk, d, first, sh, si, scale, slope, HP, DP, dP, BM, BN, VARIANT,
                                          CAUSAL)
        p = tl.exp(lg - lse[:, :, None])
        ko = (bh + h)[:, None, None] * Nk * d + j[None, :, None] * d + c[None, None, :]
        kmask = hm[:, None, None] & (j < Nk)[None, :, None] & (c < d)[None, None, :]
        vt = tl.load(v_ptr + ko, mask=kmask, other=0.0)
        dp = _mm(dout, tl.permute(vt, (0, 2, 1)))
        dl = p * (dp - delta[:, :, None])
        dl = tl.where(rmask[:, :, None], dl, 0.0)
        pr = tl.where(rmask[:, :, None], p, 0.0)
        tl.atomic_add(dv_ptr + ko, _mm(tl.permute(pr, (0, 2, 1)), dout), mask=kmask)
        dl2 = tl.reshape(dl, (HP, BM * BN))
        gb2 += tl.sum(dl2, 1)
        gw2 += _mm(dl2, tl.trans(a))
        da = _mm(tl.trans(w2), dl2)
        dz = tl.where(z > 0, da, da * slope)
        gb1 += tl.sum(dz, 1)
        dxs = _mm(tl.trans(ws), dz)
        if VARIANT == 2:
            gws += _mm(dz, tl.trans(s2 + b2d))
            ds2 = dl2 + dxs
            db2d = ds2
        else:
            gws += _mm(dz, tl.trans(s2))
            gwb += _mm(dz, tl.trans(b2d))
            ds2 = dl2 + dxs
            if VARIANT == 1:
                db2d = _mm(tl.trans(wb), dz)
            else:
                db2d = dl2 + _mm(tl.trans(wb), dz)
        ds = tl.reshape(ds2, (HP, BM, BN)) * scale
        dq += _mm(ds, kt)
        tl.atomic_add(dk_ptr + ko, _mm(tl.permute(ds, (0, 2, 1)), qt), mask=kmask)
        bo = h[:, None, None] * sh + i[None, :, None] * si + j[None, None, :]
        vis = (i < Nq)[:, None] & (j < Nk)[None, :]
        if CAUSAL:
            vis = vis & (j[None, :] <= first + i[:, None])
        tl.atomic_add(dbias_ptr + bo, tl.reshape(db2d, (HP, BM, BN)), mask=hm[:, None, None] & vis[None, :, :])
    tl.store(dq_ptr + qo, dq, mask=qmask)
    tl.atomic_add(dws_ptr + u * HP + hd, gws)
    tl.atomic_add(dwb_ptr + u * HP + hd, gwb)
    tl.atomic_add(dw2_ptr + tl.arange(0, HP)[:, None] * DP + tl.arange(0, DP)[None, :], gw2)
    tl.atomic_add(db1_ptr + tl.arange(0, DP), gb1)
    tl.atomic_add(db2_ptr + tl.arange(0, HP), gb2)
