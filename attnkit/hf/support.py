"""Which transformers models can run on ``"attnkit"``: decided from the code their modules run.

A model can when its attention modules look their attention function up in transformers'
registry (``ALL_ATTENTION_FUNCTIONS``, an ``AttentionInterface``) and nothing else handles the
masks that transformers' mask hook builds for ``"attnkit"`` (``CompactMask``, which only attnkit's
attention function reads). Read from each module class's bytecode and source, not from a list of
names. ``install_load_check`` makes transformers ask this whenever a model is set to ``"attnkit"``.
"""

from __future__ import annotations

import collections
import functools
import inspect
import io
import re
import sys
import tokenize
import types
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers import masking_utils as mu

from attnkit.errors import InputTypeError, UnsupportedModelError

__all__ = ["NAME", "check_supported", "check_class", "install_load_check", "ModuleCode"]

NAME = "attnkit"

# names whose use in a module's code means it computes attention itself
_COMPUTES = frozenset({"softmax", "scaled_dot_product_attention", "baddbmm",
                       "multi_head_attention_forward", "_flash_attention_forward",
                       "flash_attn_func", "flash_attn_varlen_func"})
# the attention mask used as a tensor: indexed, combined, converted, or its tensor facts read
_MASK_AS_TENSOR = re.compile(
    r"\b(?:attention_mask|causal_mask)\s*(?:\[|[-+*&|]|\.\s*(?:masked_fill|to|bool|float|"
    r"unsqueeze|expand|view|reshape|dtype|any|all|clone|type_as|dim|size|device)\b)"
    r"|(?:~|[-+*&|]\s*)(?:attention_mask|causal_mask)\b")
_FIX = ("Load it with attn_implementation='eager' and read its patterns with "
        "output_attentions=True (the slow path; attnkit.capture needs attn_implementation="
        "'attnkit')")


# ---- reading a module class's code -----------------------------------------------------------

def _hook_mask_builders() -> frozenset[str]:
    """Names of ``transformers.masking_utils``' functions that build masks through the mask hook
    (they read ``ALL_MASK_ATTENTION_FUNCTIONS``, or call one that does)."""
    found = {"ALL_MASK_ATTENTION_FUNCTIONS"}
    functions = {name: inspect.unwrap(obj) for name, obj in vars(mu).items()
                 if inspect.isfunction(obj)}
    grew = True
    while grew:
        grew = False
        for name, fn in functions.items():
            if name not in found and _names(fn.__code__) & found:
                found.add(name)
                grew = True
    if any(getattr(mu, name, None) in getattr(mu, "LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING",
                                              {}).values() for name in found):
        found.add("LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING")
    return frozenset(found)


def _names(code: types.CodeType) -> set[str]:
    """Every global and attribute name a code object (and the functions nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _library_class(klass: type) -> bool:
    """torch's classes and transformers' shared ones (``PreTrainedModel``, ``GenerationMixin``,
    ...): their code is no model's own (``PreTrainedModel`` itself names the registry)."""
    where = klass.__module__
    return (klass is object or where.startswith("torch.")
            or (where.startswith("transformers.") and not where.startswith("transformers.models.")))


def _own_functions(cls: type) -> Iterator[types.FunctionType]:
    """The functions a model's own code defines for ``cls`` and its bases."""
    for klass in cls.__mro__:
        if _library_class(klass):
            continue
        for value in vars(klass).values():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            fn = fn.fget if isinstance(fn, property) else fn
            if inspect.isfunction(fn):
                yield inspect.unwrap(fn)


def _code_lines(source: str) -> list[str]:
    """``source``'s lines with comments and strings (docstrings too) blanked out, so a word
    there is not taken for code; columns keep their places."""
    lines = [list(line) for line in source.splitlines()]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.STRING):
                continue
            (r0, c0), (r1, c1) = tok.start, tok.end
            for row in range(r0, r1 + 1):
                line = lines[row - 1]
                start = c0 if row == r0 else 0
                stop = c1 if row == r1 else len(line)
                line[start:stop] = " " * (stop - start)
    except (tokenize.TokenError, IndentationError):
        pass
    return ["".join(line) for line in lines]


@dataclass(frozen=True)
class ModuleCode:
    """What the code of one ``nn.Module`` class does with attention.

    ``dispatches``: it looks its attention function up in transformers' registry (so
    ``"attnkit"`` runs it); ``computes``: it computes attention itself (softmax, SDPA, ...);
    ``mask_as_tensor``: a line where a dispatching class uses the attention mask as a tensor
    before handing it on (None if none, or its source cannot be read); ``hook_masks``: its
    module builds masks through transformers' mask hook, which gives ``CompactMask`` under
    ``"attnkit"``; ``takes_mask``: its ``forward`` has an ``attention_mask`` argument (how a
    model hands its layers the mask it built).
    """

    name: str
    dispatches: bool
    computes: bool
    mask_as_tensor: str | None
    hook_masks: bool
    takes_mask: bool

    @property
    def is_attention(self) -> bool:
        return "Attention" in self.name

    @property
    def problem(self) -> str | None:
        """Why a model holding this module (with hook-built masks) cannot run on attnkit."""
        if not self.hook_masks:
            return None
        if self.is_attention and self.computes and self.takes_mask and not self.dispatches:
            return (f"its {self.name} computes attention itself instead of calling transformers' "
                    "attention-function registry, yet takes an attention_mask, which transformers "
                    "builds for 'attnkit' as a compact mask only attnkit's attention reads")
        if self.mask_as_tensor is not None:
            return (f"its {self.name} uses the attention mask as a tensor "
                    f"(`{self.mask_as_tensor}`) before calling the attention function; attnkit "
                    "hands it a compact mask")
        return None


@functools.cache
def module_code(cls: type) -> ModuleCode:
    """Read ``cls``'s code once (classes do not change)."""
    dispatches = computes = False
    dispatching = []
    for fn in _own_functions(cls):
        names = _names(fn.__code__)
        registry = [n for n in names if _is_registry(fn.__globals__.get(n))]
        if registry:
            dispatches = True
            dispatching.append(fn)
        computes = computes or bool(names & _COMPUTES)
    mask_use = None
    for fn in dispatching:
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        for line, code in zip(source.splitlines(), _code_lines(source), strict=True):
            if _MASK_AS_TENSOR.search(code):
                mask_use = mask_use or line.strip()
    module = sys.modules.get(cls.__module__)
    hook_masks = module is not None and any(
        getattr(mu, n, None) is vars(module).get(n, object()) for n in _HOOK_BUILDERS)
    try:
        takes_mask = "attention_mask" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        takes_mask = True  # cannot tell: assume the mask reaches it
    return ModuleCode(cls.__name__, dispatches, computes, mask_use, hook_masks, takes_mask)


def _is_registry(value: object) -> bool:
    return isinstance(value, AttentionInterface) or value is AttentionInterface


_HOOK_BUILDERS = _hook_mask_builders()


# ---- the checks ------------------------------------------------------------------------------

_NO_DISPATCH = ("does not compute attention through transformers' AttentionInterface (no module "
                "looks up ALL_ATTENTION_FUNCTIONS), so attnkit cannot take it over nor capture "
                "its patterns")


def _refuse(model_name: str, why: str) -> UnsupportedModelError:
    if why is _NO_DISPATCH:
        return UnsupportedModelError(f"{model_name} {why}. {_FIX}")
    return UnsupportedModelError(f"{model_name} cannot run on attnkit: {why}. {_FIX}")


def _classes_used(cls: type) -> list[type]:
    """``cls`` and every ``nn.Module`` class its ``__init__`` names (directly, or in a dict, list
    or tuple such as Falcon's ``FALCON_ATTENTION_CLASSES``), transitively: the classes a model
    may build (not those other code only mentions, e.g. in ``_init_weights``)."""
    seen: dict[type, None] = {}
    todo = collections.deque([cls])
    while todo:
        klass = todo.popleft()
        if klass in seen:
            continue
        seen[klass] = None
        for fn in _own_functions(klass):
            if fn.__name__ != "__init__":
                continue
            for name in _names(fn.__code__):
                value = fn.__globals__.get(name)
                values = (value.values() if isinstance(value, dict)
                          else value if isinstance(value, (list, tuple)) else (value,))
                todo.extend(v for v in values if isinstance(v, type) and issubclass(v, nn.Module)
                            and not _library_class(v))
    return list(seen)


@functools.cache
def _class_problem(cls: type) -> str | None:
    codes = [module_code(klass) for klass in _classes_used(cls)]
    for code in codes:
        if code.problem is not None:
            return code.problem
    if (any(c.is_attention and c.computes for c in codes)
            and not any(c.dispatches for c in codes)):
        return _NO_DISPATCH
    return None


def check_class(cls: type) -> None:
    """The check transformers runs while it builds a model set to ``"attnkit"``, before its
    modules exist: every module class the model's code can build (``_classes_used``)."""
    problem = _class_problem(cls)
    if problem is not None:
        raise _refuse(cls.__name__, problem)


def check_supported(model: nn.Module) -> None:
    """Raise an ``UnsupportedModelError`` naming the model class, the module that is the reason
    and the fix, unless ``model`` is a transformers model that attnkit can run: some of its
    modules call transformers' attention-function registry, and no module that would be handed
    a ``CompactMask`` computes attention itself or uses the mask as a tensor.

    Not required: ``_supports_attention_backend`` (T5, BART, Whisper and StableLM leave it False
    yet dispatch every layer; DeepSeek-V3.2 sets it yet slices its mask).
    """
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise InputTypeError(
            f"{name} is not a Hugging Face transformers model (PreTrainedModel); attnkit can run "
            "transformers models, and models built from attnkit's MultiHeadAttention/AttentionHead")
    codes = {module_code(type(m)) for m in model.modules()}
    for code in sorted(codes, key=lambda c: c.name):
        if code.problem is not None:
            raise _refuse(name, code.problem)
    if not any(c.dispatches for c in codes):
        raise _refuse(name, _NO_DISPATCH)


# ---- the hook into transformers ----------------------------------------------------------------

def install_load_check() -> None:
    """Make transformers run our check wherever it settles a model's attention implementation
    on ``"attnkit"``: ``PreTrainedModel.get_correct_attn_implementation``, which
    ``__init__`` (so ``from_pretrained(..., attn_implementation="attnkit")`` and
    ``from_config``) and ``set_attn_implementation`` call for the model and each sub-model.
    transformers validates a registered name only by its presence in the registry (5.4 to
    5.24), and offers no per-implementation check; wrapping this method is the one place that
    sees every path. While the model is being built its modules do not exist yet, so the
    classes of its modeling module are checked; afterwards, the modules themselves. Idempotent.
    """
    original = PreTrainedModel.get_correct_attn_implementation
    if getattr(original, "_attnkit_checked", False):
        return

    @functools.wraps(original)
    def get_correct_attn_implementation(self, requested_attention=None, *args, **kwargs):
        chosen = original(self, requested_attention, *args, **kwargs)
        if chosen == NAME:
            if any(True for _ in self.children()):
                check_supported(self)
            else:
                check_class(type(self))
        return chosen

    get_correct_attn_implementation._attnkit_checked = True
    PreTrainedModel.get_correct_attn_implementation = get_correct_attn_implementation
