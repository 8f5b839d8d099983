"""Per-image reconstruction metrics: MSE, PSNR and windowed SSIM.

All functions take two float tensors of shape ``N x C x H x W`` (values nominally in ``[0, 1]``,
``C`` = 1 or 3) and return a tensor of shape ``[N]`` with one value per image pair. They are
batched over ``N`` (no Python loop over images) and differentiable, so they can also be used as
losses.

SSIM follows :func:`skimage.metrics.structural_similarity` with its defaults
(``win_size=7`` uniform window, ``K1=0.01``, ``K2=0.03``, sample covariance, the border of
``(win_size - 1) // 2`` pixels cropped before averaging, and the mean over channels for colour
images), i.e. it agrees with ``structural_similarity(x, y, data_range=1.0, channel_axis=-1)``
to floating-point precision. Computation is done in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mse", "psnr", "ssim", "PSNR_CAP_DB", "SSIM_WIN_SIZE"]

#: PSNR reported for identical images (MSE == 0), and the upper bound of every PSNR value.
PSNR_CAP_DB = 100.0
#: Side of the uniform SSIM window (scikit-image's default).
SSIM_WIN_SIZE = 7
_K1 = 0.01
_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("metrics expect torch tensors of shape N x C x H x W")
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(
            f"metrics expect 4-d tensors N x C x H x W; got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def _out_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    dt = torch.promote_types(a.dtype, b.dtype)
    return dt if dt.is_floating_point else torch.get_default_dtype()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: ``mean((a - b) ** 2)`` over C, H, W. Returns ``[N]``."""
    _check_pair(a, b)
    dt = _out_dtype(a, b)
    d = a.to(dt) - b.to(dt)
    return d.pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 * log10(data_range**2 / mse)``, in dB.

    Identical images (MSE == 0) would give +inf; the value is capped at :data:`PSNR_CAP_DB`
    (100 dB) so that results stay finite and JSON-serialisable. Returns ``[N]``.
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0; got {data_range!r}")
    m = mse(a, b).to(torch.float64)
    # mse == 0 -> log10(inf) = inf -> clamped to the cap.
    val = 10.0 * torch.log10((float(data_range) ** 2) / m)
    val = torch.clamp(val, max=PSNR_CAP_DB)
    return val.to(_out_dtype(a, b))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image, matching scikit-image's defaults. Returns ``[N]``.

    Equivalent to ``skimage.metrics.structural_similarity(x, y, data_range=data_range,
    channel_axis=-1)`` applied to each ``H x W x C`` image (for ``C == 1`` the channel axis is a
    single channel, which equals the grayscale result). Needs ``H, W >= 7``.
    """
    _check_pair(a, b)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0; got {data_range!r}")
    n, c, h, w = a.shape
    win = SSIM_WIN_SIZE
    if h < win or w < win:
        raise ValueError(f"ssim needs images of at least {win}x{win} pixels; got {h}x{w}")
    out_dt = _out_dtype(a, b)
    x = a.to(torch.float64).reshape(n * c, 1, h, w)
    y = b.to(torch.float64).reshape(n * c, 1, h, w)

    # A valid (unpadded) uniform mean over win x win windows is exactly skimage's
    # uniform_filter output with its (win-1)//2 border cropped, so no padding is needed.
    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, kernel_size=win, stride=1)

    np_ = win * win
    cov_norm = np_ / (np_ - 1.0)  # sample covariance (use_sample_covariance=True)
    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)

    r = float(data_range)
    c1 = (_K1 * r) ** 2
    c2 = (_K2 * r) ** 2
    a1 = 2.0 * ux * uy + c1
    a2 = 2.0 * vxy + c2
    b1 = ux * ux + uy * uy + c1
    b2 = vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    # mean over the cropped map per channel, then over channels (equal sizes -> one mean).
    return s.reshape(n, -1).mean(dim=1).to(out_dt)
