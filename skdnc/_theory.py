"""The paper's theory as small functions that numerical checks can call.

* :func:`relu_kernel_closed_form`: Proposition A.1, the expected inner product of
  random ReLU features, and :func:`relu_kernel_monte_carlo`, its estimate with the
  feature map Deep RFM uses.
* :func:`linear_agop_layer`: one Deep RFM layer with a linear kernel, which
  collapses the data exactly when the solve interpolates (Section 4.2).
* :func:`linearized_deep_rfm`: the linearised Deep RFM of Theorem 4.3, iterated on
  Gram matrices, with the distance of every layer's Gram matrix from ``y y^T``.
* :func:`krr_objective` and :func:`label_kernel_optimality`: Theorem 4.4, the label
  kernel ``y y^T`` minimises the kernel ridge regression objective among kernels
  of equal trace.

Everything is float64 NumPy (the AGOP's square root is :func:`skdnc._agop.psd_power`).
"""

import numpy as np
import torch
from sklearn.utils import check_random_state

from skdnc._backend import make_generator
from skdnc._feature_maps import apply_feature_map, draw_feature_map
from skdnc._linalg import psd_power
from skdnc._rfm_core import class_targets


def relu_kernel_closed_form(r):
    """Expected inner product of random ReLU features of two unit vectors.

    Proposition A.1: for unit vectors :math:`x, y` with :math:`x^\\top y = r` and
    :math:`W \\in \\mathbb R^{D \\times d}` with i.i.d. :math:`\\mathcal N(0, 2/D)`
    entries,

    .. math:: \\mathbb E\\, \\mathrm{ReLU}(Wx)^\\top \\mathrm{ReLU}(Wy)
              = \\frac{(1-r^2)^{3/2}}{\\pi} + \\frac{r^2 \\sqrt{1-r^2}}{\\pi}
              + \\frac{r}{2} + \\frac{r}{\\pi} \\arctan\\frac{r}{\\sqrt{1-r^2}}
              = \\frac{1}{\\pi}\\left(\\sin\\theta + (\\pi - \\theta)\\cos\\theta
              \\right),

    with :math:`\\theta = \\arccos r` (twice the degree-1 arc-cosine kernel of Cho
    and Saul). It is computed in the second form, which is finite at
    :math:`r = \\pm 1`. It does not depend on :math:`D`, and it is at least
    :math:`r`, with :math:`k(1) = 1`: the feature map pulls unit vectors
    together (their distances shrink), dissimilar ones the most
    (:math:`k(r) - r` grows as :math:`r` falls), so it tends to raise NC1 a
    little rather than lower it (Appendix A, whose text says the distances
    increase).

    Parameters
    ----------
    r : float or array-like
        Cosines in :math:`[-1, 1]`.

    Returns
    -------
    k : float or ndarray
        Same shape as ``r``.

    Examples
    --------
    >>> from skdnc._theory import relu_kernel_closed_form
    >>> float(relu_kernel_closed_form(1.0)), float(relu_kernel_closed_form(0.0))
    (1.0, 0.3183...)
    """
    r = np.asarray(r, dtype=np.float64)
    if np.any(np.abs(r) > 1):
        raise ValueError("r must be a cosine, in [-1, 1].")
    theta = np.arccos(r)
    k = (np.sin(theta) + (np.pi - theta) * r) / np.pi
    return k if k.ndim else float(k)


def relu_kernel_monte_carlo(x, y, width, n_draws, random_state=None):
    """Monte Carlo estimate of :math:`\\mathbb E\\, \\Phi(x)^\\top \\Phi(y)`.

    Draws ``n_draws`` independent ReLU feature maps of ``width`` features with
    Deep RFM's own code (:func:`skdnc._deep_rfm.draw_feature_map`).

    Parameters
    ----------
    x, y : array-like of shape (d,)
    width : int
    n_draws : int
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    mean : float
        Average of :math:`\\Phi(x)^\\top \\Phi(y)` over the draws.
    sem : float
        Its standard error.
    """
    X = torch.tensor(np.stack([x, y]), dtype=torch.float64)
    generator = make_generator(random_state)
    values = np.empty(n_draws)
    for t in range(n_draws):
        W, b = draw_feature_map("relu", X.shape[1], width, generator=generator)
        Phi = apply_feature_map(X, W, b, "relu")
        values[t] = float(Phi[0] @ Phi[1])
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n_draws))


def linear_agop_layer(X, y, *, reg=0.0, agop_power=0.5):
    """One Deep RFM layer with a linear kernel: ``X M^{p}`` for the AGOP ``M``.

    Kernel regression with the linear kernel :math:`k(x, z) = x^\\top z` gives
    :math:`f(x) = B^\\top x` with :math:`B = X^\\top (X X^\\top + \\mu I)^{-1} Y`.
    Its gradient is the same at every point, so the AGOP is :math:`M = B B^\\top`
    and :math:`(X M^{1/2})(X M^{1/2})^\\top = X B B^\\top X^\\top = \\hat Y
    \\hat Y^\\top`, the Gram matrix of the training predictions. When the solve
    interpolates (``reg=0``, :math:`n \\le d`, :math:`X` of full row rank),
    :math:`\\hat Y = Y`: samples of a class coincide after one layer (NC1 = 0)
    and the centred class means form a simplex ETF (NC2 = 0). With
    :math:`n > d` the claim fails: :math:`M` has rank at most :math:`K`.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Class labels; the targets are their one-hot codes.
    reg : float, default=0.0
        Ridge :math:`\\mu`; ``0`` solves by least squares (the minimum-norm
        interpolant when :math:`n \\le d`).
    agop_power : float, default=0.5

    Returns
    -------
    X_new : ndarray of shape (n_samples, n_features)
        :math:`X M^{p}`, in float64.
    M : ndarray of shape (n_features, n_features)
        The AGOP :math:`B B^\\top`.
    """
    X = np.asarray(X, dtype=np.float64)
    classes, y_index = np.unique(y, return_inverse=True)
    Y = class_targets(y_index, len(classes), "onehot")
    G = X @ X.T
    if reg > 0:
        alpha = np.linalg.solve(G + reg * np.eye(len(G)), Y)
    else:
        alpha = np.linalg.lstsq(G, Y, rcond=None)[0]
    B = X.T @ alpha
    M = B @ B.T
    sqrt_M = psd_power(torch.from_numpy(M), agop_power).numpy()
    return X @ sqrt_M, M


def linearized_deep_rfm(X, y, L, lambda_k, lambda_phi, *, kappa="fixed_point", ord=2):
    """Theorem 4.3's linearised Deep RFM, on Gram matrices.

    The kernel of every layer is :math:`k_{\\mathrm{lin}}(X) = X^\\top X +
    \\lambda_k I` (a linear kernel plus the non-linear kernels' identity
    perturbation), solved without ridge; the feature map's Gram matrix is
    :math:`\\Phi(\\tilde X)^\\top \\Phi(\\tilde X) = \\tilde X^\\top \\tilde X +
    \\lambda_\\Phi I`. With :math:`A_l = X_l^\\top X_l` and the one-hot label
    matrix :math:`y`,

    .. math:: \\alpha_l = (A_l + \\lambda_k I)^{-1} y, \\qquad
              M_l = X_l \\alpha_l \\alpha_l^\\top X_l^\\top, \\qquad
              \\tilde X_{l+1}^\\top \\tilde X_{l+1} = \\kappa^{-1} X_l^\\top M_l X_l
              = \\kappa^{-1} A_l \\alpha_l \\alpha_l^\\top A_l,

    and :math:`A_{l+1} = \\tilde X_{l+1}^\\top \\tilde X_{l+1} + \\lambda_\\Phi I`.
    Only Gram matrices enter, so the iteration runs on them, as the theorem does.
    The theorem bounds :math:`\\|\\tilde X_{l+1}^\\top \\tilde X_{l+1} - y y^\\top\\|
    \\le (1 - \\epsilon) \\|\\tilde X_l^\\top \\tilde X_l - y y^\\top\\| +
    O(\\lambda_k^2 / \\lambda_\\Phi^2)` when :math:`\\lambda_k / \\lambda_\\Phi` is
    small: the distance contracts geometrically down to a floor.

    On the rescaling: for balanced classes of ``m`` samples,
    :math:`A^* = y y^\\top + \\lambda_\\Phi I` has :math:`A^*(A^* + \\lambda_k
    I)^{-1} y = \\rho\\, y` with :math:`\\rho = (m + \\lambda_\\Phi) / (m +
    \\lambda_\\Phi + \\lambda_k)`, so ``yy^T`` is a fixed point exactly when
    :math:`\\kappa = \\rho^2 \\approx 1 - 2\\lambda_k / (m + \\lambda_\\Phi)`
    (``kappa="fixed_point"``). The paper's :math:`\\kappa = 1 - 2\\lambda_k (1 +
    \\lambda_\\Phi^{-1})` (``kappa="paper"``) comes from the identity
    :math:`y y^\\top (A^*)^{-1} = (1 + \\lambda_\\Phi^{-1}) y y^\\top` in the proof,
    whereas :math:`y y^\\top (A^*)^{-1} = y y^\\top / (m + \\lambda_\\Phi)`. With
    it the Gram matrices converge to :math:`s^* y y^\\top` with
    :math:`s^* \\approx \\kappa^{-1} \\ne 1`, and the distance stops at about
    :math:`|s^* - 1|\\, m`, of order :math:`\\lambda_k m` rather than
    :math:`\\lambda_k^2 / \\lambda_\\Phi^2`.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The data, one sample per row (:math:`X_1^\\top` in the paper's notation).
        The theorem assumes :math:`n \\le d` and a Gram matrix with smallest
        eigenvalue at least :math:`\\lambda_\\Phi`.
    y : array-like of shape (n_samples,)
        Class labels.
    L : int
        Number of layers.
    lambda_k : float
        The kernel's identity term :math:`\\lambda_k > 0`.
    lambda_phi : float
        The feature map's identity term :math:`\\lambda_\\Phi > 0`.
    kappa : {"fixed_point", "paper"} or float, default="fixed_point"
        The rescaling :math:`\\kappa`. ``"fixed_point"`` needs balanced classes.
    ord : {2, "fro"}, default=2
        Matrix norm of the distances (spectral or Frobenius).

    Returns
    -------
    result : dict
        ``"distances"``: ndarray of shape (L + 1,),
        :math:`\\|G_l - y y^\\top\\|` for the input Gram :math:`G_1 = X X^\\top`
        and the Gram matrices :math:`\\tilde X_{l+1}^\\top \\tilde X_{l+1}` of
        layers ``1..L``; ``"kappa"``: the rescaling used; ``"gram"``: the last
        :math:`\\tilde X^\\top \\tilde X`.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._theory import linearized_deep_rfm
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 10)
    >>> X = rng.normal(size=(3, 60))[y] + rng.normal(size=(30, 60))
    >>> out = linearized_deep_rfm(X, y, L=4, lambda_k=0.1, lambda_phi=1.0)
    >>> print(np.array2string(out["distances"], precision=1))
    [7.5e+02 1.8e-01 3.3e-03 1.3e-04 8.9e-06]
    >>> d = out["distances"]
    >>> bool(np.all(np.diff(d) < 0)) and bool(d[-1] < 1e-3 * d[1])
    True
    """
    X = np.asarray(X, dtype=np.float64)
    classes, y_index = np.unique(y, return_inverse=True)
    Y = class_targets(y_index, len(classes), "onehot")
    counts = Y.sum(axis=0)
    if isinstance(kappa, str):
        if kappa == "paper":
            kappa = 1.0 - 2.0 * lambda_k * (1.0 + 1.0 / lambda_phi)
        elif kappa == "fixed_point":
            if np.ptp(counts) != 0:
                raise ValueError(
                    "kappa='fixed_point' needs balanced classes; got class sizes "
                    f"{counts.astype(int).tolist()}. Pass kappa as a number."
                )
            m = counts[0]
            kappa = ((m + lambda_phi) / (m + lambda_phi + lambda_k)) ** 2
        else:
            raise ValueError(
                f"kappa must be 'fixed_point', 'paper' or a number; got {kappa!r}."
            )
    if not kappa > 0:
        raise ValueError(f"kappa must be positive; got {kappa}.")
    n = len(X)
    label_kernel = Y @ Y.T
    eye = np.eye(n)
    gram = X @ X.T
    A = gram
    distances = [np.linalg.norm(gram - label_kernel, ord=ord)]
    for _ in range(int(L)):
        alpha = np.linalg.solve(A + lambda_k * eye, Y)
        Aa = A @ alpha
        gram = (Aa @ Aa.T) / kappa
        gram = (gram + gram.T) / 2
        distances.append(np.linalg.norm(gram - label_kernel, ord=ord))
        A = gram + lambda_phi * eye
    return {"distances": np.asarray(distances), "kappa": float(kappa), "gram": gram}


def krr_objective(K, Y, mu):
    """Optimal value of the kernel ridge regression training objective.

    .. math:: J(K) = \\min_A \\|Y - K A\\|_F^2 + \\mu\\, \\mathrm{tr}(A^\\top K A)
              = \\mu\\, \\mathrm{tr}\\big(Y^\\top (K + \\mu I)^{-1} Y\\big),

    attained at :math:`A = (K + \\mu I)^{-1} Y`. Minimising :math:`J` over kernels
    is the paper's Problem (3) (it maximises
    :math:`\\sum_c y_c^\\top (K + \\mu I)^{-1} K y_c = \\|Y\\|_F^2 - J(K)`).

    Parameters
    ----------
    K : array-like of shape (n, n)
        Symmetric positive semi-definite kernel matrix.
    Y : array-like of shape (n,) or (n, n_outputs)
        Targets.
    mu : float
        Ridge :math:`\\mu > 0`.

    Returns
    -------
    J : float
    """
    K = np.asarray(K, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(K), -1)
    if not mu > 0:
        raise ValueError(f"mu must be positive; got {mu}.")
    return float(mu * np.sum(Y * np.linalg.solve(K + mu * np.eye(len(K)), Y)))


def label_kernel_optimality(y, mu, *, n_kernels=200, random_state=None):
    """Theorem 4.4: ``y y^T`` against random kernels of the same trace.

    Among positive semi-definite kernels with the trace of the label kernel
    :math:`K^* = y y^\\top` (one-hot ``y``), :math:`K^*` minimises
    :func:`krr_objective`. For balanced one-hot labels,
    :math:`J(K^*) = \\mu \\sum_c n_c / (n_c + \\mu)`. This draws ``n_kernels``
    random PSD kernels :math:`G G^\\top` (``G`` Gaussian, of a random rank between
    1 and ``n - 1``), rescales each to that trace, and evaluates the objective.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    mu : float
        Ridge.
    n_kernels : int, default=200
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    result : dict
        ``"label"``: :math:`J(y y^\\top)`; ``"random"``: ndarray of shape
        (n_kernels,) of :math:`J` of the random kernels.
    """
    rng = check_random_state(random_state)
    classes, y_index = np.unique(y, return_inverse=True)
    Y = class_targets(y_index, len(classes), "onehot")
    n = len(Y)
    label_kernel = Y @ Y.T
    trace = np.trace(label_kernel)
    values = np.empty(n_kernels)
    for t in range(n_kernels):
        G = rng.standard_normal((n, rng.randint(1, max(2, n))))
        K = G @ G.T
        values[t] = krr_objective(K * (trace / np.trace(K)), Y, mu)
    return {"label": krr_objective(label_kernel, Y, mu), "random": values}
