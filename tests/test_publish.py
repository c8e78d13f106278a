import json

import pytest

from stablebeat_utils import publish
from stablebeat_utils.runs import JsonlLog, Run


def _fake_run(tmp_path):
    """A run folder with the rows later stages write (format per the run-folder contract)."""
    run = Run(tmp_path / "run")
    segs = JsonlLog(run.stage_dir("01_segment") / "segments.jsonl")
    segs.append(*[{"clip_id": f"c{i}", "source": f"t{i // 2}.wav", "start": 10.0 * i, "duration": 30.0,
                   "path": f"01_segment/clips/c{i}.wav", "status": "ok", "reason": ""} for i in range(4)])
    JsonlLog(run.stage_dir("02_tag") / "tags.jsonl").append(
        *[{"clip_id": f"c{i}", "instruments_tags": ["synth bells", "808"], "moods_tags": ["dark"],
           "genres_tags": ["cloud trap"]} for i in range(4)])
    JsonlLog(run.stage_dir("03_tempo_key") / "tempo_key.jsonl").append(
        *[{"clip_id": f"c{i}", "tempo": 100.0 + i, "key": "G", "scale": "minor"} for i in range(4)])
    JsonlLog(run.stage_dir("04_prompts") / "prompts.jsonl").append(
        {"clip_id": "c0", "filepath": "01_segment/clips/c0.wav", "start": 0, "duration": 30,
         "prompt": "A dark cloud trap beat at 100 BPM in G minor, with synth bells and 808.",
         "prompt_source": "template"})
    export = run.stage_dir("05_train") / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "model_config.json").write_text("{}")
    run.mark_done("05_train", params={"mode": "lora", "lr": 5e-5, "batch_size": 16})
    gen = run.stage_dir("06_generate")
    (gen / "a.wav").write_bytes(b"RIFF")
    JsonlLog(gen / "generations.jsonl", key="path").append(
        {"path": "06_generate/a.wav", "model": "finetune", "prompt": "A dark beat", "seed": 1})
    return run


def test_dry_run_writes_card_and_upload_list_and_never_the_token(tmp_path, monkeypatch):
    secret = "hf_SENTINEL_publish_987"
    monkeypatch.setenv("HF_TOKEN", secret)
    run = _fake_run(tmp_path)
    summary = publish.run(run.root, "someone/my-beats", dry_run=True)
    card = (run.root / "publish" / "README.md").read_text()
    assert "base_model: stabilityai/stable-audio-open-1.0" in card
    assert "4 clips from 2 tracks" in card and "synth bells (4)" in card
    assert "G minor (4)" in card and "A dark cloud trap beat" in card
    assert "`mode`: lora" in card and "07_evaluate has not been run" in card
    uploads = json.loads((run.root / "publish" / "upload_list.json").read_text())
    assert {u["path_in_repo"] for u in uploads["files"]} == {
        "README.md", "model.safetensors", "model_config.json", "samples/a.wav"}
    assert summary["dry_run"] and summary["files"] == 4
    for f in run.root.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore")


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(publish.PublishError, match="run 05_train first"):
        publish.run(tmp_path, "someone/x")
    with pytest.raises(publish.PublishError, match="user/model-name"):
        publish.run(tmp_path, "noslash")


def test_push_without_token_refuses(tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    run = _fake_run(tmp_path)
    with pytest.raises(publish.PublishError, match="no Hugging Face token"):
        publish.run(run.root, "someone/x", dry_run=False)
