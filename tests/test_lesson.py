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
