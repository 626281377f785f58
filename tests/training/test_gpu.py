import pytest

from kilotune.training import gpu


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("KILOTUNE_GPU", "CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_pinned_gpu_and_no_preallocation(clean_env):
    import os

    clean_env.setenv("KILOTUNE_GPU", "3")
    assert gpu.configure_gpu() == "gpu:3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_least_used_gpu_is_taken_and_ties_spread_by_host(clean_env):
    import os

    clean_env.setattr(gpu, "gpu_memory_used", lambda: {0: 9000, 1: 100, 2: 5000})
    assert gpu.configure_gpu() == "gpu:1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    picks = set()
    for host in ("a", "b", "c", "d", "e", "f", "g", "h"):
        clean_env.delenv("CUDA_VISIBLE_DEVICES")
        clean_env.setattr(gpu, "gpu_memory_used", lambda: {0: 0, 1: 0, 2: 0, 3: 0})
        clean_env.setattr(gpu.socket, "gethostname", lambda h=host: h)
        picks.add(gpu.configure_gpu())
    assert len(picks) >= 2, "idle GPUs are shared out, not all GPU 0"


def test_no_gpu_means_cpu(clean_env):
    clean_env.setattr(gpu, "gpu_memory_used", dict)
    assert gpu.configure_gpu() == "cpu"


def test_out_of_memory_is_recognised():
    assert gpu.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: OOM when allocating tensor"))
    assert not gpu.is_out_of_memory(ValueError("shapes do not match"))
