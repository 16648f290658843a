"""Per-layer probes of a network: AGOP, the Neural Feature Ansatz, and NC1 by SVD stage.

For a hidden layer :math:`h_{l+1} = \\sigma(W_l h_l)` of a network
:math:`f: x \\mapsto \\mathbb R^K`, with :math:`\\Phi(X)` the layer's input
:math:`h_l` over the data and :math:`W_l = U_l S_l V_l^\\top`, the probes measure

* the AGOP of the network output with respect to the layer's input,
  :math:`\\mathrm{AGOP}_l = \\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}`,
  :math:`J_{ic} = \\partial f_c(x_i) / \\partial h_l`. With :math:`g_{ic} =
  \\partial f_c / \\partial (W_l h_l)` (the gradient at the pre-activation),
  :math:`J_{ic} = g_{ic}^\\top W_l`, so :math:`\\mathrm{AGOP}_l = W_l^\\top G_l W_l`
  with the width-by-width :math:`G_l = \\frac1n \\sum_{i,c} g_{ic} g_{ic}^\\top`:
  the *pre-activation trick* (``dmbeaglehole/centered_NFA``), one backward pass per
  output instead of a Jacobian with respect to every input coordinate;
* the Neural Feature Ansatz (NFA) correlation between the neural feature matrix
  :math:`W_l^\\top W_l` and :math:`\\mathrm{AGOP}_l^{1/2}` (and
  :math:`\\mathrm{AGOP}_l`);
* NC1 and NC2 of three stages: the input :math:`\\Phi(X)`, the right singular
  structure :math:`S_l V_l^\\top \\Phi(X)` and the output
  :math:`\\sigma(U_l S_l V_l^\\top \\Phi(X))`. Because :math:`U_l` is orthogonal,
  :math:`S_l V_l^\\top \\Phi(X)` has the Gram matrix, hence the NC1 and NC2, of the
  pre-activation :math:`W_l \\Phi(X)`.

The network can be any :class:`torch.nn.Module`; the probed layers are found from
``model.head_layers`` (the models of :mod:`skdnc.nn._models`), from ``Linear``
modules followed by an activation inside a ``Sequential``, or named by the user.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from skdnc._backend import resolve_device
from skdnc._linalg import psd_power
from skdnc.metrics import nc1_score, nc2_score

__all__ = [
    "NetworkProbe",
    "find_layers",
    "layer_agops",
    "nfa_correlation",
    "probe_network",
]

#: Names of the three representations of a probed layer.
STAGES = ("input", "right", "output")

_ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)


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
    a = _as_float64(A).reshape(-1)
    b = _as_float64(B).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"A and B must have the same shape; got {tuple(A.shape)} and "
            f"{tuple(B.shape)}."
        )
    if centered:
        a = a - a.mean()
        b = b - b.mean()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if denom == 0:
        return float("nan")
    return float((a @ b) / denom)


def _as_float64(A):
    if isinstance(A, torch.Tensor):
        return A.detach().to(device="cpu", dtype=torch.float64)
    return torch.tensor(np.asarray(A), dtype=torch.float64)


def _gram_correlation(P, Q, *, centered=True):
    """:func:`nfa_correlation` of ``P'P`` and ``Q'Q`` without forming them.

    With ``A = P'P``, ``B = Q'Q`` (``d x d``): ``<A, B> = ||P Q'||_F^2``, the sum of
    the entries of ``A`` is ``||P 1||^2``, and ``||A||_F = ||P P'||_F``; all cost
    ``r^2 d`` for ``r``-row factors, so a 8192-wide input layer needs no
    ``8192 x 8192`` matrix.
    """
    d = P.shape[1]
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


# -- finding the layers ------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    linear: nn.Linear
    output: nn.Module


def find_layers(model, layers=None):
    """The MLP layers of ``model`` that the probes measure.

    Parameters
    ----------
    model : torch.nn.Module
    layers : list, default=None
        ``None``: the blocks of ``model.head_layers`` when the model has them (the
        models of :mod:`skdnc.nn`), otherwise every ``nn.Linear`` followed by an
        activation module (ReLU, GELU, ...) inside an ``nn.Sequential``, in the
        order of ``model.named_modules()``. Otherwise a list whose items are

        * a module name (as in ``model.named_modules()``) or a module: a
          ``nn.Linear`` (the layer's output is then its pre-activation), or a block
          such as ``Sequential(Linear, ReLU)`` whose first ``nn.Linear`` holds
          :math:`W_l` and whose output is the layer's output;
        * a pair ``(linear, activation)`` of names or modules.

    Returns
    -------
    layers : list of _Layer
        ``name``, ``linear`` (the ``nn.Linear`` whose input is :math:`\\Phi(X)`)
        and ``output`` (the module whose output is the layer's output).
    """
    names = {id(m): name for name, m in model.named_modules()}

    def resolve(item):
        if isinstance(item, str):
            try:
                return item, model.get_submodule(item)
            except AttributeError as exc:
                raise ValueError(f"model has no submodule named {item!r}.") from exc
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"{item!r} is not a submodule of the model.")
            return names[id(item)], item
        raise TypeError(
            "layers must hold module names, modules or (linear, activation) pairs; "
            f"got {item!r}."
        )

    found = []
    if layers is None:
        blocks = getattr(model, "head_layers", None)
        if blocks is not None:
            layers = list(blocks)
        else:
            for name, module in model.named_modules():
                if not isinstance(module, nn.Sequential):
                    continue
                children = list(module.named_children())
                for (n1, m1), (_, m2) in zip(children, children[1:]):
                    if isinstance(m1, nn.Linear) and isinstance(m2, _ACTIVATIONS):
                        full = f"{name}.{n1}" if name else n1
                        found.append(_Layer(full, m1, m2))
            if not found:
                raise ValueError(
                    "No MLP layers found: the model has no head_layers and no "
                    "nn.Linear followed by an activation inside an nn.Sequential. "
                    "Name them with layers=[...]."
                )
            return found
    for item in layers:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"A layer pair must be (linear, activation): {item}.")
            name, linear = resolve(item[0])
            _, output = resolve(item[1])
        else:
            name, output = resolve(item)
            linear = next(
                (m for m in output.modules() if isinstance(m, nn.Linear)), None
            )
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"Layer {name!r} holds no nn.Linear.")
        found.append(_Layer(name, linear, output))
    if not found:
        raise ValueError("layers must name at least one layer.")
    return found


# -- capturing layer inputs, outputs and pre-activation gradients --------------------
class _Capture:
    """Hooks that record each layer's input and output, and perturb pre-activations.

    A zero perturbation :math:`p_l` (requiring grad) is added to each ``Linear``'s
    output when ``perturb`` is set; :math:`\\partial f_c / \\partial p_l` is then the
    pre-activation gradient :math:`g`. Outputs are matched to layers in the order
    the ``Linear`` modules ran, so an activation module shared by several layers is
    handled.
    """

    def __init__(self, found, perturb):
        self.found = found
        self.perturb = perturb
        self.handles = []

    def __enter__(self):
        self.reset()
        for index, layer in enumerate(self.found):
            self.handles.append(
                layer.linear.register_forward_pre_hook(self._pre_hook(index))
            )
            self.handles.append(
                layer.linear.register_forward_hook(self._linear_hook(index))
            )
        for module in {id(l.output): l.output for l in self.found}.values():
            self.handles.append(module.register_forward_hook(self._output_hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def reset(self):
        n = len(self.found)
        self.inputs, self.outputs, self.perts = [None] * n, [None] * n, [None] * n
        self.pending = []

    def check(self, captured):
        missing = [l.name for l, c in zip(self.found, captured) if c is None]
        if missing:
            raise ValueError(
                f"Layers {missing} did not run (or their output module did not) "
                "in the model's forward pass."
            )

    def _pre_hook(self, index):
        def hook(module, args):
            if self.inputs[index] is None:
                self.inputs[index] = args[0].detach().clone()

        return hook

    def _linear_hook(self, index):
        def hook(module, args, out):
            if self.perts[index] is not None or self.outputs[index] is not None:
                return None
            self.pending.append(index)
            if self.perturb:
                p = torch.zeros_like(out, requires_grad=True)
                self.perts[index] = p
                return out + p
            return None

        return hook

    def _output_hook(self, module, args, out):
        for k, index in enumerate(self.pending):
            if self.found[index].output is module:
                self.outputs[index] = out.detach().clone()
                del self.pending[k]
                return


def _batches(n, batch_size):
    batch_size = max(1, int(batch_size or n))
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _model_dtype(model):
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _as_input(X, device, dtype):
    if isinstance(X, torch.Tensor):
        return X.detach().to(device=device, dtype=dtype)
    return torch.tensor(np.asarray(X), device=device, dtype=dtype)


def _forward_pass(model, X, found, *, batch_size, device, agop):
    """Run ``model`` on ``X`` in eval mode, capturing what the probes need.

    Returns the per-layer inputs and outputs (CPU, model dtype), the per-layer
    ``G_l`` (float64, averaged over samples, summed over outputs) when ``agop``,
    and the network output. Hooks are removed and ``model.training`` restored
    whatever happens.
    """
    was_training = model.training
    dtype = _model_dtype(model)
    n = len(X)
    inputs = [[] for _ in found]
    outputs = [[] for _ in found]
    G = [None] * len(found)
    logits = []
    try:
        model.eval()
        with _Capture(found, perturb=agop) as cap:
            for rows in _batches(n, batch_size):
                cap.reset()
                xb = _as_input(X[rows], device, dtype)
                if agop:
                    with torch.enable_grad():
                        out = model(xb)
                        cap.check(cap.perts)
                        for c in range(out.shape[1]):
                            grads = torch.autograd.grad(
                                out[:, c].sum(), cap.perts,
                                retain_graph=c < out.shape[1] - 1, allow_unused=True,
                            )  # fmt: skip
                            for index, g in enumerate(grads):
                                if g is None:
                                    continue
                                g = g.detach().to(torch.float64).reshape(len(g), -1)
                                gg = g.T @ g
                                G[index] = gg if G[index] is None else G[index] + gg
                    out = out.detach()
                else:
                    with torch.no_grad():
                        out = model(xb)
                cap.check(cap.outputs)
                for index in range(len(found)):
                    inputs[index].append(cap.inputs[index].cpu())
                    outputs[index].append(cap.outputs[index].cpu())
                logits.append(out.cpu())
    finally:
        model.train(was_training)
    inputs = [torch.cat(parts).flatten(1) for parts in inputs]
    outputs = [torch.cat(parts).flatten(1) for parts in outputs]
    if agop:
        for index, layer in enumerate(found):
            width = layer.linear.out_features
            G[index] = (
                torch.zeros(width, width, dtype=torch.float64, device=device)
                if G[index] is None
                else G[index]
            ).cpu() / n
    return inputs, outputs, G, torch.cat(logits)


# -- AGOP ------------------------------------------------------------------------------
def layer_agops(
    model, X, *, layers=None, method="preactivation", batch_size=256, device=None
):
    """AGOP of the network output with respect to each probed layer's input.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (its mode is restored afterwards).
    X : array-like or torch.Tensor of shape (n_samples, ...)
        Inputs in the model's input shape.
    layers : list, default=None
        See :func:`find_layers`.
    method : {"preactivation", "jacobian"}, default="preactivation"
        ``"preactivation"``: :math:`W_l^\\top G_l W_l` (one backward pass per
        output). ``"jacobian"``: the Jacobian of the output with respect to the
        layer's input, per sample, with ``torch.func.vmap(jacrev(...))`` (as the
        paper's code does), an independent reference.
    batch_size : int, default=256
    device : str or torch.device, default=None
        ``None``: where the model's parameters are.

    Returns
    -------
    agops : list of torch.Tensor of shape (d_l, d_l), float64, on the CPU
        :math:`\\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}`.
    """
    found = find_layers(model, layers)
    device = _model_device(model) if device is None else resolve_device(device)
    if method == "preactivation":
        _, _, G, _ = _forward_pass(
            model, X, found, batch_size=batch_size, device=device, agop=True
        )
        agops = []
        for layer, Gl in zip(found, G):
            W = layer.linear.weight.detach().to("cpu", torch.float64)
            agops.append(W.T @ Gl @ W)
        return agops
    if method != "jacobian":
        raise ValueError(
            f"method must be 'preactivation' or 'jacobian'; got {method!r}."
        )
    inputs, _, _, _ = _forward_pass(
        model, X, found, batch_size=batch_size, device=device, agop=False
    )
    dtype = _model_dtype(model)
    was_training = model.training
    agops = []
    try:
        model.eval()
        for layer, Phi in zip(found, inputs):
            acc = torch.zeros(Phi.shape[1], Phi.shape[1], dtype=torch.float64)
            for rows in _batches(len(Phi), batch_size):
                J = _input_jacobian(
                    model, layer.linear, _as_input(X[rows], device, dtype),
                    Phi[rows].to(device),
                )  # fmt: skip
                J = J.detach().to("cpu", torch.float64).reshape(-1, Phi.shape[1])
                acc += J.T @ J
            agops.append(acc / len(Phi))
    finally:
        model.train(was_training)
    return agops


def _input_jacobian(model, linear, X, Phi):
    """Per-sample Jacobians ``d model(x_i) / d phi_i``, shape (n, K, d)."""
    from torch.func import jacrev, vmap

    def single(phi, x):
        def substitute(module, args):
            return (phi.unsqueeze(0),)

        handle = linear.register_forward_pre_hook(substitute)
        try:
            return model(x.unsqueeze(0)).squeeze(0)
        finally:
            handle.remove()

    return vmap(jacrev(single), in_dims=(0, 0))(Phi, X)


def _model_device(model):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# -- the probe -------------------------------------------------------------------------
@dataclass
class NetworkProbe:
    """Per-layer measurements of a network on labelled data.

    Attributes
    ----------
    layer_names : list of str
        The probed layers, in forward order.
    nc1 : ndarray of shape (n_layers, 3)
        NC1 (:math:`\\mathrm{tr}\\,\\Sigma_W / \\mathrm{tr}\\,\\Sigma_B`) of each
        layer's input :math:`\\Phi(X)`, of :math:`S V^\\top \\Phi(X)` and of the
        layer's output; columns in the order of :data:`STAGES`.
    nc2 : ndarray of shape (n_layers, 3)
        NC2 of the same representations.
    nfa_correlation : ndarray of shape (n_layers,)
        Pearson correlation of the entries of :math:`W_l^\\top W_l` and
        :math:`\\mathrm{AGOP}_l^{1/2}`.
    nfa_correlation_uncentered : ndarray of shape (n_layers,)
        The same without centring (cosine of the matrices).
    nfa_correlation_agop : ndarray of shape (n_layers,)
        Pearson correlation of :math:`W_l^\\top W_l` and :math:`\\mathrm{AGOP}_l`.
    agops : list of ndarray or None
        The AGOPs (float64, averaged over samples), when asked for.
    """

    layer_names: list
    nc1: np.ndarray
    nc2: np.ndarray
    nfa_correlation: np.ndarray
    nfa_correlation_uncentered: np.ndarray
    nfa_correlation_agop: np.ndarray
    agops: list = field(default=None, repr=False)

    @property
    def layer_share(self):
        """Share of each layer's log NC1 reduction owed to :math:`S V^\\top`.

        :math:`\\log(\\mathrm{NC1_{in}}/\\mathrm{NC1_{right}}) /
        \\log(\\mathrm{NC1_{in}}/\\mathrm{NC1_{out}})`; unstable (or NaN) where a
        layer barely changes NC1.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.nc1[:, :1] / self.nc1[:, 1:])
            return logs[:, 0] / logs[:, 1]

    @property
    def right_share(self):
        """Share of the summed log NC1 reduction owed to :math:`S V^\\top`.

        :math:`\\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{right}_l}) /
        \\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{out}_l})` (the statistic of
        the paper's Figure 2, summarised over layers).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.nc1[:, :1] / self.nc1[:, 1:]).sum(axis=0)
            return float(logs[0] / logs[1])

    @property
    def within_share(self):
        """:math:`\\mathrm{tr}\\,\\Sigma_W/\\mathrm{tr}\\,\\Sigma_T` of the last output.

        With :math:`\\Sigma_T = \\Sigma_W + \\Sigma_B` (the paper's Figure 10-12
        captions) this is :math:`\\mathrm{NC1}/(1 + \\mathrm{NC1})`.
        """
        nc1 = float(self.nc1[-1, 2])
        return nc1 / (1.0 + nc1)

    @property
    def between_share(self):
        """:math:`\\mathrm{tr}\\,\\Sigma_B/\\mathrm{tr}\\,\\Sigma_T` of the last
        layer's output."""
        return 1.0 / (1.0 + float(self.nc1[-1, 2]))

    def to_dict(self):
        """JSON-ready dict of every number (without the AGOP matrices)."""
        return {
            "layer_names": list(self.layer_names),
            "stages": list(STAGES),
            "nc1": self.nc1.tolist(),
            "nc2": self.nc2.tolist(),
            "nfa_correlation": self.nfa_correlation.tolist(),
            "nfa_correlation_uncentered": self.nfa_correlation_uncentered.tolist(),
            "nfa_correlation_agop": self.nfa_correlation_agop.tolist(),
            "layer_share": self.layer_share.tolist(),
            "right_share": self.right_share,
            "within_share": self.within_share,
            "between_share": self.between_share,
        }


def probe_network(
    model,
    X,
    y,
    *,
    layers=None,
    batch_size=256,
    device=None,
    return_agops=False,
):
    """Measure AGOP, NFA and collapse by SVD stage at every probed layer.

    Parameters
    ----------
    model : torch.nn.Module
        The network, run in eval mode; ``model.training`` is restored and all hooks
        are removed afterwards, also when an error is raised.
    X : array-like or torch.Tensor of shape (n_samples, ...)
        Inputs in the model's input shape (e.g. ``(n, c, h, w)`` for a conv net).
    y : array-like of shape (n_samples,)
        Class labels.
    layers : list, default=None
        See :func:`find_layers`.
    batch_size : int, default=256
    device : str or torch.device, default=None
        ``None``: where the model's parameters are. The data are moved there batch
        by batch; the model is not moved.
    return_agops : bool, default=False
        Keep the dense AGOP of every layer (``d_l x d_l``; large behind a VGG
        backbone).

    Returns
    -------
    probe : NetworkProbe

    Notes
    -----
    All measurements are float64 on the CPU. The NFA correlations come from the
    factors :math:`W_l` and :math:`B_l = G_l^{1/2} W_l` (:math:`\\mathrm{AGOP}_l =
    B_l^\\top B_l`, and :math:`\\mathrm{AGOP}_l^{1/2} = Q \\Sigma Q^\\top` from the
    SVD :math:`B_l = P \\Sigma Q^\\top`), so they never form a ``d_l x d_l`` matrix.
    NC1 and NC2 are :func:`skdnc.metrics.nc1_score` and
    :func:`skdnc.metrics.nc2_score` with their defaults.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.nn import make_mlp, probe_network
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 4
    >>> probe = probe_network(make_mlp(6, 4, width=8, depth=3, random_state=0), X, y)
    >>> probe.nc1.shape, probe.nfa_correlation.shape
    ((3, 3), (3,))
    """
    found = find_layers(model, layers)
    device = _model_device(model) if device is None else resolve_device(device)
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(
            f"X and y must have the same number of samples; got {len(X)} and {len(y)}."
        )
    inputs, outputs, G, _ = _forward_pass(
        model, X, found, batch_size=batch_size, device=device, agop=True
    )
    L = len(found)
    nc1 = np.empty((L, 3))
    nc2 = np.empty((L, 3))
    nfa = np.empty((3, L))
    agops = [] if return_agops else None
    for index, layer in enumerate(found):
        W = layer.linear.weight.detach().to("cpu", torch.float64)
        _, S, Vh = torch.linalg.svd(W, full_matrices=False)
        Phi = inputs[index]
        right = torch.cat(
            [Phi[rows].double() @ (Vh.T * S) for rows in _batches(len(Phi), 4096)]
        )
        stages = (Phi, right, outputs[index])
        for k, Z in enumerate(stages):
            Z = Z.double().numpy()
            nc1[index, k] = nc1_score(Z, y)
            nc2[index, k] = nc2_score(Z, y)
        B = psd_power(G[index], 0.5) @ W
        _, sigma, Qh = torch.linalg.svd(B, full_matrices=False)
        sqrt_factor = sigma.sqrt()[:, None] * Qh
        nfa[0, index] = _gram_correlation(W, sqrt_factor)
        nfa[1, index] = _gram_correlation(W, sqrt_factor, centered=False)
        nfa[2, index] = _gram_correlation(W, B)
        if return_agops:
            agops.append((B.T @ B).numpy())
        del stages, right
    return NetworkProbe(
        layer_names=[layer.name for layer in found],
        nc1=nc1,
        nc2=nc2,
        nfa_correlation=nfa[0],
        nfa_correlation_uncentered=nfa[1],
        nfa_correlation_agop=nfa[2],
        agops=agops,
    )
