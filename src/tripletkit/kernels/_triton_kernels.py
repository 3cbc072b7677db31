"""The Triton kernels of :mod:`tripletkit.kernels.triton_backend` (issue 18), built on first
use: distance tiles from the embeddings with ``tl.dot`` in registers, per-anchor mining state
on chip, nothing ``[N, M]``-sized written to memory. The host side (shapes, grids, autograd
state) is in :mod:`tripletkit.kernels.triton_backend`."""

from __future__ import annotations

import functools
from types import SimpleNamespace

__all__ = ["build"]


@functools.cache
def build(interpret: bool) -> SimpleNamespace:  # noqa: C901 - the kernels, defined once
    """The jitted kernels. ``triton.jit`` decides at decoration time whether a kernel is
    compiled or interpreted, so they are built on first use (per mode), never at import."""
    import triton
    import triton.language as tl

    # triton.language's own jitted helpers (tl.zeros...) were decorated when triton was first
    # imported: the interpreter needs them interpreted too.
    if interpret and type(tl.zeros).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton was imported: set it before the first "
            "import of triton (e.g. in the environment of the process)"
        )

    @triton.jit
    def _tile(
        xb,
        xx,
        y_ptr,
        yy_ptr,
        cols,
        rd,
        M,
        D,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
    ):
        """Distances ``[BN, BM]`` of the anchors ``xb`` to the references ``cols`` (rows of
        ``y``), and for the cosine metric ``1 - x.y`` before the clamp."""
        cmask = cols < M
        yb = tl.load(
            y_ptr + cols[:, None].to(tl.int64) * D + rd[None, :],
            mask=cmask[:, None] & (rd[None, :] < D),
            other=0.0,
        )
        if F64:
            yb = yb.to(tl.float64)
            g = tl.dot(xb, tl.trans(yb), input_precision=PREC, out_dtype=tl.float64)
        else:
            yb = yb.to(tl.float32)
            g = tl.dot(xb, tl.trans(yb), input_precision=PREC, out_dtype=tl.float32)
        if METRIC == 2:
            c = 1.0 - g
            d = tl.minimum(tl.maximum(c, 0.0), 2.0)
            d = tl.where(d > EPS8, d, 0.0)
        else:
            yy = tl.load(yy_ptr + cols, mask=cmask, other=0.0)
            c = (xx[:, None] - 2.0 * g) + yy[None, :]
            d = tl.where(c <= (xx[:, None] + yy[None, :]) * EPS8, 0.0, c)
            if METRIC == 0:
                if F64:
                    d = tl.sqrt(d)
                else:
                    d = tl.sqrt_rn(d)  # IEEE-rounded, as torch's sqrt (tl.sqrt: approximate)
        return d, c

    @triton.jit
    def _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64: tl.constexpr):
        """The block's anchors ``[BN, BD]`` (compute dtype), squared norms, labels, own
        columns."""
        rmask = rows < N
        xb = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * D + rd[None, :],
            mask=rmask[:, None] & (rd[None, :] < D),
            other=0.0,
        )
        if F64:
            xb = xb.to(tl.float64)
        else:
            xb = xb.to(tl.float32)
        xx = tl.load(xx_ptr + rows, mask=rmask, other=0.0)
        lab = tl.load(lab_ptr + rows, mask=rmask, other=0)
        own = tl.load(own_ptr + rows, mask=rmask, other=-1)
        return xb, xx, lab, own

    @triton.jit
    def _positive_distances(
        xb,
        xx,
        y_ptr,
        yy_ptr,
        pc,
        slots,
        rd,
        M,
        D,
        W,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BM: tl.constexpr,
    ):
        """First sweep: the distance of each positive slot ``pc [BN, WP]`` (column, -1 when
        unused) read off the tiles, ``+inf`` in unused slots."""
        dap = tl.zeros(pc.shape, dtype=xx.dtype) + float("inf")
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            d, _c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
            for w in range(W):
                sel = slots[None, :] == w
                pcw = tl.sum(tl.where(sel, pc, 0), 1)
                hit = cols[None, :] == pcw[:, None]
                val = tl.sum(tl.where(hit, d, 0.0), 1)
                has = tl.max(hit.to(tl.int32), 1) > 0
                dap = tl.where(sel & has[:, None], val[:, None], dap)
        return dap

    @triton.jit
    def ranked_kernel(
        x_ptr,
        xx_ptr,
        y_ptr,
        yy_ptr,
        lab_ptr,
        rlab_ptr,
        own_ptr,
        outp_ptr,
        outn_ptr,
        N,
        M,
        D,
        P_LO,
        P_HI,
        N_LO,
        N_HI,
        R_HI,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
    ):
        """Batch-hard with rank windows: sweep ``r`` finds each anchor's positive ranked
        ``r`` (key ``-d``: farthest first) and negative ranked ``r`` (key ``d``), ties to the
        lower column; ranks in the windows are written (column, -1 for none)."""
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        rmask = rows < N
        rd = tl.arange(0, BD)
        xb, xx, lab, own = _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64)
        inf = float("inf")
        pk = tl.zeros([BN], dtype=xx.dtype) - inf
        nk = tl.zeros([BN], dtype=xx.dtype) - inf
        pcol = tl.zeros([BN], dtype=tl.int32) - 1
        ncol = tl.zeros([BN], dtype=tl.int32) - 1
        for r in range(0, R_HI):
            bp = tl.zeros([BN], dtype=xx.dtype) + inf
            bn = tl.zeros([BN], dtype=xx.dtype) + inf
            bpc = tl.zeros([BN], dtype=tl.int32) + M
            bnc = tl.zeros([BN], dtype=tl.int32) + M
            for m0 in range(0, M, BM):
                cols = m0 + tl.arange(0, BM)
                cmask = cols < M
                d, _c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
                rl = tl.load(rlab_ptr + cols, mask=cmask, other=0)
                same = lab[:, None] == rl[None, :]
                posm = same & (cols[None, :] != own[:, None]) & cmask[None, :]
                negm = (~same) & cmask[None, :]
                c2 = cols[None, :]
                # positives: key -d, after (pk, pcol)
                key = -d
                cand = posm & ((key > pk[:, None]) | ((key == pk[:, None]) & (c2 > pcol[:, None])))
                kv = tl.where(cand, key, inf)
                tmin = tl.min(kv, 1)
                tcol = tl.min(tl.where(cand & (kv == tmin[:, None]), c2, M), 1)
                better = tmin < bp
                bp = tl.where(better, tmin, bp)
                bpc = tl.where(better, tcol, bpc)
                # negatives: key d, after (nk, ncol)
                cand = negm & ((d > nk[:, None]) | ((d == nk[:, None]) & (c2 > ncol[:, None])))
                kv = tl.where(cand, d, inf)
                tmin = tl.min(kv, 1)
                tcol = tl.min(tl.where(cand & (kv == tmin[:, None]), c2, M), 1)
                better = tmin < bn
                bn = tl.where(better, tmin, bn)
                bnc = tl.where(better, tcol, bnc)
            pk, nk, pcol, ncol = bp, bn, bpc, bnc
            out_p = tl.where(pcol < M, pcol, -1).to(tl.int64)
            out_n = tl.where(ncol < M, ncol, -1).to(tl.int64)
            wp = P_HI - P_LO
            wq = N_HI - N_LO
            rr = tl.zeros([BN], dtype=tl.int32) + r
            tl.store(
                outp_ptr + rows.to(tl.int64) * wp + (r - P_LO),
                out_p,
                mask=rmask & (rr >= P_LO) & (rr < P_HI),
            )
            tl.store(
                outn_ptr + rows.to(tl.int64) * wq + (r - N_LO),
                out_n,
                mask=rmask & (rr >= N_LO) & (rr < N_HI),
            )

    @triton.jit
    def semi_hard_kernel(
        x_ptr,
        xx_ptr,
        y_ptr,
        yy_ptr,
        lab_ptr,
        rlab_ptr,
        own_ptr,
        pcol_ptr,
        out_ptr,
        N,
        M,
        D,
        W,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        WP: tl.constexpr,
    ):
        """Semi-hard: per positive slot, the nearest negative with ``d_an > d_ap`` (lowest
        column on ties), else the anchor's largest negative (first occurrence); -1 when the
        anchor has no negative."""
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        rmask = rows < N
        rd = tl.arange(0, BD)
        slots = tl.arange(0, WP)
        xb, xx, lab, own = _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64)
        smask = rmask[:, None] & (slots[None, :] < W)
        pc = tl.load(
            pcol_ptr + rows[:, None].to(tl.int64) * W + slots[None, :], mask=smask, other=-1
        )
        dap = _positive_distances(
            xb, xx, y_ptr, yy_ptr, pc, slots, rd, M, D, W, METRIC, EPS8, PREC, F64, BM
        )
        inf = float("inf")
        best = tl.zeros([BN, WP], dtype=xx.dtype) + inf
        best_c = tl.zeros([BN, WP], dtype=tl.int32) + M
        big = tl.zeros([BN], dtype=xx.dtype) - inf
        big_c = tl.zeros([BN], dtype=tl.int32) + M
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            cmask = cols < M
            d, _c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
            rl = tl.load(rlab_ptr + cols, mask=cmask, other=0)
            negm = (lab[:, None] != rl[None, :]) & cmask[None, :]
            c2 = cols[None, :]
            v = tl.where(negm, d, -inf)
            tmax = tl.max(v, 1)
            tcol = tl.min(tl.where(negm & (v == tmax[:, None]), c2, M), 1)
            better = tmax > big
            big = tl.where(better, tmax, big)
            big_c = tl.where(better, tcol, big_c)
            for w in range(W):
                sel = slots[None, :] == w
                dw = tl.sum(tl.where(sel, dap, 0.0), 1)
                cand = negm & (d > dw[:, None])
                kv = tl.where(cand, d, inf)
                tmin = tl.min(kv, 1)
                tcol = tl.min(tl.where(cand & (kv == tmin[:, None]), c2, M), 1)
                better = sel & (tmin[:, None] < best)
                best = tl.where(better, tmin[:, None], best)
                best_c = tl.where(better, tcol[:, None], best_c)
        neg = tl.where(best_c < M, best_c, big_c[:, None])
        neg = tl.where(neg < M, neg, -1).to(tl.int64)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * W + slots[None, :], neg, mask=smask)

    @triton.jit
    def batch_all_fwd_kernel(
        x_ptr,
        xx_ptr,
        y_ptr,
        yy_ptr,
        lab_ptr,
        rlab_ptr,
        own_ptr,
        pcol_ptr,
        margin_ptr,
        thr_ptr,
        coef_ptr,
        total_ptr,
        active_ptr,
        N,
        M,
        D,
        W,
        SOFT: tl.constexpr,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        WP: tl.constexpr,
    ):
        """Batch-all forward: per anchor the float64 sum of its terms (hinge
        ``max(0, t - d_an)`` or ``softplus(t - d_an)``, ``t = d_ap + margin``) and, hinge,
        its active count; per slot the threshold ``t`` (``-inf`` unused) and the positive's
        gradient coefficient (hinge: its number of active negatives; soft: the sum of its
        sigmoids)."""
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        rmask = rows < N
        rd = tl.arange(0, BD)
        slots = tl.arange(0, WP)
        xb, xx, lab, own = _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64)
        smask = rmask[:, None] & (slots[None, :] < W)
        pc = tl.load(
            pcol_ptr + rows[:, None].to(tl.int64) * W + slots[None, :], mask=smask, other=-1
        )
        dap = _positive_distances(
            xb, xx, y_ptr, yy_ptr, pc, slots, rd, M, D, W, METRIC, EPS8, PREC, F64, BM
        )
        margin = tl.load(margin_ptr)
        thr = tl.where(pc >= 0, dap + margin, -float("inf"))
        total = tl.zeros([BN], dtype=tl.float64)
        active = tl.zeros([BN], dtype=tl.int64)
        coef = tl.zeros([BN, WP], dtype=tl.float64)
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            cmask = cols < M
            d, _c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
            rl = tl.load(rlab_ptr + cols, mask=cmask, other=0)
            negm = (lab[:, None] != rl[None, :]) & cmask[None, :]
            for w in range(W):
                sel = slots[None, :] == w
                tw = tl.sum(tl.where(sel, thr, 0.0), 1)
                if SOFT:
                    used = tl.sum(tl.where(sel, pc, 0), 1) >= 0
                    # softplus and sigmoid of z, stable; log1p(e) from log (exact where
                    # 1 + e rounds to 1). Inline: a helper call costs the interpreter much.
                    z = tw[:, None] - d
                    e = tl.exp(-tl.abs(z))
                    u = 1.0 + e
                    lp = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
                    sp = tl.maximum(z, 0.0) + lp
                    sg = tl.where(z >= 0.0, 1.0 / u, e / u)
                    live = negm & used[:, None]
                    total += tl.sum(tl.where(live, sp, 0.0).to(tl.float64), 1)
                    part = tl.sum(tl.where(live, sg, 0.0).to(tl.float64), 1)
                else:
                    act = negm & (d < tw[:, None])
                    total += tl.sum(tl.where(act, tw[:, None] - d, 0.0).to(tl.float64), 1)
                    cnt = tl.sum(act.to(tl.int32), 1)
                    active += cnt.to(tl.int64)
                    part = cnt.to(tl.float64)
                coef += tl.where(sel, part[:, None], 0.0)
        offs = rows[:, None].to(tl.int64) * W + slots[None, :]
        tl.store(thr_ptr + offs, thr, mask=smask)
        tl.store(coef_ptr + offs, coef.to(xx.dtype), mask=smask)
        tl.store(total_ptr + rows, total, mask=rmask)
        tl.store(active_ptr + rows, active, mask=rmask)

    @triton.jit
    def _weights(
        d,
        c,
        negm,
        cols,
        pc,
        thr,
        coef,
        slots,
        W,
        SOFT: tl.constexpr,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
    ):
        """The tile's ``g = d(total) / d(dist)`` rebuilt from the forward's per-slot state,
        turned into the weights of the embeddings' gradient (squared: ``2 g``; Euclidean:
        ``g / d``, 0 at ``d = 0``; cosine: ``-g`` where the distance is differentiable)."""
        g = tl.zeros(d.shape, dtype=d.dtype)
        for w in range(W):
            sel = slots[None, :] == w
            tw = tl.sum(tl.where(sel, thr, 0.0), 1)
            pcw = tl.sum(tl.where(sel, pc, 0), 1)
            cw = tl.sum(tl.where(sel, coef, 0.0), 1)
            if SOFT:
                z = tw[:, None] - d
                e = tl.exp(-tl.abs(z))
                sg = tl.where(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))  # sigmoid(z)
                g -= tl.where(negm & (pcw >= 0)[:, None], sg, 0.0)
            else:
                g -= tl.where(negm & (d < tw[:, None]), 1.0, 0.0)
            g += tl.where(cols[None, :] == pcw[:, None], cw[:, None], 0.0)
        if METRIC == 1:
            wt = 2.0 * g
        elif METRIC == 0:
            wt = tl.where(d > 0.0, g / tl.where(d > 0.0, d, 1.0), 0.0)
        else:
            wt = tl.where((c > EPS8) & (c <= 2.0), -g, 0.0)
        return wt

    @triton.jit
    def batch_all_dx_kernel(
        x_ptr,
        xx_ptr,
        y_ptr,
        yy_ptr,
        lab_ptr,
        rlab_ptr,
        own_ptr,
        pcol_ptr,
        thr_ptr,
        coef_ptr,
        gx_ptr,
        N,
        M,
        D,
        W,
        SOFT: tl.constexpr,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        WP: tl.constexpr,
    ):
        """Batch-all backward, anchors: ``dx = x w.sum(1) - w y`` (cosine ``w y``) over the
        recomputed tiles of a block of anchors."""
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        rmask = rows < N
        rd = tl.arange(0, BD)
        slots = tl.arange(0, WP)
        xb, xx, lab, own = _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64)
        smask = rmask[:, None] & (slots[None, :] < W)
        offs = rows[:, None].to(tl.int64) * W + slots[None, :]
        pc = tl.load(pcol_ptr + offs, mask=smask, other=-1)
        thr = tl.load(thr_ptr + offs, mask=smask, other=-float("inf"))
        coef = tl.load(coef_ptr + offs, mask=smask, other=0.0)
        acc = tl.zeros([BN, BD], dtype=xx.dtype)
        wsum = tl.zeros([BN], dtype=xx.dtype)
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            cmask = cols < M
            d, c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
            rl = tl.load(rlab_ptr + cols, mask=cmask, other=0)
            negm = (lab[:, None] != rl[None, :]) & cmask[None, :]
            wt = _weights(d, c, negm, cols, pc, thr, coef, slots, W, SOFT, METRIC, EPS8)
            wt = tl.where(rmask[:, None] & cmask[None, :], wt, 0.0)
            yb = tl.load(
                y_ptr + cols[:, None].to(tl.int64) * D + rd[None, :],
                mask=cmask[:, None] & (rd[None, :] < D),
                other=0.0,
            ).to(xx.dtype)
            acc += tl.dot(wt, yb, input_precision=PREC, out_dtype=xx.dtype)
            wsum += tl.sum(wt, 1)
        if METRIC == 2:
            gx = acc
        else:
            gx = xb * wsum[:, None] - acc
        tl.store(
            gx_ptr + rows[:, None].to(tl.int64) * D + rd[None, :],
            gx,
            mask=rmask[:, None] & (rd[None, :] < D),
        )

    @triton.jit
    def batch_all_dy_kernel(
        x_ptr,
        xx_ptr,
        y_ptr,
        yy_ptr,
        lab_ptr,
        rlab_ptr,
        own_ptr,
        pcol_ptr,
        thr_ptr,
        coef_ptr,
        gy_ptr,
        N,
        M,
        D,
        W,
        SOFT: tl.constexpr,
        METRIC: tl.constexpr,
        EPS8: tl.constexpr,
        PREC: tl.constexpr,
        F64: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        BD: tl.constexpr,
        WP: tl.constexpr,
    ):
        """Batch-all backward, references: ``dy = y w.sum(0) - w^T x`` (cosine ``w^T x``)
        for a block of references, over the recomputed tiles of every anchor block (the
        same tiles as the forward's: same blocks, same bits)."""
        cols = tl.program_id(0) * BM + tl.arange(0, BM)
        cmask = cols < M
        rd = tl.arange(0, BD)
        slots = tl.arange(0, WP)
        rl = tl.load(rlab_ptr + cols, mask=cmask, other=0)
        acc = tl.zeros([BM, BD], dtype=tl.float32)
        wsum = tl.zeros([BM], dtype=tl.float32)
        if F64:
            acc = acc.to(tl.float64)
            wsum = wsum.to(tl.float64)
        for n0 in range(0, N, BN):
            rows = n0 + tl.arange(0, BN)
            rmask = rows < N
            xb, xx, lab, own = _anchors(x_ptr, xx_ptr, lab_ptr, own_ptr, rows, rd, N, D, F64)
            smask = rmask[:, None] & (slots[None, :] < W)
            offs = rows[:, None].to(tl.int64) * W + slots[None, :]
            pc = tl.load(pcol_ptr + offs, mask=smask, other=-1)
            thr = tl.load(thr_ptr + offs, mask=smask, other=-float("inf"))
            coef = tl.load(coef_ptr + offs, mask=smask, other=0.0)
            d, c = _tile(xb, xx, y_ptr, yy_ptr, cols, rd, M, D, METRIC, EPS8, PREC, F64)
            negm = (lab[:, None] != rl[None, :]) & cmask[None, :]
            wt = _weights(d, c, negm, cols, pc, thr, coef, slots, W, SOFT, METRIC, EPS8)
            wt = tl.where(rmask[:, None] & cmask[None, :], wt, 0.0)
            acc += tl.dot(tl.trans(wt), xb, input_precision=PREC, out_dtype=xx.dtype)
            wsum += tl.sum(wt, 0)
        yb = tl.load(
            y_ptr + cols[:, None].to(tl.int64) * D + rd[None, :],
            mask=cmask[:, None] & (rd[None, :] < D),
            other=0.0,
        ).to(acc.dtype)
        if METRIC == 2:
            gy = acc
        else:
            gy = yb * wsum[:, None] - acc
        tl.store(
            gy_ptr + cols[:, None].to(tl.int64) * D + rd[None, :],
            gy,
            mask=cmask[:, None] & (rd[None, :] < D),
        )

    # Triton's interpreter resolves the names a kernel calls in its module's globals, not in
    # this closure: the helpers (and ``tl``) are published there too.
    globals().update(
        tl=tl,
        _tile=_tile,
        _anchors=_anchors,
        _positive_distances=_positive_distances,
        _weights=_weights,
    )
    return SimpleNamespace(
        triton=triton,
        ranked=ranked_kernel,
        semi_hard=semi_hard_kernel,
        batch_all_fwd=batch_all_fwd_kernel,
        batch_all_dx=batch_all_dx_kernel,
        batch_all_dy=batch_all_dy_kernel,
    )
