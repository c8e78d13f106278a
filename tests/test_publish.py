import json
from pathlib import Path

import pytest

from stablebeat_utils import publish
from stablebeat_utils.runs import JsonlLog, Run


def _fake_run(tmp_path):
    """A run folder with the rows later stages write (format per the run-folder contract)."""
    run = Run(tmp_path / "run")
    segs = JsonlLog(run.stage_dir("01_segment") / "segments.jsonl")
    segs.append(
        *[
            {
                "clip_id": f"c{i}",
                "source": f"t{i // 2}.wav",
                "start": 10.0 * i,
                "duration": 30.0,
                "path": f"01_segment/clips/c{i}.wav",
                "status": "ok",
                "reason": "",
            }
            for i in range(4)
        ]
    )
    JsonlLog(run.stage_dir("02_tag") / "tags.jsonl").append(
        *[
            {
                "clip_id": f"c{i}",
                "instruments_tags": ["synth bells", "808"],
                "moods_tags": ["dark"],
                "genres_tags": ["cloud trap"],
            }
            for i in range(4)
        ]
    )
    JsonlLog(run.stage_dir("03_tempo_key") / "tempo_key.jsonl").append(
        *[{"clip_id": f"c{i}", "tempo": 100.0 + i, "key": "G", "scale": "minor"} for i in range(4)]
    )
    JsonlLog(run.stage_dir("04_prompts") / "prompts.jsonl").append(
        {
            "clip_id": "c0",
            "filepath": "01_segment/clips/c0.wav",
            "start": 0,
            "duration": 30,
            "prompt": "A dark cloud trap beat at 100 BPM in G minor, with synth bells and 808.",
            "prompt_source": "template",
        }
    )
    export = run.stage_dir("05_train") / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "model_config.json").write_text("{}")
    (export / "LICENSE.md").write_text("STABILITY AI COMMUNITY LICENSE AGREEMENT (a stand-in copy)\n")
    run.mark_done("05_train", params={"mode": "lora", "lr": 5e-5, "batch_size": 16})
    gen = run.stage_dir("06_generate")
    rows = []
    # two models × two prompts, the same file name under each model's folder (as 06 writes them)
    for i, prompt in enumerate(["A dark beat at 90 BPM", "A jazzy chillhop beat | at 85 BPM"]):
        for model in ("base", "finetune"):
            path = gen / "audio" / model / f"{i:02d}-seed{42 + i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"RIFF {model} {i}".encode())
            rows.append(
                {
                    "path": f"06_generate/audio/{model}/{path.name}",
                    "model": model,
                    "prompt": prompt,
                    "prompt_idx": i,
                    "seed": 42 + i,
                }
            )
    JsonlLog(gen / "generations.jsonl", key="path").append(*rows)
    run.mark_done(
        "06_generate",
        params={
            "steps": 200,
            "cfg_scale": 7.0,
            "sampler_type": "dpmpp-3m-sde",
            "seconds_start": 0.0,
            "seconds_total": 47.0,
        },
    )
    return run


def _with_evaluation(run):
    """07's report (it links its plots, relative to 07_evaluate/) and the plots themselves."""
    ev = run.stage_dir("07_evaluate")
    (ev / "plots").mkdir()
    for name in ("metric_bars.png", "spectrograms_prompt01.png"):
        (ev / "plots" / name).write_bytes(b"\x89PNG " + name.encode())
    (ev / "report.md").write_text(
        "# 07_evaluate — base vs fine-tune\n\n## Summary\n\n"
        "| Model | CLAP Prompt Score |\n|---|---|\n| fine-tune | 0.412 |\n\n## Plots\n\n"
        "![metric_bars](plots/metric_bars.png)\n![spectrograms_prompt01](plots/spectrograms_prompt01.png)\n"
    )
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
    assert "`mode` = lora" in card and "07_evaluate has not been run" in card
    uploads = json.loads((run.root / "publish" / "upload_list.json").read_text())
    assert {u["path_in_repo"] for u in uploads["files"]} == {
        "README.md",
        "model.safetensors",
        "model_config.json",
        "samples/base/00-seed42.wav",
        "samples/finetune/00-seed42.wav",
        "samples/base/01-seed43.wav",
        "samples/finetune/01-seed43.wav",
        "NOTICE",
        "LICENSE.md",
    }
    assert summary["dry_run"] and summary["files"] == 9
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


def test_two_models_two_prompts_every_sample_has_its_own_path_and_every_link_is_uploaded(tmp_path):
    run = _with_evaluation(_fake_run(tmp_path))
    publish.run(run.root, "someone/my-beats", dry_run=True)
    card = (run.root / "publish" / "README.md").read_text()
    files = json.loads((run.root / "publish" / "upload_list.json").read_text())["files"]
    repo_paths = [u["path_in_repo"] for u in files]
    assert len(repo_paths) == len(set(repo_paths))  # nothing overwrites anything
    samples = {u["path_in_repo"]: u["local"] for u in files if u["path_in_repo"].startswith("samples/")}
    assert len(samples) == 4 and len(set(samples.values())) == 4
    assert samples["samples/base/00-seed42.wav"].endswith("audio/base/00-seed42.wav")
    assert samples["samples/finetune/00-seed42.wav"].endswith("audio/finetune/00-seed42.wav")
    links = publish.card_links(card)
    assert "plots/metric_bars.png" in links and "samples/finetune/01-seed43.wav" in links
    assert set(links) <= set(repo_paths), set(links) - set(repo_paths)  # every linked file is uploaded
    # the card: evaluation, dataset, recipe, licence, loading lines
    assert "| fine-tune | 0.412 |" in card and "4 clips from 2 tracks" in card
    assert "## Recipe" in card and "200 steps, CFG 7.0" in card and "`mode` = lora" in card
    assert "license_name: stable-audio-community" in card and "Stability AI Community License" in card
    assert "get_pretrained_model('someone/my-beats')" in card and "generate_diffusion_cond" in card
    assert "| A jazzy chillhop beat \\| at 85 BPM | [01-seed43.wav](samples/base/01-seed43.wav) |" in card


def test_a_card_link_to_a_missing_file_stops_before_any_upload(tmp_path):
    run = _with_evaluation(_fake_run(tmp_path))
    (run.root / "07_evaluate" / "plots" / "metric_bars.png").unlink()
    with pytest.raises(publish.PublishError, match="plots/metric_bars.png"):
        publish.run(run.root, "someone/my-beats", dry_run=True)


class FakeHub:
    """A stand-in for huggingface_hub.HfApi: keeps the repo's files in memory; can fail a commit."""

    def __init__(self, fail_on: str | None = None):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[list[str]] = []
        self.fail_on = fail_on

    def create_repo(self, repo_id, private=True, exist_ok=False):
        assert exist_ok
        self.repos.setdefault(repo_id, {})

    def list_repo_files(self, repo_id):
        return sorted(self.repos[repo_id])

    def create_commit(self, repo_id, operations, commit_message):
        names = [op.path_in_repo for op in operations]
        if self.fail_on and self.fail_on in names:
            raise ConnectionError("502 Bad Gateway")
        for op in operations:
            with open(op.path_or_fileobj, "rb") as fh:
                self.repos[repo_id][op.path_in_repo] = fh.read()
        self.commits.append(names)


def test_push_to_a_stand_in_hub_fails_clearly_and_resumes_what_is_left(tmp_path, monkeypatch):
    secret = "hf_SENTINEL_push_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    run = _with_evaluation(_fake_run(tmp_path))
    hub = FakeHub(fail_on="samples/base/00-seed42.wav")
    with pytest.raises(publish.PublishError) as err:
        publish.run(run.root, "someone/my-beats", dry_run=False, api=hub)
    msg = str(err.value)
    assert "someone/my-beats" in msg and "502 Bad Gateway" in msg and "run publish again" in msg
    assert "1 of 11 files are on the hub" in msg and "10 left" in msg
    assert hub.list_repo_files("someone/my-beats") == ["model.safetensors"]  # the weights commit went through
    assert "README.md" not in hub.repos["someone/my-beats"]  # the card only once all it links is there
    hub.fail_on = None
    hub.commits.clear()
    summary = publish.run(run.root, "someone/my-beats", dry_run=False, api=hub)
    assert summary["already_there"] == 1 and summary["uploaded"] == 10
    assert all("model.safetensors" not in c for c in hub.commits)  # resumed: not sent again
    assert hub.commits[-1] == ["README.md"]
    files = hub.repos["someone/my-beats"]
    card = files["README.md"].decode()
    assert set(publish.card_links(card)) <= set(files)
    assert (
        files["samples/base/00-seed42.wav"] == b"RIFF base 0"
        and files["samples/finetune/00-seed42.wav"] == b"RIFF finetune 0"
    )
    assert files["plots/metric_bars.png"].startswith(b"\x89PNG")
    # a third run sends nothing; a changed sample is sent again
    hub.commits.clear()
    assert publish.run(run.root, "someone/my-beats", dry_run=False, api=hub)["uploaded"] == 0 and not hub.commits
    (run.root / "06_generate" / "audio" / "finetune" / "01-seed43.wav").write_bytes(b"RIFF new")
    assert publish.run(run.root, "someone/my-beats", dry_run=False, api=hub)["uploaded"] == 1  # that sample only
    assert files["samples/finetune/01-seed43.wav"] == b"RIFF new"
    for f in run.root.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore")


NOTICE_SENTENCE = (  # the licence's words, IV a (ii), spelled here independently of modelspec
    "This Stability AI Model is licensed under the Stability AI Community License, "
    "Copyright © Stability AI Ltd. All Rights Reserved"
)


def test_publish_ships_the_notice_file_and_a_copy_of_the_licence(tmp_path):
    run = _fake_run(tmp_path)
    run.mark_done("03_tempo_key", params={"key_profile": "edma", "min_confidence": 0.7})
    publish.run(run.root, "someone/my-beats", dry_run=True)
    files = json.loads((run.root / "publish" / "upload_list.json").read_text())["files"]
    by_repo = {u["path_in_repo"]: Path(u["local"]) for u in files}
    notice = by_repo["NOTICE"].read_text()
    assert notice.startswith(NOTICE_SENTENCE + "\n")
    assert "Changed:" in notice and "fine-tuned" in notice  # a derivative work says what changed
    assert by_repo["LICENSE.md"].read_text().startswith("STABILITY AI COMMUNITY LICENSE AGREEMENT")
    card = (run.root / "publish" / "README.md").read_text()
    assert "license_name: stable-audio-community" in card
    assert "second KeyExtractor (`edmm`)" in card  # how 03 found the keys: edma + its second opinion


def test_no_licence_copy_stops_an_upload_and_a_base_without_a_notice_gets_none(tmp_path, monkeypatch):
    import dataclasses

    run = _fake_run(tmp_path)
    (run.root / "05_train" / "export" / "LICENSE.md").unlink()
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(publish.PublishError, match="LICENSE.md"):
        publish.run(run.root, "someone/x", dry_run=False, api=FakeHub())
    plain = dataclasses.replace(publish.SAO.known, notice=None, licence_file=None)
    monkeypatch.setattr(publish, "SAO", dataclasses.replace(publish.SAO, known=plain))
    assert publish.notice_text(plain) is None
    publish.run(run.root, "someone/x", dry_run=True)
    files = json.loads((run.root / "publish" / "upload_list.json").read_text())["files"]
    assert not {"NOTICE", "LICENSE.md"} & {u["path_in_repo"] for u in files}
    assert not (run.root / "publish" / "NOTICE").exists()
