"""The benchmarks run end to end with their ``--quick`` settings and write sensible JSON.

``python -m bench.run_all --quick`` runs once for the module (in this process, its results in a
temporary folder); the tests then read what each benchmark wrote. No test looks at a timing.
"""

import contextlib
import io
import json
import math
import statistics

import pytest
import torch

import bench
from bench import run_all
from gpt.base.errors import UserError


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The printed output of ``run_all --quick``, and a reader for the JSON it wrote."""
    results = tmp_path_factory.mktemp("results")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(bench, "RESULTS_DIR", results)
        run_all.main(["--quick"])

    def read(name: str) -> dict:
        return json.loads((results / "quick" / f"{name}.json").read_text())

    return printed.getvalue(), read


def test_every_benchmark_prints_its_table(quick_run):
    printed, _ = quick_run
    for header in [
        "| shape |",
        "| model | batch | new tokens |",
        "| corpus | tokenizer |",
        "| pair | recipe |",
    ]:
        assert header in printed


def test_training_compares_identical_models(quick_run):
    _, read = quick_run
    result = read("training")
    tiny = result["shapes"]["tiny"]
    assert tiny["params"]["ours"] == tiny["params"]["transformers"]  # the same shape on both sides
    assert result["torch_threads"] >= 1 and result["peak_flops"] > 0
    for name in ("ours", "transformers"):
        assert tiny["tokens_per_sec"][name] > 0
        assert 0 < tiny["mfu"][name] < 1
        assert len(tiny["window_seconds"][name]) == 2  # two alternated rounds
    rounds = zip(
        tiny["window_seconds"]["ours"], tiny["window_seconds"]["transformers"], strict=True
    )
    round_ratios = [reference / ours for ours, reference in rounds]  # equal steps in each window
    assert tiny["round_ratios"] == pytest.approx(round_ratios)
    assert tiny["ratio"] == pytest.approx(statistics.median(round_ratios))


def test_generation_times_both_paths_for_every_setting(quick_run):
    _, read = quick_run
    results = read("generation")["results"]
    settings = {(r["batch_size"], r["new_tokens"]) for r in results}
    assert settings == {(1, 16), (1, 64), (2, 16), (2, 64)}
    for result in results:
        assert result["tokens_per_sec"]["cached"] > 0 and result["tokens_per_sec"]["recomputed"] > 0


def test_preparation_measures_both_tokenizers_and_worker_counts(quick_run):
    _, read = quick_run
    result = read("preparation")
    runs = {(r["tokenizer"], r["workers"]) for r in result["pipeline"]}
    assert runs == {("char", 1), ("char", 2), ("bpe", 1), ("bpe", 2)}
    assert all(0 < r["peak_rss_mb"] < 500 and r["mb_per_sec"] > 0 for r in result["pipeline"])
    for pair in result["encoding"]:
        ours, direct = pair["data_prep"], pair["direct"]
        assert pair["ratio"] == pytest.approx(ours["mb_per_sec"] / direct["mb_per_sec"])
        assert ours["cores_busy"] > 0 and direct["cores_busy"] > 0
        if ours["tokenizer"] == "char":  # the baseline encodes exactly the same text
            assert ours["tokens"] == direct["tokens"]


def test_time_to_quality_follows_both_recipes_evaluations(quick_run):
    _, read = quick_run
    result = read("time_to_quality")
    assert result["recipes"] == {
        "textbook": "configs/shakespeare_char_cpu.yaml",
        "modern": "configs/shakespeare_char_modern.yaml",
    }
    (pair,) = result["pairs"]  # one repeat: textbook, then modern
    for run in pair["runs"].values():
        steps = [e["step"] for e in run["evaluations"]]
        assert steps == [0, 5, 10]  # eval_interval 5, max_iters 10
        seconds = [e["seconds"] for e in run["evaluations"]]
        assert seconds == sorted(seconds) and seconds[-1] <= run["total_seconds"]
        assert math.isfinite(run["final_val_loss"]) and run["tokens_per_sec"] > 0
        assert run["final_val_loss"] == run["evaluations"][-1]["val_loss"]
    assert "optimizer: muon" in pair["runs"]["modern"]["resolved_config"]
    textbook = pair["runs"]["textbook"]
    assert pair["target_val_loss"] == textbook["best_val_loss"]
    best = min(textbook["evaluations"], key=lambda e: e["val_loss"])
    assert pair["seconds_to_target"]["textbook"] == best["seconds"]  # its own best, reached there
    assert pair["val_loss_at_textbook_wall_time"]["textbook"] == textbook["final_val_loss"]
    summary = result["summary"]
    assert summary["loss_gap"] == pytest.approx(
        pair["val_loss_at_textbook_wall_time"]["textbook"]
        - pair["val_loss_at_textbook_wall_time"]["modern"]
    )
    assert summary["loss_gap_met"] == (summary["loss_gap"] >= 0.05)


def timed(*points: tuple[float, float]) -> list[dict]:
    return [{"seconds": seconds, "val_loss": loss} for seconds, loss in points]


def test_time_to_quality_interpolates_between_evaluations():
    from bench.time_to_quality import seconds_to_reach, val_loss_at

    evaluations = timed((0, 4.0), (10, 3.0), (20, 2.0), (30, 2.5))
    assert seconds_to_reach(evaluations, 2.5) == pytest.approx(15.0)  # halfway from 3.0 to 2.0
    assert seconds_to_reach(evaluations, 2.0) == 20.0
    assert seconds_to_reach(evaluations, 5.0) == 0.0  # the first evaluation is already below
    assert seconds_to_reach(evaluations, 1.9) is None
    assert val_loss_at(evaluations, 25.0) == pytest.approx(2.25)
    assert val_loss_at(evaluations, 12.5) == pytest.approx(2.75)
    assert val_loss_at(evaluations, 99.0) == 2.5  # ended before: its last evaluation
    assert val_loss_at(evaluations, -1.0) == 4.0


def test_time_to_quality_scores_a_pair_against_the_textbook_run():
    from bench.time_to_quality import score_pair, summarise

    textbook = {"evaluations": timed((0, 4.0), (50, 2.2), (100, 2.0)), "best_val_loss": 2.0,
                "total_seconds": 110.0, "tokens_per_sec": 1000.0}  # fmt: skip
    modern = {"evaluations": timed((0, 4.0), (40, 2.5), (80, 1.5), (120, 1.4)),
              "best_val_loss": 1.4, "total_seconds": 130.0, "tokens_per_sec": 800.0}  # fmt: skip
    pair = score_pair(textbook, modern)
    assert pair["seconds_to_target"] == {"textbook": 100.0, "modern": pytest.approx(60.0)}
    assert pair["time_ratio"] == pytest.approx(0.6)
    assert pair["val_loss_at_textbook_wall_time"]["modern"] == pytest.approx(1.425)
    assert pair["loss_gap"] == pytest.approx(0.575)
    assert pair["step_cost_ratio"] == pytest.approx(1.25)
    summary = summarise([pair])
    assert not summary["time_ratio_met"] and summary["loss_gap_met"]
    never = score_pair(textbook, {**modern, "evaluations": timed((0, 4.0), (80, 2.5))})
    assert never["time_ratio"] is None and summarise([never])["time_ratio"] == float("inf")


def run_the_campaign_in_short(parts: list[str], tmp_path, monkeypatch) -> None:
    """``python -m bench.faults --quick --only PART ...``: every trial of every part survived."""
    from bench import faults

    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        faults.main(["--quick", *(word for part in parts for word in ("--only", part))])
    result = json.loads((tmp_path / "quick" / "faults.json").read_text())
    assert list(result["parts"]) == parts
    for part, outcome in result["parts"].items():
        if "skipped" in outcome:  # no filesystem can be mounted here
            continue
        assert outcome["total"] >= 1, part
        assert outcome["survived"] == outcome["total"], (part, outcome["trials"])
    assert "## Faults survived" in printed.getvalue()


def test_the_fault_campaign_in_short_survives_every_fault(tmp_path, monkeypatch):
    """``python -m bench.faults --quick`` on its first part (tests/test_faults.py and
    test_checkpoint.py meet the others one by one): real SIGKILLs at a random instant and during a
    checkpoint, each run then again and compared bitwise with an uninterrupted one."""
    run_the_campaign_in_short(["kills-1"], tmp_path, monkeypatch)


@pytest.mark.slow
def test_the_campaigns_folder_faults_in_short_are_all_survived(tmp_path, monkeypatch):
    """The campaign's parts of bench/folder_faults.py (tests/test_folder_lock.py,
    test_integrity.py and test_file_errors.py meet their faults one by one): the campaign's own
    code runs, and finds every fault met."""
    run_the_campaign_in_short(
        ["two-runs", "untrusted", "read-only", "kill-rerun"], tmp_path, monkeypatch
    )


@pytest.mark.slow
def test_the_campaigns_full_disk_part_in_short_is_survived(tmp_path, monkeypatch):
    """``python -m bench.faults --quick --only full-disk-commands``: train.py, data_prep,
    gpt.export, gpt.evaluate --json and gpt.report each onto a real full filesystem (skipped where
    none can be mounted): one line naming the file and the space left, nothing left behind."""
    run_the_campaign_in_short(["full-disk-commands"], tmp_path, monkeypatch)


def test_the_gpu_benchmark_runs_its_quick_form_on_the_cpu(
    tmp_path, monkeypatch, fresh_accelerate_state
):
    """``python -m bench.gpu --quick``: both configs' kinds trained and sampled through the same
    code as on a GPU (tiny shapes, bf16 autocast, eager), a sharded run SIGKILLed and resumed
    exactly; the parts that need CUDA (compiled sampling, fp16) skipped with their reason. Only
    figures of the right kind are checked, never a speed."""
    from accelerate.state import AcceleratorState

    from bench import gpu

    # it trains in bf16 in this process: forget the precision an earlier test here trained in
    AcceleratorState._reset_state(reset_partial_state=True)

    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        gpu.main(["--quick"])
    result = json.loads((tmp_path / "quick" / "gpu.json").read_text())
    results = result["results"]
    assert list(results) == ["gpt2-124m", "llama-124m"]
    assert not results["gpt2-124m"]["model"]["rope"] and results["llama-124m"]["model"]["rope"]
    for name, outcome in results.items():
        training = outcome["training"]
        assert training["tokens_per_step"] == 2 * 32 and training["steps"] == 3
        assert training["tokens_per_sec"] > 0 and 0 < training["mfu"] < 1
        assert training["peak_memory_bytes"] is None  # the CPU has no allocator peak
        eager, compiled = outcome["sampling"][:2], outcome["sampling"][2:]
        assert [(s["batch_size"], s["compiled"]) for s in eager] == [(1, False), (8, False)]
        assert all(s["tokens_per_sec"] > 0 for s in eager)
        assert [(s["batch_size"], s["compiled"]) for s in compiled] == [(1, True), (8, True)]
        assert all(s["skipped"].startswith("not on the CPU: compiling") for s in compiled)
        assert f"| {name} |" in printed.getvalue()
    fsdp = result["fsdp_resume"]
    assert fsdp["killed"] and fsdp["checkpoints_when_killed"][0] == "step_0000002"
    assert fsdp["resumed_from"] in fsdp["checkpoints_when_killed"]
    assert fsdp["bitwise_equal"] and fsdp["max_abs_difference"] == 0.0  # promised on the CPU
    assert fsdp["steps"] == 4 and fsdp["peak_memory_bytes"] is None
    assert result["fp16"]["skipped"].startswith("not on the CPU: accelerate's fp16")
    assert "fp16 with its gradient scaler: skipped" in printed.getvalue()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_the_gpu_benchmark_without_a_gpu_is_one_line():
    from bench import gpu

    with pytest.raises(UserError, match="--quick on the CPU"):
        gpu.main([])
