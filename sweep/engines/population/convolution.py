"""Batched Conv2D for `tf.vectorized_map` when each run has its own kernel.

`tf.vectorized_map` (TensorFlow's pfor) turns a loop body into batched ops, op by op, through a
table of converters (`pfor._pfor_converter_registry`). Its Conv2D converter folds the loop axis
into the batch axis, which is right when only the input varies across iterations; when the
filter varies too (a population's stacked [K, kh, kw, C, O] kernels) it cannot, raises
`ConversionNotImplementedError`, and pfor runs the convolution once per run in a while_loop.
`install()` puts a converter in front of it that handles a loop-variant filter with batched ops:

* ``"matmul"`` (CPU): the input is padded as the op pads it, its kh x kw windows are cut with
  strided slices (dilation is the spacing of the slices' starts, the stride their step) and
  concatenated on the channel axis into [K, B, Ho, Wo, kh*kw*C] patches, and one batched matmul
  with the [K, kh*kw*C, O] kernels gives every run's output. An input shared by all runs is cut
  once and multiplied by all kernels side by side in one [B*Ho*Wo, kh*kw*C] x [kh*kw*C, K*O]
  matmul. The gradients are those of pad, strided slice, concat and matmul: batched, no loop.
* ``"grouped"`` (GPU): the run axis is folded into the channels ([B, H, W, K*C] input,
  [kh, kw, C, K*O] filter) and one Conv2D with K feature groups computes every run, on cuDNN's
  grouped kernels forward and backward. On XLA:CPU this form is correct but 14-70x slower than
  the matmul (scripts/bench_conv_population.py); without XLA a CPU runs it about as fast as the
  matmul, except that the filter gradient of an explicitly padded one fails there.

The form is chosen when the op is converted: an op placed on a CPU device gets the matmul, one on
a GPU the grouped convolution, an op with no device the grouped form if TensorFlow sees a GPU.

What it covers: NHWC, strides and dilations on the spatial axes (both at once too), padding
SAME, VALID and EXPLICIT, floating dtypes, static spatial and channel sizes (the batch and run
axes may be unknown). Everything else, and every Conv2D whose filter is the same for all runs,
goes to the converter pfor had before, which gives exactly what it gave before `install()`.
Keras's Conv1D is a Conv2D on an expanded axis and its dilated convolutions are
SpaceToBatchND + a VALID, undilated Conv2D + BatchToSpaceND, so they are covered too;
DepthwiseConv2dNative and Conv3D are not Conv2D ops and keep pfor's own converters.

A function traced before `install()` keeps the graph it was traced with; install first::

    >>> import tensorflow as tf
    >>> from sweep.engines.population.convolution import install
    >>> install(); install()  # the second call does nothing
    >>> x = tf.random.normal([2, 6, 6, 3])
    >>> kernels = tf.random.normal([4, 3, 3, 3, 5])  # four runs, each its own kernel
    >>> conv = tf.function(lambda x, k: tf.vectorized_map(lambda k: tf.nn.conv2d(x, k, 1, "SAME"), k))
    >>> graph = conv.get_concrete_function(x, kernels).graph
    >>> any(op.type in ("While", "StatelessWhile") for op in graph.get_operations())
    False
    >>> y = conv(x, kernels)
    >>> y.shape
    TensorShape([4, 2, 6, 6, 5])
    >>> float(tf.reduce_max(tf.abs(y[2] - tf.nn.conv2d(x, kernels[2], 1, "SAME")))) < 1e-4
    True
    >>> uninstall()  # pfor's own converter again, for what is traced from now on
"""

from __future__ import annotations

import threading
from typing import NamedTuple

FORMS = ("matmul", "grouped")

_lock = threading.Lock()
# The converter pfor had for Conv2D before `install()`, which this module's delegates to.
_original = None
# None: chosen by device at conversion time; else one of FORMS (tests, benchmarks).
_forced_form: str | None = None


class Plan(NamedTuple):
    """One Conv2D's geometry, in NHWC: input and output sizes, kernel, stride, dilation, pads."""
    height: int
    width: int
    channels: int
    kh: int
    kw: int
    out_channels: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    out_height: int
    out_width: int


def install() -> None:
    """Make pfor (`tf.vectorized_map`, `pfor`) convert Conv2D ops with a loop-variant filter into
    batched ops. Idempotent and thread-safe; affects what is traced after it, in the whole process."""
    global _original
    from tensorflow.python.ops.parallel_for import pfor

    with _lock:
        current = pfor._pfor_converter_registry.get("Conv2D")
        if current is _convert_conv2d:
            return
        _original = current
        pfor._pfor_converter_registry["Conv2D"] = _convert_conv2d


def uninstall() -> None:
    """Give Conv2D back the converter it had before `install()` (for comparisons)."""
    global _original
    from tensorflow.python.ops.parallel_for import pfor

    with _lock:
        if pfor._pfor_converter_registry.get("Conv2D") is _convert_conv2d:
            if _original is None:
                del pfor._pfor_converter_registry["Conv2D"]
            else:
                pfor._pfor_converter_registry["Conv2D"] = _original
            _original = None


def installed() -> bool:
    from tensorflow.python.ops.parallel_for import pfor

    return pfor._pfor_converter_registry.get("Conv2D") is _convert_conv2d


def force_form(form: str | None) -> None:
    """Convert with `form` (one of FORMS) whatever the device; None chooses by device again.
    For tests and benchmarks: the grouped form runs on CPU under XLA only."""
    global _forced_form
    if form is not None and form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} or None, not {form!r}")
    _forced_form = form


def _delegate(pfor_input):
    from tensorflow.python.ops.parallel_for import pfor

    if _original is None:
        # No converter of its own: pfor's while_loop fallback, as it would do without one.
        raise pfor.ConversionNotImplementedError("no Conv2D converter to delegate to")
    return _original(pfor_input)


def _convert_conv2d(pfor_input):
    """pfor's converter for Conv2D: batched ops for a loop-variant filter that `plan_of` covers,
    else the converter pfor had (for a loop-variant filter: its per-iteration while_loop)."""
    from tensorflow.python.ops.parallel_for import pfor

    x, x_stacked, x_sparse = pfor_input.input(0)
    w, w_stacked, _ = pfor_input.input(1)
    if not w_stacked or x_sparse:
        return _delegate(pfor_input)
    plan = plan_of(pfor_input.op, x.shape, w.shape, x_stacked)
    if plan is None:
        return _delegate(pfor_input)
    form = choose_form(pfor_input.op.device)
    if form == "grouped":
        y = grouped_conv(x, w, plan, x_stacked, pfor_input.op)
    else:
        y = matmul_conv(x, w, plan, x_stacked)
    return [pfor.wrap(y, True)]


def choose_form(device: str) -> str:
    """The form for an op placed on `device` ("" when unplaced)."""
    if _forced_form is not None:
        return _forced_form
    device = device.upper()
    if "CPU" in device:
        return "matmul"
    if "GPU" in device:
        return "grouped"
    import tensorflow as tf

    return "grouped" if tf.config.list_logical_devices("GPU") else "matmul"


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's SAME padding (GetWindowedOutputSize): output size, pad before, pad after;
    `k` is the dilated kernel's extent."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def plan_of(op, x_shape, w_shape, x_stacked: bool) -> Plan | None:
    """The geometry of Conv2D `op` with converted input and stacked filter shapes, or None when
    this module does not cover it (then pfor's own converter does)."""
    if op.get_attr("data_format") != b"NHWC" or not op.outputs[0].dtype.is_floating:
        return None
    if x_shape.rank != (5 if x_stacked else 4) or w_shape.rank != 5:
        return None
    height, width, channels = x_shape[-3:]
    kh, kw, in_channels, out_channels = w_shape[1:]
    if None in (height, width, channels, kh, kw, in_channels, out_channels) or in_channels != channels:
        return None  # unknown sizes, or a grouped convolution already
    strides, dilations = op.get_attr("strides"), op.get_attr("dilations")
    if strides[0] != 1 or strides[3] != 1 or dilations[0] != 1 or dilations[3] != 1:
        return None
    sh, sw, dh, dw = strides[1], strides[2], dilations[1], dilations[2]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # the dilated kernel's extent
    padding = op.get_attr("padding")
    if padding == b"SAME":
        out_height, top, bottom = _same_pads(height, eh, sh)
        out_width, left, right = _same_pads(width, ew, sw)
    elif padding in (b"VALID", b"EXPLICIT"):
        top = bottom = left = right = 0
        if padding == b"EXPLICIT":
            explicit = list(op.get_attr("explicit_paddings"))
            if len(explicit) != 8 or any(explicit[i] for i in (0, 1, 6, 7)):
                return None
            top, bottom, left, right = explicit[2:6]
        out_height = (height + top + bottom - eh) // sh + 1
        out_width = (width + left + right - ew) // sw + 1
    else:
        return None
    if out_height <= 0 or out_width <= 0:
        return None  # the op's own error, from the op itself
    return Plan(height, width, channels, kh, kw, out_channels, sh, sw, dh, dw,
                (top, bottom, left, right), out_height, out_width)


def patches(x, plan: Plan):
    """[..., H, W, C] -> [..., Ho, Wo, kh*kw*C]: the windows each output reads, in the filter's
    (kh, kw, C) order, cut with strided slices so that the gradient is batched too."""
    import tensorflow as tf

    top, bottom, left, right = plan.pads
    if any(plan.pads):
        x = tf.pad(x, [[0, 0]] * (x.shape.rank - 3) + [[top, bottom], [left, right], [0, 0]])
    span_h, span_w = (plan.out_height - 1) * plan.sh + 1, (plan.out_width - 1) * plan.sw + 1
    windows = [x[..., i * plan.dh:i * plan.dh + span_h:plan.sh, j * plan.dw:j * plan.dw + span_w:plan.sw, :]
               for i in range(plan.kh) for j in range(plan.kw)]
    return windows[0] if len(windows) == 1 else tf.concat(windows, axis=-1)


def matmul_conv(x, w, plan: Plan, x_stacked: bool):
    """Every run's convolution as patches times kernels: `x` [K, B, H, W, C] (or [B, H, W, C]
    shared by the runs), `w` [K, kh, kw, C, O]; returns [K, B, Ho, Wo, O]."""
    import tensorflow as tf

    depth = plan.kh * plan.kw * plan.channels
    cols = patches(x, plan)
    lead = tf.shape(cols)[:-1]  # [K, B, Ho, Wo] or [B, Ho, Wo]
    if x_stacked:
        k = tf.shape(w)[0]
        y = tf.linalg.matmul(tf.reshape(cols, tf.stack([k, -1, depth])),
                             tf.reshape(w, tf.stack([k, depth, plan.out_channels])))
        return tf.reshape(y, tf.concat([lead, [plan.out_channels]], 0))
    # One input for all runs: its patches once, all kernels side by side.
    k = tf.shape(w)[0]
    kernels = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), tf.stack([depth, -1]))  # [P, K*O]
    y = tf.linalg.matmul(tf.reshape(cols, [-1, depth]), kernels)
    y = tf.reshape(y, tf.concat([lead, tf.stack([k, plan.out_channels])], 0))  # [B, Ho, Wo, K, O]
    return tf.transpose(y, [3, 0, 1, 2, 4])


def grouped_conv(x, w, plan: Plan, x_stacked: bool, op):
    """Every run's convolution as one Conv2D with K feature groups (or, for an input shared by
    the runs, one Conv2D with K*O output channels), with `op`'s padding and flags; same
    arguments and result as `matmul_conv`."""
    import tensorflow as tf

    k = tf.shape(w)[0]
    kernels = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]),
                         tf.concat([tf.shape(w)[1:4], [-1]], 0))  # [kh, kw, C, K*O]
    if x_stacked:
        shape = tf.shape(x)
        x = tf.reshape(tf.transpose(x, [1, 2, 3, 0, 4]), tf.concat([shape[1:4], [-1]], 0))  # [B, H, W, K*C]
    y = tf.raw_ops.Conv2D(
        input=x, filter=kernels, strides=[1, plan.sh, plan.sw, 1],
        use_cudnn_on_gpu=op.get_attr("use_cudnn_on_gpu"), padding=op.get_attr("padding"),
        explicit_paddings=op.get_attr("explicit_paddings"), data_format="NHWC",
        dilations=[1, plan.dh, plan.dw, 1])
    y = tf.reshape(y, tf.concat([tf.shape(y)[:3], tf.stack([k, plan.out_channels])], 0))  # [B, Ho, Wo, K, O]
    return tf.transpose(y, [3, 0, 1, 2, 4])
