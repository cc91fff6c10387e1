"""The arithmetic of :func:`fxprune.reconstruct`: streamed moments, ridge least squares, folding into a layer.

A consumer reads a site as rows: a linear layer one row per sample (and leading position),
a 2-d convolution one row per output position holding the patch it multiplies with its
weight (``F.unfold`` with the layer's kernel, stride, padding and dilation: column
``c * k + j`` is channel ``c`` at kernel offset ``j``, the order of ``weight.view(out, -1)``).
Other convolutions read one row per position and the fit applies at every kernel offset.

    z (kept columns, now)  and  t (fitted columns, before the cut)  ->  JointMoments (scaled by the masks at the end)
    B = (Cov(t, z) + lam P) (Cov z + lam I)^-1,   c = mean t - B mean z
    W'[:, kept] = W[:, fitted] B  (replace)  or  W[:, kept] + W[:, fitted] B;   bias += W[:, fitted] c
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_ROWS_PER_CHUNK = 1 << 22  # elements of one chunk of rows: bounds the memory of an unfolded batch


class JointMoments:
    """Streaming ``count`` and sums of ``z``, ``t``, ``t^2``, ``z z^T`` and ``t z^T`` (float64), over samples.

    Samples come as rows ``[n, size]`` or as columns of ``[n, size, positions]`` (every position a
    sample, as an unfolded batch comes; it is copied into rows once, so each product is one
    matrix product over all its samples, not one per image summed after). Each batch is
    shifted by the first batch's means before its products are formed (in its own dtype,
    then summed in float64), so the covariances do not lose precision to large means.

    Example:
        >>> m = JointMoments(1, 1)
        >>> m.add(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [6.0]]))
        >>> m.covariances()[1].tolist()   # Cov(t, z)
        [[2.0]]
    """

    def __init__(self, z_size: int, t_size: int, device=None):
        def zeros(*shape):
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.count = 0
        self.z, self.t, self.tt = zeros(z_size), zeros(t_size), zeros(t_size)
        self.zz, self.tz = zeros(z_size, z_size), zeros(t_size, z_size)
        self.shift_z = self.shift_t = None

    def add(self, z: torch.Tensor, t: torch.Tensor) -> None:
        if z.dim() == 3:  # [n, size, positions] -> [n * positions, size]
            z, t = (a.transpose(1, 2).reshape(-1, a.shape[1]) for a in (z, t))
        if self.shift_z is None:
            self.shift_z, self.shift_t = z.mean(0).detach(), t.mean(0).detach()
        z, t = z - self.shift_z.to(z.dtype), t - self.shift_t.to(t.dtype)
        self.count += z.shape[0]
        self.z += z.sum(0).to(torch.float64)  # a batch's sums in its dtype (shifted: small), then float64
        self.t += t.sum(0).to(torch.float64)
        self.tt += (t * t).sum(0).to(torch.float64)
        self.zz += (z.T @ z).to(torch.float64)
        self.tz += (t.T @ z).to(torch.float64)

    def means(self, z_scale=1.0, t_scale=1.0) -> tuple:
        """The means of ``z * z_scale`` and ``t * t_scale`` (per-column scales)."""
        n = max(1, self.count)
        shift_z = 0.0 if self.shift_z is None else self.shift_z.to(torch.float64)
        shift_t = 0.0 if self.shift_t is None else self.shift_t.to(torch.float64)
        return (shift_z + self.z / n) * z_scale, (shift_t + self.t / n) * t_scale

    def covariances(self, z_scale=None, t_scale=None) -> tuple:
        """``Cov z``, ``Cov(t, z)`` and the variances of ``t``, of ``z * z_scale`` and ``t * t_scale``."""
        n = max(1, self.count)
        mz, mt = self.z / n, self.t / n  # of the shifted samples: covariances do not move with the shift
        czz, ctz, var_t = self.zz / n - torch.outer(mz, mz), self.tz / n - torch.outer(mt, mz), self.tt / n - mt * mt
        if z_scale is not None:
            czz, ctz = czz * z_scale[:, None] * z_scale[None, :], ctz * z_scale[None, :]
        if t_scale is not None:
            ctz, var_t = ctz * t_scale[:, None], var_t * t_scale * t_scale
        return czz, ctz, var_t

    @property
    def nbytes(self) -> int:
        return sum(x.numel() for x in (self.z, self.t, self.tt, self.zz, self.tz)) * 8


class Reader:
    """How a consumer reads the channels of a site: as rows (see the module), and which columns hold a channel.

    Args:
        layer: the consumer (a convolution or a linear layer).
        dim: the site's channel dimension.
        patches: read a 2-d convolution's patches; False: one row per position (the fit is
            then the same at every kernel offset).
    """

    def __init__(self, layer: nn.Module, dim: int, patches: bool = True):
        self.layer, self.dim = layer, dim
        conv2d = isinstance(layer, nn.Conv2d) and not isinstance(layer.padding, str) and layer.padding_mode == "zeros"
        self.unfold = patches and conv2d and layer.weight[0, 0].numel() > 1
        self.width = layer.weight[0, 0].numel() if self.unfold else 1  # columns per channel

    def rows(self, x: torch.Tensor):
        """What the layer reads, as ``[images, columns, positions]`` chunks of bounded size."""
        x = x.detach()
        if not self.unfold:
            flat = x.movedim(self.dim, 1)
            flat = flat.reshape(flat.shape[0], flat.shape[1], -1)
            yield from flat.split(max(1, _ROWS_PER_CHUNK // flat[0].numel()))
            return
        m = self.layer
        per_image = x.shape[1] * self.width * max(1, x.shape[2] * x.shape[3] // (m.stride[0] * m.stride[1]))
        for part in x.split(max(1, _ROWS_PER_CHUNK // per_image)):
            yield F.unfold(part, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)

    def columns(self, channels: torch.Tensor) -> torch.Tensor:
        """The row columns holding ``channels`` (channel-major, as ``weight.view(out, -1)``)."""
        return (channels[:, None] * self.width + torch.arange(self.width, device=channels.device)).flatten()

    def per_column(self, factor: torch.Tensor) -> torch.Tensor:
        """A per-channel factor repeated over each channel's columns."""
        return factor.repeat_interleave(self.width)


def ridge_fit(moments: JointMoments, ridge: float, prior: torch.Tensor, z_scale=None, t_scale=None) -> tuple:
    """``B`` and ``c`` minimising ``E|t - B z - c|^2 + lam |B - prior|^2`` (``lam``: ``ridge`` times the mean
    variance of ``z``) for ``z`` and ``t`` scaled per column, and the share of ``t``'s variance left unexplained."""
    czz, ctz, var_t = moments.covariances(z_scale, t_scale)
    mean_z, mean_t = moments.means(1.0 if z_scale is None else z_scale, 1.0 if t_scale is None else t_scale)
    lam = ridge * float(czz.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(czz.shape[0], dtype=torch.float64, device=czz.device)
    coef = torch.linalg.solve(czz + lam * eye, (ctz + lam * prior).T).T
    intercept = mean_t - coef @ mean_z
    left = var_t.sum() - 2 * (coef * ctz).sum() + (coef @ czz * coef).sum()
    total = float(var_t.sum())
    return coef, intercept, float(left) / total if total > 0 else 0.0


@torch.no_grad()
def fold_fit(layer: nn.Module, reader: Reader, kept_cols, fitted_cols, coef, intercept, replace: bool,
             norm: Optional[nn.Module]) -> Optional[str]:
    """Fold ``t ~ B z + c`` into ``layer`` (see the module); the intercept into its bias, else into ``norm``'s
    running mean (a BatchNorm reading the layer alone). Returns a note where the intercept had nowhere to go."""
    w = layer.weight.detach().to(torch.float64)
    out, channels = w.shape[0], w.shape[1]
    cols = w.reshape(out, channels * reader.width, -1)  # patches: [out, C*k, 1]; rows: [out, C, k]
    fitted = cols[:, fitted_cols.to(w.device)]
    mixed = torch.einsum("otr,tk->okr", fitted, coef.to(w.device))
    kept_cols = kept_cols.to(w.device)
    cols[:, kept_cols] = mixed if replace else cols[:, kept_cols] + mixed
    layer.weight.copy_(cols.reshape(w.shape).to(layer.weight.dtype))
    shift = torch.einsum("otr,t->o", fitted, intercept.to(w.device))
    if getattr(layer, "bias", None) is not None:
        layer.bias.add_(shift.to(layer.bias.dtype))
        return None
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        norm.running_mean.sub_(shift.to(norm.running_mean.dtype))
        return None
    return "intercept dropped: no bias, and no BatchNorm reading the layer alone"
