"""The networks of the paper's Appendix C, with one uniform structure for probing.

Every model built here is a :class:`HeadedNetwork`: ``backbone`` (a feature
extractor, or a flatten for the MLP), ``head_layers`` (an :class:`torch.nn.ModuleList`
of ``Sequential(Linear(bias=False), ReLU())`` blocks, the "named MLP layers" that
the probes of :mod:`skdnc.nn` measure) and ``readout`` (the last ``Linear``).

Initialisation follows the paper's code (``nc_nn.py``): hidden layers get
``xavier_uniform_(gain=init_scale)``, i.e. :math:`U(\\pm g\\sqrt{6/(d_{in}+d_{out})})`
(for a square layer this is :math:`\\sqrt 3\\, g` times PyTorch's default bound
:math:`1/\\sqrt{d_{in}}`); the readout keeps PyTorch's default init, and so does the
first head layer behind a ResNet18 or VGG11 backbone. In the plain MLP every hidden
layer, the first included, gets the scaled init, as in the paper's code.

Every builder creates its modules on the ``meta`` device (no memory, no random
draws) and then initialises each parameter on the CPU with the distribution
PyTorch or torchvision would give it, drawn from one :class:`torch.Generator`
seeded by ``random_state``: a seeded build never reads or advances torch's global
generator, so builds in concurrent threads give the same weights as alone.
"""

import math
from numbers import Integral, Real
from typing import NamedTuple

import torch
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from torch import nn

from skdnc._backend import make_generator

__all__ = [
    "ARCHITECTURES",
    "CausalLM",
    "CausalLMOutput",
    "HeadedNetwork",
    "make_causal_lm",
    "make_mlp",
    "make_model",
    "make_resnet18",
    "make_vgg11",
]

ARCHITECTURES = ("mlp", "resnet18", "vgg11")


class HeadedNetwork(nn.Module):
    """A backbone followed by a bias-free ReLU MLP head and a linear readout.

    ``forward(x) = readout(head_layers[L-1](...head_layers[0](flatten(backbone(x)))))``.

    Parameters
    ----------
    backbone : torch.nn.Module
        Feature extractor; its output is flattened to ``(n, d)``.
    head_layers : sequence of torch.nn.Module
        The hidden layers, each ``Sequential(Linear, ReLU)``.
    readout : torch.nn.Linear
        The output layer.
    """

    def __init__(self, backbone, head_layers, readout):
        super().__init__()
        self.backbone = backbone
        self.head_layers = nn.ModuleList(head_layers)
        self.readout = readout

    def features(self, x):
        """Output of the last hidden layer (the input of ``readout``)."""
        h = torch.flatten(self.backbone(x), 1)
        for layer in self.head_layers:
            h = layer(h)
        return h

    def forward(self, x):
        return self.readout(self.features(x))


def _head(in_features, n_classes, width, depth, init_scale, scale_first):
    """Hidden blocks and readout of the bias-free MLP head, and the rules of the
    hidden layers that get the scaled Xavier init."""
    layers, rules = [], {}
    d = in_features
    for index in range(depth):
        linear = nn.Linear(d, width, bias=False)
        if index > 0 or scale_first:
            rules[linear] = _xavier(init_scale)
        layers.append(nn.Sequential(linear, nn.ReLU()))
        d = width
    return layers, nn.Linear(d, n_classes, bias=False), rules


def _xavier(gain):
    """The paper's init of the head's hidden layers: ``xavier_uniform_(gain)``."""

    def init(module, generator):
        nn.init.xavier_uniform_(module.weight, gain=gain, generator=generator)

    return init


def _torchvision_conv(module, generator):
    """torchvision's init of the ResNet and VGG convolutions: He normal over the
    fan-out, biases 0."""
    nn.init.kaiming_normal_(
        module.weight, mode="fan_out", nonlinearity="relu", generator=generator
    )
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _pytorch_default(module, generator):
    """``reset_parameters`` of the module, with the random draws from
    ``generator``: for ``Linear`` and ``Conv2d`` the weights are
    :math:`U(\\pm 1/\\sqrt{fan_{in}})` (``kaiming_uniform_(a=sqrt(5))``) and so are
    the biases; batch norms get weights 1, biases 0 and fresh running statistics.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    elif isinstance(module, nn.BatchNorm2d):
        module.reset_parameters()
    elif next(module.parameters(recurse=False), None) is not None:
        raise TypeError(f"No init rule for {type(module).__name__}.")


def _materialise(model, random_state, rules):
    """Allocate a model built on the meta device and initialise it.

    Parameters
    ----------
    model : torch.nn.Module
        Built under ``torch.device("meta")``.
    random_state : int, RandomState instance or None
        Seeds the generator of every draw; ``None`` draws from torch's global
        generator.
    rules : dict
        ``{module: init(module, generator)}`` for the modules whose init differs
        from PyTorch's default (:func:`_pytorch_default`).

    Returns
    -------
    model : torch.nn.Module
        On the CPU, every parameter and buffer set.
    """
    generator = None if random_state is None else make_generator(random_state)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            rules.get(module, _pytorch_default)(module, generator)
    return model


_BUILDER_CONSTRAINTS = {
    "n_classes": [Interval(Integral, 1, None, closed="left")],
    "width": [Interval(Integral, 1, None, closed="left")],
    "depth": [Interval(Integral, 1, None, closed="left")],
    "init_scale": [Interval(Real, 0, None, closed="neither")],
    "random_state": ["random_state"],
}


@validate_params(
    {
        "in_features": [Interval(Integral, 1, None, closed="left")],
        **_BUILDER_CONSTRAINTS,
    },
    prefer_skip_nested_validation=True,
)
def make_mlp(
    in_features,
    n_classes=10,
    *,
    width=512,
    depth=5,
    init_scale=0.3,
    random_state=None,
):
    """Bias-free ReLU MLP of the paper's Appendix C.

    Parameters
    ----------
    in_features : int
        Input dimension (images are flattened by the backbone).
    n_classes : int, default=10
    width : int, default=512
    depth : int, default=5
        Number of hidden ``Linear + ReLU`` layers.
    init_scale : float, default=0.3
        Gain of ``xavier_uniform_`` on every hidden layer (the paper uses 0.3, and
        0.2 for MNIST).
    random_state : int, RandomState instance or None, default=None
        Seeds the init without changing torch's global random state; ``None``
        draws from (and advances) torch's global generator.

    Returns
    -------
    model : HeadedNetwork
        ``backbone`` is :class:`torch.nn.Flatten`.

    Examples
    --------
    >>> import torch
    >>> from skdnc.nn import make_mlp
    >>> net = make_mlp(64, width=32, random_state=0)
    >>> len(net.head_layers), net(torch.zeros(3, 64)).shape
    (5, torch.Size([3, 10]))
    """
    with torch.device("meta"):
        layers, readout, rules = _head(
            in_features, n_classes, width, depth, init_scale, True
        )
        model = HeadedNetwork(nn.Flatten(), layers, readout)
    return _materialise(model, random_state, rules)


@validate_params(
    {
        "in_channels": [Interval(Integral, 1, None, closed="left")],
        **_BUILDER_CONSTRAINTS,
    },
    prefer_skip_nested_validation=True,
)
def make_resnet18(
    in_channels=3,
    n_classes=10,
    *,
    width=512,
    depth=5,
    init_scale=0.3,
    random_state=None,
):
    """torchvision's ResNet18 (untrained) with a 5-layer bias-free MLP head.

    ``conv1`` becomes ``Conv2d(in_channels, 64, 7, stride=2, padding=3,
    bias=False)`` (the ImageNet stem is kept, as in the paper's code) and ``fc`` is
    removed, so the backbone gives 512 features for any input size >= 32x32.

    Parameters
    ----------
    in_channels : int, default=3
        1 for MNIST, 3 for CIFAR-10 and SVHN.
    n_classes : int, default=10
    width : int, default=512
        Width of the head.
    depth : int, default=5
        Hidden layers of the head.
    init_scale : float, default=0.3
        Xavier gain of the head's hidden layers after the first.
    random_state : int, RandomState instance or None, default=None
        Seeds the init without changing torch's global random state.

    Returns
    -------
    model : HeadedNetwork
    """
    from torchvision.models import resnet18

    with torch.device("meta"):
        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(
            in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False
        )
        backbone.fc = nn.Identity()
        layers, readout, rules = _head(512, n_classes, width, depth, init_scale, False)
        model = HeadedNetwork(backbone, layers, readout)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d) and module is not backbone.conv1:
            rules[module] = _torchvision_conv
    return _materialise(model, random_state, rules)


@validate_params(
    {
        "in_channels": [Interval(Integral, 1, None, closed="left")],
        **_BUILDER_CONSTRAINTS,
    },
    prefer_skip_nested_validation=True,
)
def make_vgg11(
    in_channels=3,
    n_classes=10,
    *,
    width=512,
    depth=5,
    init_scale=0.3,
    random_state=None,
):
    """torchvision's VGG11 truncated before its last two poolings, with an MLP head.

    The backbone is ``vgg11(weights=None).features[:15]`` (6 convolutions and 3
    max-poolings, ending with a ReLU; built with torchvision's ``make_layers`` and
    VGG init, without the unused classifier) with the first convolution replaced
    by ``Conv2d(in_channels, 64, 3, padding=1, bias=False)`` (default init, as in
    the paper's code), then
    ``AdaptiveAvgPool2d((4, 4))``: 512 * 4 * 4 = 8192 features.

    Parameters
    ----------
    in_channels : int, default=3
    n_classes : int, default=10
    width : int, default=512
    depth : int, default=5
    init_scale : float, default=0.3
        Xavier gain of the head's hidden layers after the first.
    random_state : int, RandomState instance or None, default=None
        Seeds the init without changing torch's global random state.

    Returns
    -------
    model : HeadedNetwork
    """
    from torchvision.models.vgg import cfgs, make_layers

    with torch.device("meta"):
        # vgg11(weights=None).features, initialised as torchvision's VGG does,
        # without allocating its 120M-parameter classifier.
        features = make_layers(cfgs["A"])[:15]
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1, bias=False)
        backbone = nn.Sequential(*features, nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten())
        layers, readout, rules = _head(
            512 * 16, n_classes, width, depth, init_scale, False
        )
        model = HeadedNetwork(backbone, layers, readout)
    for module in features[1:].modules():
        if isinstance(module, nn.Conv2d):
            rules[module] = _torchvision_conv
    return _materialise(model, random_state, rules)


#: Smallest height and width of an image for each backbone (VGG11's truncated
#: backbone halves them three times).
MIN_IMAGE_SIZE = {"resnet18": 1, "vgg11": 8}


@validate_params(
    {"arch": [StrOptions(set(ARCHITECTURES))], "input_shape": ["array-like"]},
    prefer_skip_nested_validation=False,
)
def make_model(arch, input_shape, n_classes=10, **kwargs):
    """Build one of :data:`ARCHITECTURES` for inputs of shape ``input_shape``.

    Parameters
    ----------
    arch : {"mlp", "resnet18", "vgg11"}
    input_shape : tuple of int
        Shape of one input, ``(d,)`` or ``(c, h, w)``.
    n_classes : int, default=10
    **kwargs
        ``width``, ``depth``, ``init_scale``, ``random_state``.

    Returns
    -------
    model : HeadedNetwork
    """
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(
            f"input_shape must be a tuple of positive integers; got {input_shape!r}."
        )
    input_shape = tuple(int(s) for s in shape)
    if arch == "mlp":
        in_features = 1
        for s in input_shape:
            in_features *= s
        return make_mlp(in_features, n_classes, **kwargs)
    if len(input_shape) != 3:
        raise ValueError(
            f"arch={arch!r} needs image inputs of shape (c, h, w); got input_shape="
            f"{input_shape}."
        )
    if min(input_shape[1:]) < MIN_IMAGE_SIZE[arch]:
        size = MIN_IMAGE_SIZE[arch]
        raise ValueError(
            f"arch={arch!r} needs images of at least {size}x{size} pixels; got "
            f"input_shape={input_shape}."
        )
    build = make_resnet18 if arch == "resnet18" else make_vgg11
    return build(input_shape[0], n_classes, **kwargs)


class CausalLMOutput(NamedTuple):
    """What :class:`CausalLM` returns when asked for its hidden states:
    ``logits`` ``(n, tokens, vocab_size)`` and ``hidden_states``, ``n_layers + 1``
    tensors ``(n, tokens, d_model)`` (the embeddings, then each block's output)."""

    logits: torch.Tensor
    hidden_states: tuple


class CausalLM(nn.Module):
    """A small decoder-only transformer language model (GPT-style, pre-norm).

    ``embed`` (token) + ``position`` embeddings, then ``blocks`` (an
    :class:`torch.nn.ModuleList` of :class:`torch.nn.TransformerEncoderLayer`
    run with a causal mask), ``norm`` (:class:`torch.nn.LayerNorm`) and
    ``lm_head`` (a bias-free ``Linear`` to the vocabulary). Forward hooks reach
    every stage by module name: ``"embed"``, ``"blocks.0"``, ...,
    ``"blocks.{n_layers - 1}"``, ``"norm"``, ``"lm_head"``; each block's output
    is the residual stream ``(n, tokens, d_model)``. Build it with
    :func:`make_causal_lm` (which documents the parameters).
    """

    def __init__(self, vocab_size, d_model, n_layers, n_heads, max_len):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward=4 * d_model,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def _mask(self, length, attention_mask, device):
        """Boolean ``(n * heads, tokens, tokens)`` mask, True where a query may
        not attend: future tokens and padded keys (a query always sees itself,
        so that a padded query stays finite)."""
        blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        if attention_mask is None:
            return blocked
        pad = (torch.as_tensor(attention_mask, device=device) == 0)[:, None, :]
        blocked = blocked[None] | pad
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=device)
        return blocked.repeat_interleave(self.blocks[0].self_attn.num_heads, dim=0)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        """Next-token logits of every position.

        Parameters
        ----------
        input_ids : torch.Tensor of shape (n, tokens)
            Token indices (integers), ``tokens <= max_len``.
        attention_mask : torch.Tensor of shape (n, tokens), default=None
            Nonzero for real tokens, 0 for padding: padded tokens are never
            attended to (positions count from the first column, so pad on the
            right to keep real tokens at the positions they had alone).
        output_hidden_states : bool, default=False
            Return a :class:`CausalLMOutput` with the hidden states too.

        Returns
        -------
        logits : torch.Tensor of shape (n, tokens, vocab_size)
            Or ``CausalLMOutput(logits, hidden_states)``.
        """
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be (n, tokens); got shape {tuple(input_ids.shape)}."
            )
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"The sequences have {length} tokens, more than max_len={self.max_len}."
            )
        positions = torch.arange(length, device=input_ids.device)
        h = self.embed(input_ids) + self.position(positions)
        mask = self._mask(length, attention_mask, input_ids.device)
        hidden = [h]
        for block in self.blocks:
            h = block(h, src_mask=mask)
            hidden.append(h)
        logits = self.lm_head(self.norm(h))
        if output_hidden_states:
            return CausalLMOutput(logits, tuple(hidden))
        return logits

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, *, temperature=1.0, generator=None):
        """Continue each sequence by sampling one token at a time.

        Parameters
        ----------
        input_ids : torch.Tensor of shape (n, tokens)
            The prompts, of one length (no padding).
        max_new_tokens : int
            Tokens to add; the context is cut to the last ``max_len`` tokens.
        temperature : float, default=1.0
            Softmax temperature; ``0`` takes the most likely token (greedy).
        generator : torch.Generator, default=None
            Source of the draws (torch's global generator when None).

        Returns
        -------
        sequences : torch.Tensor of shape (n, tokens + max_new_tokens)
        """
        was_training = self.training
        self.eval()
        try:
            ids = input_ids
            for _ in range(int(max_new_tokens)):
                logits = self(ids[:, -self.max_len :])[:, -1]
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    probs = torch.softmax(logits.double() / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
            return ids
        finally:
            self.train(was_training)


def _normal(std):
    def init(module, generator):
        nn.init.normal_(module.weight, std=std, generator=generator)

    return init


def _attention(module, generator):
    """PyTorch's init of ``nn.MultiheadAttention``: Xavier packed projections,
    default ``out_proj`` weights, zero biases."""
    nn.init.xavier_uniform_(module.in_proj_weight, generator=generator)
    nn.init.kaiming_uniform_(
        module.out_proj.weight, a=math.sqrt(5), generator=generator
    )
    nn.init.zeros_(module.in_proj_bias)
    nn.init.zeros_(module.out_proj.bias)


@validate_params(
    {
        "vocab_size": [Interval(Integral, 1, None, closed="left")],
        "d_model": [Interval(Integral, 1, None, closed="left")],
        "n_layers": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "max_len": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_causal_lm(
    vocab_size, *, d_model=64, n_layers=2, n_heads=4, max_len=64, random_state=None
):
    """A tiny causal transformer language model (pure torch), for examples and
    tests of the probes and of steering on token sequences.

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    d_model : int, default=64
        Width of the residual stream; a multiple of ``n_heads``.
    n_layers : int, default=2
        Number of transformer blocks.
    n_heads : int, default=4
        Attention heads per block.
    max_len : int, default=64
        Longest sequence (number of position embeddings).
    random_state : int, RandomState instance or None, default=None
        Seeds the init without changing torch's global random state; ``None``
        draws from (and advances) torch's global generator.

    Returns
    -------
    model : CausalLM
        ``model(input_ids, attention_mask=None, output_hidden_states=False)``
        gives ``(n, tokens, vocab_size)`` logits, or a :class:`CausalLMOutput`
        ``(logits, hidden_states)``. Token and position embeddings are drawn
        from :math:`N(0, 0.02^2)` (as GPT-2's), the rest as PyTorch initialises
        its modules.

    Examples
    --------
    >>> import torch
    >>> from skdnc.nn import make_causal_lm
    >>> lm = make_causal_lm(10, d_model=16, n_layers=2, n_heads=2, random_state=0)
    >>> ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    >>> lm(ids).shape
    torch.Size([2, 3, 10])
    >>> len(lm(ids, output_hidden_states=True).hidden_states)
    3
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}.")
    with torch.device("meta"):
        model = CausalLM(vocab_size, d_model, n_layers, n_heads, max_len)
    rules = {model.embed: _normal(0.02), model.position: _normal(0.02)}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            rules[module], rules[module.out_proj] = _attention, lambda m, g: None
        elif isinstance(module, nn.LayerNorm):
            rules[module] = lambda m, g: m.reset_parameters()
    return _materialise(model, random_state, rules)
