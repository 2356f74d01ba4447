"""K for any Keras model: from the memory a run measurably needs (its weights and slots, and the
float32 values its traced forward pass computes per sample), on a CPU worker and on a (stubbed)
GPU worker, which fills its device up to GPU_MAX_K."""

from sweep.engines.population import GPU_MAX_K, Graph, PopulationEngine, initial_model, population_size, sizing
from sweep.spec import parse

USER = '[study]\nname="u"\nexample="builders:{}"\nepochs=1\nseeds=[0]\n[grid]\nlearning_rate=[0.01]'


def graph_of(builder: str) -> Graph:
    s = parse(USER.format(builder), "u.toml")
    arch, _ = initial_model(s, s.plan()[0].config, 0)
    assert isinstance(arch, Graph)
    return arch


def test_a_graphs_activations_are_measured_from_its_traced_forward_pass():
    small, wide = graph_of("normalized_model"), graph_of("wide_model")
    # normalized_model: 4 inputs -> Dense(8) -> LayerNormalization -> Dense(1); at least its
    # inputs and layer outputs.
    assert small.widths >= 4 + 8 + 8 + 1
    assert wide.widths > 50 * small.widths  # Dense(1024) x 2 on 4 inputs


def test_k_follows_the_measured_cost_on_cpu_and_fills_a_gpu(monkeypatch):
    small, wide = graph_of("normalized_model"), graph_of("wide_model")
    monkeypatch.setattr(sizing, "gpu_free_memory", lambda: None)
    monkeypatch.setattr(sizing, "available_host_memory", lambda: 64 << 30)
    assert population_size(small, 32, 200, "adam") == sizing.CPU_MAX_K
    monkeypatch.setattr(sizing, "available_host_memory", lambda: 256 << 20)
    assert 1 <= population_size(wide, 32, 200, "adam") < population_size(small, 32, 200, "adam")
    monkeypatch.setattr(sizing, "gpu_free_memory", lambda: 64 << 30)
    assert population_size(small, 32, 200, "adam") == GPU_MAX_K
    monkeypatch.setattr(sizing, "gpu_free_memory", lambda: 1 << 30)
    k = population_size(wide, 32, 200, "adam")
    per_run = sizing.bytes_per_run(wide, 32, 200, "adam")
    assert k == int(sizing.GPU_MEMORY_FRACTION * (1 << 30)) // per_run and k < GPU_MAX_K


def test_a_user_builder_has_a_capacity_on_the_population_engine():
    for builder in ("tiny_model", "normalized_model"):
        s = parse(USER.format(builder), "u.toml")
        assert PopulationEngine().capacity(s) >= 1
