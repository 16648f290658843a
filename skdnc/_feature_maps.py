"""Random feature maps of Deep RFM: draw, apply in row blocks.

``"relu"``: :math:`\\Phi(x) = \\mathrm{ReLU}(W x)`; ``"cos"``: random Fourier
features :math:`\\sqrt{2/D} \\cos(W x + b)`. Their kernels are the closed forms of
:mod:`skdnc._theory`.
"""

import math

import torch

from skdnc._backend import iter_row_blocks

FEATURE_MAPS = ("relu", "cos")
#: ``width=None`` of Deep RFM: 1024 for both maps. The paper's cos width is 4,096
#: (``python -m skdnc --preset paper``); at 4,096 the AGOP of each layer (a 4,096 x
#: 4,096 matrix and its square root) costs about 100 times that at 1,024.
DEFAULT_WIDTH = {"relu": 1024, "cos": 1024}


def draw_feature_map(kind, n_features_in, width, *, gamma=0.05, generator=None):
    """Draw the random weights of a feature map, in float64 on the CPU.

    Parameters
    ----------
    kind : {"relu", "cos"}
        ``"relu"``: :math:`W_{ij} \\sim \\mathcal N(0, 2/D)` and no offset.
        ``"cos"``: :math:`W_{ij} \\sim \\mathrm{Cauchy}(0, \\gamma)` and offsets
        :math:`b_i \\sim U[0, 2\\pi)`.
    n_features_in : int
        Input dimension :math:`d`.
    width : int
        Number of features :math:`D`.
    gamma : float, default=0.05
        Scale :math:`\\gamma` of the Cauchy frequencies (``"cos"`` only).
    generator : torch.Generator, optional
        Source of the draws; a fixed seed when omitted.

    Returns
    -------
    W : torch.Tensor of shape (width, n_features_in)
    b : torch.Tensor of shape (width,) or None
        ``None`` for ``"relu"``.
    """
    if kind not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}; got {kind!r}.")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    shape = (int(width), int(n_features_in))
    if kind == "relu":
        W = torch.randn(shape, generator=generator, dtype=torch.float64)
        return W.mul_(math.sqrt(2.0 / width)), None
    W = torch.empty(shape, dtype=torch.float64).cauchy_(
        0.0, float(gamma), generator=generator
    )
    b = torch.rand(int(width), generator=generator, dtype=torch.float64)
    return W, b.mul_(2 * math.pi)


def apply_feature_map(X, W, b, kind, *, out=None, block_rows=None):
    """Random features :math:`\\Phi(x)` of the rows of ``X``, in row blocks.

    ``"relu"``: :math:`\\Phi(x) = \\mathrm{ReLU}(W x)`. With
    :math:`W_{ij} \\sim \\mathcal N(0, 2/D)`,
    :math:`\\mathbb E\\, \\Phi(x)^\\top \\Phi(z) = \\frac{\\|x\\| \\|z\\|}{\\pi}
    (\\sin\\theta + (\\pi - \\theta)\\cos\\theta)` (Proposition A.1).

    ``"cos"``: :math:`\\Phi(x) = \\sqrt{2/D}\\, \\cos(W x + b)`, random Fourier
    features of the :math:`\\ell_1`-Laplace kernel:
    :math:`\\mathbb E\\, \\Phi(x)^\\top \\Phi(z) = \\exp(-\\gamma \\|x - z\\|_1)`,
    because a Cauchy(0, :math:`\\gamma`) variable has characteristic function
    :math:`e^{-\\gamma |t|}`.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    W : torch.Tensor of shape (D, d)
    b : torch.Tensor of shape (D,) or None
    kind : {"relu", "cos"}
    out : torch.Tensor of shape (n, D), optional
        Where to write the result.
    block_rows : int, optional
        Rows of ``X`` per block; default all at once.

    Returns
    -------
    Phi : torch.Tensor of shape (n, D)
    """
    n, D = X.shape[0], W.shape[0]
    if out is None:
        out = X.new_empty(n, D)
    scale = math.sqrt(2.0 / D)
    for rows in iter_row_blocks(n, block_rows or max(n, 1)):
        Z = torch.matmul(X[rows], W.T, out=out[rows])
        if kind == "relu":
            Z.clamp_(min=0.0)
        else:
            Z.add_(b).cos_().mul_(scale)
    return out
