"""Training a study's models in worker processes (``--jobs``): the same models as the run, cached, skipped when
there, one-line errors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from equiaudit.zoo.recipes import RECIPES, fit
from equiaudit.zoo.studies.common import StudyContext
from equiaudit.zoo.studies.parallel import train_all, worker_devices, worker_threads

from equiaudit.errors import EquiauditError

SMALL = replace(
    RECIPES["cnn"], name="cnn@jobs", epochs=1, train_limit=64, create_kwargs={"hidden_channels": 4, "num_hidden": 1}
)


def _context(tmp_path: Path, jobs: int = 2) -> StudyContext:
    cpu = torch.device("cpu")
    return StudyContext("rotated-digits", quick=False, out_dir=tmp_path, device=cpu, log=None, jobs=jobs)


def test_workers_train_exactly_what_the_run_would_and_the_run_loads_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(RECIPES, "cnn@jobs", SMALL)
    ctx = _context(tmp_path)
    requests = [("cnn@jobs", 0, {}), ("cnn@jobs", 1, {}), ("cnn@jobs", 1, {})]  # asked twice, trained once
    assert sorted(ctx.pretrain(lambda _ctx: requests)) == ["cnn@jobs", "cnn@jobs@seed1"]
    assert ctx.run_info()["jobs"] == 2 and ctx.run_info()["pretrain_seconds"] > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(2))  # the worker's arithmetic, in this process
    try:
        here, _ = fit(ctx.recipe("cnn@jobs", seed=1), device="cpu", audit_card=False)
    finally:
        torch.set_num_threads(threads)
    loaded, _ = ctx.model("cnn@jobs", seed=1)
    assert ctx.models["cnn@jobs@seed1"]["origin"].startswith("cached checkpoint")
    for (name, a), b in zip(here.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert _context(tmp_path).pretrain(lambda _ctx: requests) == []  # everything is there now: no process starts


def test_quick_mode_and_one_job_train_in_the_run(tmp_path: Path) -> None:
    def never(_ctx: StudyContext) -> list:  # the study's plan is not even computed (it may load data)
        raise AssertionError("trainings() called")

    assert _context(tmp_path, jobs=1).pretrain(never) == []
    quick = StudyContext("rotated-digits", quick=True, out_dir=tmp_path, device=torch.device("cpu"), log=None, jobs=2)
    assert quick.pretrain(never) == []
    assert not (tmp_path / "checkpoints").exists()


def test_a_failed_training_is_one_line_and_the_others_are_kept(tmp_path: Path) -> None:
    broken = replace(SMALL, name="cnn@broken", dataset="no-such-data")
    with pytest.raises(EquiauditError) as info:
        train_all([broken, SMALL], tmp_path, torch.device("cpu"), 2)
    assert "\n" not in str(info.value) and "cnn@broken" in str(info.value) and "no-such-data" in str(info.value)
    assert (tmp_path / "cnn@jobs.pt").is_file()  # the training under way beside it finished and was saved


def test_a_worker_that_dies_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from equiaudit.zoo.studies import parallel

    dying = replace(SMALL, name="cnn@dies")
    monkeypatch.setattr(parallel, "_train_one", _exit_at_once)  # what the pool runs in its workers
    with pytest.raises(EquiauditError, match=r"a training process died .* cnn@dies"):
        train_all([dying], tmp_path, torch.device("cpu"), 2)


def _exit_at_once(*_args) -> float:
    os._exit(9)  # as a worker killed for memory


def test_jobs_must_be_a_whole_number(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(EquiauditError, match="jobs must be"):
            _context(tmp_path, jobs=bad)


def test_workers_share_the_cpus_and_spread_over_gpus() -> None:
    assert worker_threads(2, cpus=2) == 1 and worker_threads(3, cpus=16) == 5 and worker_threads(8, cpus=2) == 1
    assert worker_devices(torch.device("cuda"), 4, gpus=3) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert worker_devices(torch.device("cuda:1"), 2, gpus=3) == ["cuda:1", "cuda:1"]  # a named GPU stays
    assert worker_devices(torch.device("cuda"), 2, gpus=1) == ["cuda", "cuda"]
    assert worker_devices(torch.device("cpu"), 2, gpus=0) == ["cpu", "cpu"]
