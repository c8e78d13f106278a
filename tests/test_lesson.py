import logging
import warnings

from stablebeat_utils import lesson


def test_library_noise_goes_to_the_log_and_other_warnings_still_show(monkeypatch, caplog):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *a, **k: shown.append(str(message)))
    monkeypatch.setattr(lesson, "_original_showwarning", None)
    lesson.quiet_library_noise()
    lesson.quiet_library_noise()  # idempotent: installed once
    with caplog.at_level(logging.INFO, logger="stablebeat_utils.lesson"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit(
            "`torch.cuda.amp` is deprecated", FutureWarning, "/venv/lib/python3.11/site-packages/torch/amp.py", 10
        )
        warnings.warn_explicit(
            "Should have tb<=t1", UserWarning, "/venv/lib/python3.11/site-packages/torchsde/_brownian/x.py", 3
        )
        warnings.warn_explicit(
            "User provided device_type of 'cuda', but CUDA is not available or torch_xla is "
            "imported. Disabling autocast.",
            UserWarning,
            "/venv/lib/python3.11/site-packages/stable_audio_tools/models/conditioners.py",
            527,
        )
        warnings.warn_explicit(
            "You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.",
            UserWarning,
            "/venv/lib/python3.11/site-packages/pytorch_lightning/trainer/configuration_validator.py",
            70,
        )
        warnings.warn_explicit(
            "Found 303 module(s) in eval mode at the start of training. This may lead to unexpected behavior.",
            UserWarning,
            "/venv/lib/python3.11/site-packages/pytorch_lightning/loops/fit_loop.py",
            538,
        )
        warnings.warn_explicit(
            "a Lightning UserWarning that may matter",
            UserWarning,
            "/venv/lib/python3.11/site-packages/pytorch_lightning/trainer/connectors/data_connector.py",
            1,
        )
        warnings.warn_explicit(
            "an engine's UserWarning that may matter",
            UserWarning,
            "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py",
            9,
        )
        warnings.warn_explicit("02_tag: 2 calibration answers unused", UserWarning, "/course/tag.py", 5)
        warnings.warn_explicit("a FutureWarning of the course itself", FutureWarning, "/course/train.py", 7)
    assert shown == [
        "a Lightning UserWarning that may matter",
        "an engine's UserWarning that may matter",
        "02_tag: 2 calibration answers unused",
        "a FutureWarning of the course itself",
    ]
    assert "torch.cuda.amp" in caplog.text and "tb<=t1" in caplog.text and "eval mode" in caplog.text


def test_lightnings_advert_goes_to_the_log_and_its_other_messages_still_show(caplog):
    lesson.quiet_library_noise()
    lesson.quiet_library_noise()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert sum(isinstance(f, lesson._NoTips) for f in rank_zero.filters) == 1
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero.info("GPU available: False, used: False")
    shown = [r.getMessage() for r in caplog.records if r.name == "pytorch_lightning.utilities.rank_zero"]
    assert shown == ["GPU available: False, used: False"]
    assert "litlogger" in caplog.text  # kept in the log, out of the lesson


_FAKE_TF = '''"""Stands in for TensorFlow 2.20: its native code writes to fd 2 when loaded."""
import ctypes, os
os.write(2, b"2026-12-02 12:00:00.000000: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on.\\n")
ctypes.CDLL(None).dprintf(2, b"I external/local_xla/xla/stream_executor/cuda/cuda_executor.cc] Could not find cuda drivers on your machine, GPU will not be used.\\n")
print("a print at import")
'''


def test_native_library_output_stays_out_of_the_lesson_and_goes_to_the_log(tmp_path, monkeypatch):
    """A kernel (as Jupyter/Colab runs the lesson) copies whatever reaches fd 2 into the cell's output;
    the SAO lessons load TensorFlow (when installed) with fd 2 pointed at the log."""
    # ipykernel leaves fd 2 alone in a kernel that inherits PYTEST_CURRENT_TEST; Colab's does not
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    import nbformat
    from nbclient import NotebookClient

    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(_FAKE_TF)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import logging, sys\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "logging.basicConfig(filename=" + repr(str(tmp_path / "lesson.log")) + ", level=logging.INFO)\n"
            "from stablebeat_utils import lesson\n"
            "lesson.quiet_library_noise('05_train')\n"
            "import tensorflow, time\n"
            "time.sleep(1.5)  # the kernel copies fd 2 into the output from a thread\n"
            "print('lesson goes on')"
        )
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    shown = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "lesson goes on" in shown
    assert "oneDNN" not in shown and "cuda drivers" not in shown and "a print at import" not in shown, shown
    logged = (tmp_path / "lesson.log").read_text()
    assert "oneDNN custom operations are on" in logged and "Could not find cuda drivers" in logged, logged
    assert "a print at import" in logged
