"""Worker faults on Ray: an actor killed mid-batch, a run that raises, a run that hangs past the
per-run timeout, a node of a two-node `ray.cluster_utils.Cluster` removed mid-sweep. Nothing is
lost or duplicated and the sweep finishes (`fault_cases` holds each case; tests/test_pool.py
runs the first three in their quick form)."""

import pytest

import fault_cases


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from scripted_engine import ship_to_workers
    from sweep.driver.cluster import ray_cluster

    ship_to_workers()
    with ray_cluster(None, num_cpus=3):
        yield ray
    assert not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fault_cases.WORKER_FAULTS))
def test_worker_fault(name, request, tmp_path):
    if request.config.getoption("--quick"):
        pytest.skip("quick form: tests/test_pool.py covers it")
    request.getfixturevalue("local_ray")
    result = fault_cases.WORKER_FAULTS[name](tmp_path)
    assert result.ok, "\n".join(result.problems)


def test_a_removed_node_loses_nothing(tmp_path):
    """Its actor dies; the pool sees the cluster shrank and does not wait for a replacement that
    Ray could never place; the runs go to the node that is left."""
    result = fault_cases.node_removed(tmp_path)
    assert result.ok, "\n".join(result.problems)
    assert (result.lost, result.duplicated) == (0, 0)
