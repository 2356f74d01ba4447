"""`sweep.engines.population.convolution`: Conv2D with a filter per run under `tf.vectorized_map`.

Every case is checked against the per-run op, forward values and gradients, with and without XLA,
and in each form (`matmul`, the CPU's, and `grouped`, the GPU's, under XLA); the graphs of the
forward and gradient must hold no while_loop. Cases are traced together, one function per form
and XLA setting, so that the file compiles a handful of programs, not one per case."""

import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sweep.engines.population import convolution  # noqa: E402

TOL = 1e-5
WHILE = {"While", "StatelessWhile"}

# (name, rank, K, stride, padding, dilation, input shared by the runs); 2-D inputs [B, H, W, C],
# 1-D inputs [B, W, C]. TensorFlow's CPU kernel takes no dilation with a stride, so neither does
# the reference here.
CASES = [
    ("2d_s1_same", 2, 3, 1, "SAME", 1, False),
    ("2d_s2_same", 2, 4, 2, "SAME", 1, False),
    ("2d_s1_valid", 2, 5, 1, "VALID", 1, False),
    ("2d_s2_valid", 2, 3, 2, "VALID", 1, False),
    ("2d_dil_same", 2, 4, 1, "SAME", 2, False),
    ("2d_dil_valid", 2, 3, 1, "VALID", 2, False),
    ("2d_explicit", 2, 3, 2, [[0, 0], [1, 2], [0, 1], [0, 0]], 1, False),
    ("2d_shared_s2_same", 2, 4, 2, "SAME", 1, True),
    ("2d_shared_dil_valid", 2, 3, 1, "VALID", 2, True),
    ("1d_s1_same", 1, 3, 1, "SAME", 1, False),
    ("1d_s2_valid", 1, 5, 2, "VALID", 1, False),
    ("1d_dil_same", 1, 4, 1, "SAME", 2, False),
    ("1d_shared_s1_valid", 1, 3, 1, "VALID", 1, True),
]


def conv(x, w, rank, stride, padding, dilation):
    if rank == 2:
        return tf.nn.conv2d(x, w, stride, padding, dilations=dilation)
    return tf.nn.conv1d(x, w, stride, padding, dilations=dilation)  # a Conv2D on an expanded axis


def case_data(seed: int):
    rng = np.random.default_rng(seed)
    data = []
    for name, rank, k, stride, padding, dilation, shared in CASES:
        space = (9, 8) if rank == 2 else (11,)
        kernel = (3, 2) if rank == 2 else (3,)
        x_shape = (2, *space, 3) if shared else (k, 2, *space, 3)
        x = tf.constant(rng.standard_normal(x_shape), tf.float32)
        w = tf.constant(rng.standard_normal((k, *kernel, 3, 4)), tf.float32)
        data.append((x, w))
    return data


def loss_of(y):
    return tf.reduce_sum(y * tf.sin(y))  # a gradient that differs at every output


def vectorized(data):
    """Every case's vectorized output and gradients w.r.t. its input and its stacked filters."""
    out = []
    for (name, rank, k, stride, padding, dilation, shared), (x, w) in zip(CASES, data):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            if shared:
                y = tf.vectorized_map(lambda wi: conv(x, wi, rank, stride, padding, dilation), w)
            else:
                y = tf.vectorized_map(lambda a: conv(a[0], a[1], rank, stride, padding, dilation), (x, w))
            total = loss_of(y)
        out.append((y, *tape.gradient(total, [x, w])))
    return out


def per_run(data):
    out = []
    for (name, rank, k, stride, padding, dilation, shared), (x, w) in zip(CASES, data):
        ys, gxs, gws = [], [], []
        for i in range(k):
            xi, wi = (x if shared else x[i]), w[i]
            with tf.GradientTape() as tape:
                tape.watch([xi, wi])
                y = conv(xi, wi, rank, stride, padding, dilation)
                total = loss_of(y)
            gx, gw = tape.gradient(total, [xi, wi])
            ys.append(y), gxs.append(gx), gws.append(gw)
        out.append((tf.stack(ys), tf.add_n(gxs) if shared else tf.stack(gxs), tf.stack(gws)))
    return out


def relative(a, b) -> float:
    return float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))


def op_types(concrete) -> set[str]:
    """Every op type in a concrete function's graph and the functions it calls (XLA's are there)."""
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


@pytest.fixture(scope="module")
def installed():
    was = convolution.installed()
    convolution.install()
    yield
    convolution.force_form(None)
    if not was:
        convolution.uninstall()


@pytest.fixture(scope="module")
def reference():
    data = case_data(0)
    return data, per_run(data)


# The grouped form is the GPU's; on a CPU only XLA runs it (TensorFlow's CPU kernel for the filter
# gradient takes no feature groups), which is how it is checked here.
@pytest.mark.parametrize("form, jit", [("matmul", False), ("matmul", True), ("grouped", True)],
                         ids=["matmul", "matmul-xla", "grouped-xla"])
def test_vectorized_conv_matches_per_run_forward_and_gradients(installed, reference, form, jit):
    data, expected = reference
    convolution.force_form(form)
    try:
        fn = tf.function(vectorized, jit_compile=jit)
        types = op_types(fn.get_concrete_function(data))
        got = fn(data)
    finally:
        convolution.force_form(None)
    assert not types & WHILE, sorted(types)
    if form == "matmul":
        assert types & {"BatchMatMulV2", "MatMul"}
    for case, g, e in zip(CASES, got, expected):
        for what, a, b in zip(("output", "input gradient", "filter gradient"), g, e):
            assert a.shape == b.shape, (case[0], what)
            assert relative(a, b) <= TOL, (case[0], what, relative(a, b))


def test_without_install_pfor_loops_over_the_runs(reference):
    """What install() changes: pfor's own converter runs a per-run while_loop for these."""
    was = convolution.installed()
    convolution.uninstall()
    try:
        data = reference[0][:1]
        fn = tf.function(lambda d: tf.vectorized_map(lambda a: conv(a[0], a[1], 2, 1, "SAME", 1), d[0]))
        assert op_types(fn.get_concrete_function(data)) & WHILE
    finally:
        if was:
            convolution.install()


def test_a_filter_shared_by_the_runs_keeps_pfors_own_converter(installed):
    x = tf.random.stateless_normal([3, 2, 7, 7, 2], seed=[1, 2])
    w = tf.random.stateless_normal([3, 3, 2, 4], seed=[3, 4])
    fn = tf.function(lambda x: tf.vectorized_map(lambda xi: tf.nn.conv2d(xi, w, 2, "SAME"), x))
    types = op_types(fn.get_concrete_function(x))
    assert "Conv2D" in types and not types & (WHILE | {"BatchMatMulV2"})
    y = fn(x)
    assert relative(y, tf.stack([tf.nn.conv2d(x[i], w, 2, "SAME") for i in range(3)])) <= TOL


def test_uncovered_convolutions_are_refused_so_pfor_falls_back():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3, 8, 8])
        w = tf.compat.v1.placeholder(tf.float32, [3, 3, 3, 4])
        nchw = tf.nn.conv2d(x, w, 1, "SAME", data_format="NCHW").op
        xi = tf.compat.v1.placeholder(tf.int32, [2, 8, 8, 3])
        integer = tf.raw_ops.Conv2D(input=xi, filter=tf.cast(w, tf.int32), strides=[1, 1, 1, 1], padding="SAME").op
        nhwc = tf.nn.conv2d(tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3]), w, 1, "SAME").op
    stacked_w = tf.TensorShape([5, 3, 3, 3, 4])
    assert convolution.plan_of(nchw, tf.TensorShape([5, 2, 3, 8, 8]), stacked_w, True) is None
    assert convolution.plan_of(integer, tf.TensorShape([5, 2, 8, 8, 3]), stacked_w, True) is None
    # Unknown spatial size, a grouped convolution already, an input smaller than the kernel.
    assert convolution.plan_of(nhwc, tf.TensorShape([5, 2, None, 8, 3]), stacked_w, True) is None
    assert convolution.plan_of(nhwc, tf.TensorShape([5, 2, 8, 8, 6]), stacked_w, True) is None
    with graph.as_default():
        valid = tf.nn.conv2d(tf.compat.v1.placeholder(tf.float32, [None] * 4), w, 1, "VALID").op
    assert convolution.plan_of(valid, tf.TensorShape([5, 2, 2, 2, 3]), stacked_w, True) is None
    plan = convolution.plan_of(nhwc, tf.TensorShape([None, None, 8, 8, 3]), stacked_w, True)
    assert plan.pads == (1, 1, 1, 1) and (plan.out_height, plan.out_width) == (8, 8)


def test_the_form_follows_the_ops_device():
    assert convolution.choose_form("/job:localhost/replica:0/task:0/device:CPU:0") == "matmul"
    assert convolution.choose_form("/device:GPU:1") == "grouped"
    expected = "grouped" if tf.config.list_logical_devices("GPU") else "matmul"
    assert convolution.choose_form("") == expected
    convolution.force_form("grouped")
    try:
        assert convolution.choose_form("/device:CPU:0") == "grouped"
    finally:
        convolution.force_form(None)
    with pytest.raises(ValueError):
        convolution.force_form("winograd")

def test_install_is_idempotent_and_thread_safe():
    from tensorflow.python.ops.parallel_for import pfor

    was = convolution.installed()
    convolution.uninstall()
    theirs = pfor._pfor_converter_registry["Conv2D"]
    try:
        threads = [threading.Thread(target=convolution.install) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        convolution.install()
        assert pfor._pfor_converter_registry["Conv2D"] is convolution._convert_conv2d
        assert convolution._original is theirs  # never itself: no delegation loop
        convolution.uninstall()
        assert pfor._pfor_converter_registry["Conv2D"] is theirs
    finally:
        if was:
            convolution.install()


def keras_population(model, k: int, seed: int):
    """K runs' stacked trainable variables, each run's initial weights perturbed its own way."""
    rng = np.random.default_rng(seed)
    return [tf.constant(np.stack([v.numpy() + 0.1 * rng.standard_normal(v.shape) for _ in range(k)]), tf.float32)
            for v in model.trainable_variables]


def keras_step(model, weights, x, y):
    """Every run's loss through `stateless_call` under vectorized_map; one gradient of their sum."""
    def loss(args):
        w, xb, yb = args
        logits, _ = model.stateless_call(list(w), [], xb, training=True)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))

    with tf.GradientTape() as tape:
        tape.watch(weights)
        losses = tf.vectorized_map(loss, (weights, x, y))
        total = tf.reduce_sum(losses)
    return losses, tape.gradient(total, weights)


def keras_per_run(model, weights, x, y):
    losses, grads = [], []
    for i in range(x.shape[0]):
        w = [v[i] for v in weights]
        with tf.GradientTape() as tape:
            tape.watch(w)
            logits, _ = model.stateless_call(w, [], x[i], training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i], logits=logits))
        losses.append(loss), grads.append(tape.gradient(loss, w))
    return tf.stack(losses), [tf.stack(g) for g in zip(*grads)]


KERAS_MODELS = {
    "conv2d": lambda keras: [keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10)],
    # Keras's Conv1D: Conv2D on an expanded axis; dilated: SpaceToBatchND around it; depthwise: not
    # a Conv2D, pfor's own converter.
    "conv1d": lambda keras: [keras.Input((12, 2)), keras.layers.Conv1D(5, 3, strides=2, padding="same"),
                             keras.layers.Conv1D(4, 3, dilation_rate=2, padding="causal"),
                             keras.layers.Flatten(), keras.layers.Dense(10)],
    "depthwise": lambda keras: [keras.Input((8, 8, 2)), keras.layers.DepthwiseConv2D(3),
                                keras.layers.Conv2D(3, 1), keras.layers.Flatten(), keras.layers.Dense(10)],
}


@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_keras_model_stateless_call_under_vectorized_map(installed, name):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(KERAS_MODELS[name](keras))
    k, shape = 4, model.input_shape[1:]
    weights = keras_population(model, k, seed=1)
    x = tf.random.stateless_normal([k, 5, *shape], seed=[5, 6])
    y = tf.random.stateless_uniform([k, 5], seed=[7, 8], maxval=10, dtype=tf.int32)
    losses, grads = keras_per_run(model, weights, x, y)
    for jit in ([False, True] if name == "conv2d" else [False]):
        fn = tf.function(lambda w, x, y: keras_step(model, w, x, y), jit_compile=jit)
        types = op_types(fn.get_concrete_function(weights, x, y))
        assert not types & WHILE, (jit, sorted(types))
        got_losses, got_grads = fn(weights, x, y)
        assert relative(got_losses, losses) <= TOL, jit
        for v, a, b in zip(model.trainable_variables, got_grads, grads):
            assert relative(a, b) <= TOL, (jit, v.path, relative(a, b))

