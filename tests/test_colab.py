import pytest

from stablebeat_utils import colab


def test_demo_profile_needs_no_gpu():
    assert colab.check_gpu("demo", {"cuda": False, "memory_gb": 0.0}) == {"cuda": False, "memory_gb": 0.0}


def test_stop_messages_name_what_is_needed(tmp_path):
    prof = tmp_path / "big.yaml"
    prof.write_text("requires:\n  gpu_memory_gb: 38\n  gpu_hint: A100 40 GB\n  smaller_gpu_profile: colab_lora\n")
    with pytest.raises(colab.Stop, match="needs a GPU with at least 38 GB.*has none.*A100 40 GB"):
        colab.check_gpu(str(prof), {"cuda": False, "memory_gb": 0.0})
    with pytest.raises(colab.Stop, match="Tesla T4 has 15 GB.*'colab_lora'"):
        colab.check_gpu(str(prof), {"cuda": True, "name": "Tesla T4", "memory_gb": 15.0})
    ok = {"cuda": True, "name": "A100", "memory_gb": 40.0}
    assert colab.check_gpu(str(prof), ok) is ok


def test_only_missing_requirements_are_installed(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("# comment\nnumpy>=1\nPyYAML>=5\ndefinitely-not-installed-pkg==1.0\n")
    assert colab.missing_requirements(req) == ["definitely-not-installed-pkg==1.0"]


def test_drive_is_never_mounted_outside_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    with pytest.raises(colab.Stop, match="only be mounted inside Colab"):
        colab.mount_drive()
