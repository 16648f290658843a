"""The AGOP of a network with respect to a layer's input, and the NFA correlation.

For a weight layer :math:`z = W_l h_l + b` (an ``nn.Linear``, or an ``nn.Conv2d``
acting on patches) followed by :math:`h_{l+1} = \\sigma(\\ldots z)` in a network
:math:`f: x \\mapsto \\mathbb R^K`, with :math:`\\Phi(X)` the layer's input over
the data and :math:`W_l = U_l S_l V_l^\\top`, the probes measure

* the AGOP of the network output with respect to the layer's input,
  :math:`\\mathrm{AGOP}_l = \\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}`,
  :math:`J_{ic} = \\partial f_c(x_i) / \\partial h_l`. With :math:`g_{ic} =
  \\partial f_c / \\partial z` (the gradient at the pre-activation),
  :math:`J_{ic} = g_{ic}^\\top W_l`, so :math:`\\mathrm{AGOP}_l = W_l^\\top G_l W_l`
  with the width-by-width :math:`G_l = \\frac1n \\sum_{i,c} g_{ic} g_{ic}^\\top`:
  the *pre-activation trick* (``dmbeaglehole/centered_NFA``), one backward pass per
  output instead of a Jacobian with respect to every input coordinate;
* for a convolution with weight :math:`(c_{out}, c_{in}, q, r)`, :math:`W_l` is
  the filter matrix :math:`c_{out} \\times c_{in} q r` and every patch of every
  input is its own variable: the *patch AGOP* sums the outer products over
  outputs and patch positions and averages over samples (Beaglehole et al.,
  "Mechanism of feature learning in convolutional neural networks", 2023), and
  :math:`G_l` sums :math:`g g^\\top` over positions as well. A ``Linear`` applied
  to token sequences ``(n, T, d)`` is treated the same way, tokens as positions;
* the Neural Feature Ansatz (NFA) correlation between the neural feature matrix
  :math:`W_l^\\top W_l` and :math:`\\mathrm{AGOP}_l^{1/2}` (and
  :math:`\\mathrm{AGOP}_l`);

The probes take the AGOP from the gradients their capture sweep accumulates
(:mod:`skdnc.nn._capture`); ``method="jacobian"`` of :func:`layer_agops` is an
independent reference from per-sample Jacobians.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from skdnc._backend import to_tensor
from skdnc._linalg import psd_eigh, psd_power, rescale
from skdnc.nn._capture import (
    _check_options,
    _gradient_sweep,
    _setup,
    _unlabelled,
    _validate_probe_params,
)
from skdnc.nn._common import as_input, eval_mode, model_dtype, run_model
from skdnc.nn._detect import weight_matrix

__all__ = ["layer_agops", "nfa_correlation"]


# -- NFA correlation ---------------------------------------------------------------
def nfa_correlation(A, B, *, centered=True):
    """Correlation of the entries of two matrices, as the NFA is measured.

    ``centered=True`` (the paper's ``mat_cov``): subtract each matrix's scalar mean
    entry, then take the cosine of the flattened matrices, i.e. the Pearson
    correlation of the entries. ``centered=False``: the plain cosine
    :math:`\\langle A, B\\rangle_F / (\\|A\\|_F \\|B\\|_F)`. Computed in float64.

    Parameters
    ----------
    A, B : array-like or torch.Tensor of the same shape
    centered : bool, default=True

    Returns
    -------
    corr : float
        In ``[-1, 1]``; NaN when a (centred) matrix is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.nn import nfa_correlation
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> round(nfa_correlation(A, 5 * A + 7), 12), round(nfa_correlation(A, -A), 12)
    (1.0, -1.0)
    """
    a = to_tensor(A, "cpu", torch.float64).reshape(-1)
    b = to_tensor(B, "cpu", torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"A and B must have the same shape; got {tuple(np.shape(A))} and "
            f"{tuple(np.shape(B))}."
        )
    # The correlation is scale-free: each side in units of its largest entry keeps
    # the sums and products below from overflowing or underflowing at any scale.
    (_, a), (_, b) = rescale(a), rescale(b)
    if centered:
        a = a - a.mean()
        b = b - b.mean()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if denom == 0:
        return float("nan")
    return float((a @ b) / denom)


def _gram_correlation(P, Q, *, centered=True):
    """:func:`nfa_correlation` of ``P'P`` and ``Q'Q`` without forming them.

    With ``A = P'P``, ``B = Q'Q`` (``d x d``): ``<A, B> = ||P Q'||_F^2``, the sum of
    the entries of ``A`` is ``||P 1||^2``, and ``||A||_F = ||P P'||_F``; all cost
    ``r^2 d`` for ``r``-row factors, so a 8192-wide input layer needs no
    ``8192 x 8192`` matrix.
    """
    d = P.shape[1]
    (_, P), (_, Q) = rescale(P), rescale(Q)  # scale-free, as in nfa_correlation
    inner = torch.linalg.matrix_norm(P @ Q.T) ** 2
    nA = torch.linalg.matrix_norm(P @ P.T) ** 2
    nB = torch.linalg.matrix_norm(Q @ Q.T) ** 2
    if centered:
        sA = torch.linalg.vector_norm(P.sum(dim=1)) ** 2
        sB = torch.linalg.vector_norm(Q.sum(dim=1)) ** 2
        inner = inner - sA * sB / d**2
        nA = nA - sA**2 / d**2
        nB = nB - sB**2 / d**2
    denom = torch.sqrt(nA.clamp(min=0) * nB.clamp(min=0))
    if denom == 0:
        return float("nan")
    return float((inner / denom).clamp(-1.0, 1.0))


# -- AGOP ------------------------------------------------------------------------------
@_validate_probe_params
def layer_agops(
    model,
    X,
    y=None,
    *,
    layers=None,
    method="preactivation",
    gradient="layer",
    batch_size=256,
    device=None,
    model_output=None,
):
    """AGOP of the network output with respect to each probed layer's input.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (its mode is restored afterwards).
    X : array-like, torch.Tensor, DataLoader or iterable of batches
        Inputs in the model's input shape, or batches of inputs or of ``(x, y)``
        pairs (labels are not used), accumulated one batch at a time.
    y : None
        Not used; accepted so that ``(X, y)`` arrays can be passed as elsewhere.
    layers : str, module or list, default=None
        See :func:`find_layers`.
    method : {"preactivation", "jacobian"}, default="preactivation"
        ``"preactivation"``: from the gradients at the weight layer's output
        (:math:`W_l^\\top G_l W_l`, one backward pass per output) or, with
        ``gradient="total"``, at the perturbed block input. ``"jacobian"``: per
        sample Jacobians of the output with ``torch.func.vmap(jacrev(...))`` of a
        forward pass in which the layer's input (a convolution's unfolded patches,
        or the block's input for ``gradient="total"``) is substituted, an
        independent reference.
    gradient : {"layer", "total"}, default="layer"
        ``"layer"``: the gradient through the weight layer only, i.e. with respect
        to the weight layer's input as its own variable (for a convolution, each
        patch). ``"total"``: the total gradient with respect to the input of the
        named block, through every path inside it (a residual connection
        ``h + relu(fc(h))`` included) and after it; the AGOP is then formed
        directly from these gradients. Both are the same for a plain MLP layer.
    batch_size : int, default=256
        Rows per batch for array input.
    device : str or torch.device, default=None
        ``None``: where the model's parameters are.
    model_output : int, str or callable, default=None
        Selects the scores from a model that returns a tuple or dict.

    Returns
    -------
    agops : list of torch.Tensor of shape (d_l, d_l), float64, on the CPU
        :math:`\\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}` (summed over patch
        positions or tokens as well); ``d_l = c_in q r`` for a convolution.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skdnc.nn import layer_agops
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(4 * 6 * 6, 3)).double()
    >>> X = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    >>> [tuple(A.shape) for A in layer_agops(net, X)]
    [(9, 9)]
    """
    _check_options("flatten", gradient)
    device, batches, _, found = _setup(
        model, *_unlabelled(X, y), batch_size, device, layers
    )
    if method == "preactivation":
        G = _gradient_sweep(
            model,
            batches,
            found,
            device=device,
            gradient=gradient,
            model_output=model_output,
        )
        if gradient == "total":
            return G
        agops = []
        for layer, Gl in zip(found, G):
            W = weight_matrix(layer.linear)
            agops.append(W.T @ Gl @ W)
        return agops
    if method != "jacobian":
        raise ValueError(
            f"method must be 'preactivation' or 'jacobian'; got {method!r}."
        )
    return _jacobian_agops(
        model,
        batches,
        found,
        device=device,
        gradient=gradient,
        model_output=model_output,
    )


def _patches(conv, h):
    """Unfolded patches ``(n, c_in q r, positions)`` of a convolution's input."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(
                "method='jacobian' needs explicit convolution padding; got "
                f"padding={padding!r}."
            )
        padding = 0
    if conv.padding_mode != "zeros":
        raise ValueError(
            "method='jacobian' supports zero padding only; got padding_mode="
            f"{conv.padding_mode!r}."
        )
    return F.unfold(
        h, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )


def _jacobian_agops(model, batches, found, *, device, gradient, model_output):
    """AGOPs from per-sample Jacobians with respect to the substituted variable."""
    dtype = model_dtype(model)
    acc = [None] * len(found)
    count = 0
    with eval_mode(model):
        for xb, _ in batches():
            xb = as_input(xb, device, dtype)
            if not isinstance(xb, torch.Tensor):
                raise ValueError(
                    "method='jacobian' takes one input tensor per batch; the model "
                    "takes a tuple or dict of inputs: use method='preactivation'."
                )
            count += len(xb)
            for index, layer in enumerate(found):
                target = layer.block if gradient == "total" else layer.linear
                phi = _first_input(model, target, xb, model_output)
                if gradient == "layer" and layer.kind == "conv2d":
                    J = _patch_jacobian(model, layer.linear, xb, phi, model_output)
                    rows = J.movedim(-1, 1).reshape(-1, J.shape[2])
                else:
                    if gradient == "total" and phi.ndim not in (2, 3):
                        raise ValueError(
                            "gradient='total' needs a block input of shape (n, d) "
                            f"or (n, tokens, d); got {tuple(phi.shape)}."
                        )
                    J = _input_jacobian(model, target, xb, phi, model_output)
                    rows = J.reshape(-1, phi.shape[-1])
                rows = rows.detach().to("cpu", torch.float64)
                gg = rows.T @ rows
                acc[index] = gg if acc[index] is None else acc[index] + gg
    return [a / count for a in acc]


def _first_input(model, module, xb, model_output):
    """The input of ``module`` at its first call in ``model(xb)``."""
    seen = []

    def hook(mod, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            run_model(model, xb, model_output)
    finally:
        handle.remove()
    return seen[0]


def _once(fn):
    """Apply ``fn`` at the first call of a module in a forward pass only."""
    state = {"done": False}

    def wrapped(*args):
        if state["done"]:
            return None
        state["done"] = True
        return fn(*args)

    return wrapped


def _input_jacobian(model, module, X, Phi, model_output):
    """Per-sample Jacobians ``d model(x_i) / d phi_i`` with ``phi_i`` substituted
    for the input of ``module``, shape ``(n, K, *phi.shape[1:])``."""

    def single(phi, x):
        def substitute(mod, args):
            return (phi.unsqueeze(0), *args[1:])

        handle = module.register_forward_pre_hook(_once(substitute))
        try:
            return run_model(model, x.unsqueeze(0), model_output).squeeze(0)
        finally:
            handle.remove()

    return vmap(jacrev(single), in_dims=(0, 0))(Phi, X)


def _patch_jacobian(model, conv, X, h, model_output):
    """Per-sample Jacobians with respect to a convolution's unfolded patches: the
    convolution's output is replaced by ``W_mat @ patches + b``, shape
    ``(n, K, c_in q r, positions)``."""
    P = _patches(conv, h)
    W = conv.weight.reshape(conv.out_channels, -1)

    def single(p, x):
        def substitute(mod, args, out):
            z = W @ p
            if mod.bias is not None:
                z = z + mod.bias[:, None]
            return z.reshape(1, *out.shape[1:])

        handle = conv.register_forward_hook(_once(substitute))
        try:
            return run_model(model, x.unsqueeze(0), model_output).squeeze(0)
        finally:
            handle.remove()

    return vmap(jacrev(single), in_dims=(0, 0))(P, X)


def _sqrt_factor(B):
    """A factor ``F`` with ``F'F = (B'B)^{1/2}``, from the smaller Gram matrix.

    With ``B = P Sigma Q'``: ``F = Sigma^{1/2} Q' = Sigma^{-1/2} P' B`` from the
    eigendecomposition ``B B' = P Sigma^2 P'`` (``r x r`` for ``r`` rows), or
    ``F = (B'B)^{1/4}`` when ``B`` has more rows than columns.
    """
    if B.shape[0] > B.shape[1]:
        return psd_power(B.T @ B, 0.25)
    evals, evecs = psd_eigh(B @ B.T)
    keep = evals > max(float(evals.max()), 0.0) * 1e-15
    if not keep.any():
        return torch.zeros_like(B)
    return (evecs[:, keep].T @ B) / evals[keep].pow(0.25)[:, None]
