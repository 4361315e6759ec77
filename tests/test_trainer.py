"""AGDTrainer: resume replays bit-identically; run directories refuse bad use without losing data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL

from agd_envs.cli import main as agd_main
from agents.checkpoint import RunError
from agents.run_log import PHASES
from agd_envs.tasks import get_task
from agents.a2c import A2C_PRESETS
from agd_envs.dataset_reader import EpisodeDataset
from agents.trainer import AGDTrainer, TrainerConfig, run_label


def tiny_config(**overrides) -> TrainerConfig:
    fields = dict(
        steps=600, iteration_steps=200, eval_every=200, checkpoint_every=200, eval_episodes=2,
        model_pretrain_updates=20, model_updates_per_step=0.05, agent_updates_per_step=0.02,
        imagination_batch=32, model=TINY_MODEL,
    )  # fmt: skip
    fields.update(overrides)
    return TrainerConfig.for_task("Reacher", **fields)


def _write_pre_trainer_format(path: Path) -> None:
    """Rewrite ``training.pt`` as checkpoints before WorldModelTrainer held it: the optimizer state alone."""
    import torch

    training = torch.load(path, weights_only=True)
    training["model_optimizer"] = training.pop("model_trainer")["optimizer"]
    torch.save(training, path)


def _returns(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return [(r["real_steps"], r["eval_return_mean"], r["actor_loss"]) for r in rows]


@pytest.mark.parametrize("imagination", ["joint", "closed-loop"])
def test_interrupted_then_resumed_run_logs_the_same_returns(tmp_path: Path, imagination: str) -> None:
    config = tiny_config(imagination=imagination)
    full = AGDTrainer(config, tmp_path / "full", progress=False).train()
    assert len(full) == 4  # the evaluation before training, then one per 200 steps
    # Phase timings: cumulative, every phase ran, together no more than the wall clock.
    phases = [[float(row[f"seconds_{p}"]) for p in PHASES] for row in full]
    assert all(t > 0 for t in phases[-1]), dict(zip(PHASES, phases[-1]))
    assert all(b >= a for before, after in zip(phases, phases[1:]) for a, b in zip(before, after))
    assert sum(phases[-1]) <= float(full[-1]["wall_seconds"]) + 1e-3

    interrupted = AGDTrainer(config, tmp_path / "split", progress=False)
    interrupted.iteration()
    interrupted.iteration()  # checkpointed at 400 steps
    # Simulate a crash after the checkpoint: more real data and log rows than the checkpoint saw.
    interrupted.collector.collect(lambda obs: interrupted.agent.act(obs), 150)
    interrupted.collector.writer.checkpoint()
    interrupted.log.append({"algo": "junk", "task": "Reacher", "seed": 0, "real_steps": 999})
    del interrupted
    resumed = AGDTrainer(config, tmp_path / "split", resume=True, progress=False).train()
    assert _returns(resumed) == _returns(full)
    assert any(p.name.startswith("data.rolled-back-") for p in (tmp_path / "split").iterdir()), "rolled-back data kept"


def test_run_directory_errors_overwrite_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RunError, match="no run to resume"):
        AGDTrainer(tiny_config(), run, resume=True, progress=False)
    AGDTrainer(tiny_config(steps=200), run, progress=False).train()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        AGDTrainer(tiny_config(), run, progress=False)
    hopper = TrainerConfig.for_task("Hopper", steps=200, iteration_steps=200, eval_every=200, checkpoint_every=200)
    with pytest.raises(RunError, match="holds a Reacher run, not Hopper"):
        AGDTrainer(hopper, run, resume=True, progress=False)
    (run / "checkpoint" / "agent.pt").write_bytes(b"not a checkpoint")
    before[run / "checkpoint" / "agent.pt"] = (run / "checkpoint" / "agent.pt").stat().st_mtime_ns
    with pytest.raises(RunError, match="corrupt checkpoint"):
        AGDTrainer(tiny_config(), run, resume=True, progress=False)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_bad_config_values_name_the_fix() -> None:
    with pytest.raises(ValueError, match="Did you mean 'Hopper'"):
        TrainerConfig.for_task("Hoper")
    with pytest.raises(ValueError, match="eag"):
        TrainerConfig.for_task("Hopper", guide="advantage")
    with pytest.raises(ValueError, match="multiple of iteration_steps"):
        TrainerConfig.for_task("Hopper", eval_every=1500)
    with pytest.raises(ValueError, match=r"imagination_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        TrainerConfig.for_task("Hopper", imagination_dtype="float16")
    with pytest.raises(ValueError, match=r"guide_on must be one of \('states', 'actions'\), got 'rewards'"):
        TrainerConfig.for_task("Hopper", guide_on="rewards")


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        agd_main(["train", "--task", "Reacher", "--guide", "vibes", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_info:
        agd_main(["train", "--resume", "--out", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    assert "not an `agd train` run directory" in capsys.readouterr().err


def test_run_label_names_a_non_default_guide_scale() -> None:
    """Runs with another alpha must not be averaged with the default ones by agd plot/table."""
    assert run_label(TrainerConfig.for_task("Walker2d", guide="eag")) == "agd-eag"
    assert run_label(TrainerConfig.for_task("Walker2d", guide="eag", alpha=1.0)) == "agd-eag"  # Walker2d's default
    assert run_label(TrainerConfig.for_task("Walker2d", guide="sag", alpha=0.1)) == "agd-sag-alpha0.1"
    assert run_label(TrainerConfig.for_task("Reacher", guide="eag", alpha=0.1)) == "agd-eag"  # Reacher's default
    assert run_label(TrainerConfig.for_task("Walker2d", guide="none", alpha=0.1)) == "agd-none"  # never guided


def test_run_label_names_agent_fields_set_away_from_the_task_scheme() -> None:
    """`--agent-set` runs must not be averaged with the task's default agent by agd plot/table."""
    hopper = TrainerConfig.for_task("Hopper", guide="none", a2c={"init_std": 0.135, "hidden_sizes": (64, 64)})
    assert run_label(hopper) == "agd-none-ppo-hidden_sizes64x64-init_std0.135"  # A2CConfig's field order
    assert run_label(TrainerConfig.for_task("Hopper", guide="none", a2c={"init_std": 1.0})) == "agd-none-ppo"  # zoo's own
    assert run_label(TrainerConfig.for_task("Reacher", guide="eag", a2c={"init_std": 0.3})) == "agd-eag"  # Reacher's default
    assert run_label(TrainerConfig.for_task("Reacher", guide="eag", a2c={"init_std": 1.0})) == "agd-eag-init_std1"


def test_real_steps_count_the_prefill_and_the_warm_start(tmp_path: Path) -> None:
    # Table I counts every real transition a run learned from (benchmarks/table1.py's protocol).
    prefilled = AGDTrainer(tiny_config(steps=400, warm_start=None, prefill_steps=300), tmp_path / "p", progress=False).train()
    assert [int(r["real_steps"]) for r in prefilled] == [300, 500, 700]
    assert [int(r["online_steps"]) for r in prefilled] == [0, 200, 400]
    shipped = AGDTrainer(tiny_config(steps=200), tmp_path / "s", progress=False)
    rows = shipped.train()
    assert shipped.initial_steps == 40_000 and int(rows[-1]["real_steps"]) == 40_200  # datasets/reacher-mixed


def test_rollout_columns_are_the_real_episodes_the_agent_finished_since_the_last_row(tmp_path: Path) -> None:
    # The exploring policy's real episodes, beside the deterministic evaluation: the prefill's random ones are not logged.
    rows = AGDTrainer(tiny_config(steps=400, warm_start=None, prefill_steps=300), tmp_path / "r", progress=False).train()
    episodes = list(EpisodeDataset.open(tmp_path / "r" / "data").episodes())
    returns = [float(np.sum(e.rewards)) for e in episodes]
    assert len(episodes) == 6 + 8  # Reacher's 50-step episodes: 300 prefill steps, then 2 iterations of 200
    assert rows[0]["rollout_return_mean"] == rows[0]["rollout_episodes"] == ""
    assert [int(r["rollout_episodes"]) for r in rows[1:]] == [4, 4]
    for row, newest in zip(rows[1:], (returns[6:10], returns[10:14])):
        assert float(row["rollout_return_mean"]) == pytest.approx(np.mean(newest), rel=1e-5)


def test_an_averaged_actor_is_evaluated_beside_the_online_one_and_changes_no_update(tmp_path: Path) -> None:
    plain = AGDTrainer(tiny_config(steps=400), tmp_path / "plain", progress=False).train()
    averaged = AGDTrainer(tiny_config(steps=400, a2c={"actor_average": 0.9}), tmp_path / "averaged", progress=False).train()
    assert [r["eval_online_return_mean"] for r in averaged] == [r["eval_return_mean"] for r in plain]
    assert [r["actor_loss"] for r in averaged] == [r["actor_loss"] for r in plain]
    assert averaged[0]["eval_return_mean"] == averaged[0]["eval_online_return_mean"]  # no update yet: the same actor
    assert averaged[-1]["eval_return_mean"] != averaged[-1]["eval_online_return_mean"]
    assert all(r["eval_online_return_mean"] == "" for r in plain)


def test_agent_flag_selects_the_ppo_update_and_labels_the_run() -> None:
    config = TrainerConfig.for_task("Walker2d", world_model="oracle", guide="none", agent="ppo")
    assert run_label(config) == "agd-oracle-ppo" and config.a2c_config().epochs == 4
    assert run_label(TrainerConfig.for_task("Walker2d")) == "agd-eag"
    with pytest.raises(ValueError, match=r"agent must be one of \['paper', 'ppo', 'zoo'\] \(agents/a2c.py A2C_PRESETS\), got 'sb3'"):
        TrainerConfig.for_task("Hopper", agent="sb3")


def test_hoppers_defaults_are_the_learner_that_beat_ppo_and_the_papers_a2c_stays_one_flag_away() -> None:
    from agd_envs.cli import _flag_overrides, build_parser
    from agents.a2c import A2CConfig

    hopper = TrainerConfig.for_task("Hopper")
    assert hopper.a2c_config() == A2CConfig.named("zoo") and run_label(hopper) == "agd-eag-anneal0-ppo"
    assert (hopper.start_window, hopper.critic_real_steps, hopper.lr_final_fraction, hopper.alpha_final_fraction) == (5000, 5000, 0.0, 0.0)
    assert get_task("Hopper").guide_scale == 0.1
    argv = ["train", "--task", "Hopper", "--out", "x", "--agent", "paper"]
    paper = TrainerConfig.for_task("Hopper", **_flag_overrides(build_parser().parse_args(argv)))
    assert paper.a2c_config() == A2CConfig() and run_label(paper) == "agd-eag-anneal0"
    argv += ["--set", "start_window=null", "critic_real_steps=0", "lr_final_fraction=1.0", "alpha_final_fraction=1.0"]
    papers = TrainerConfig.for_task("Hopper", **_flag_overrides(build_parser().parse_args(argv)))
    assert run_label(papers) == "agd-eag" and (papers.start_window, papers.critic_real_steps) == (None, 0)
    cheetah = TrainerConfig.for_task("HalfCheetah")
    assert cheetah.a2c_config() == A2CConfig()  # other tasks keep the paper's A2C, with the annealed guide (docs/results.md)
    assert (cheetah.alpha_final_fraction, run_label(cheetah)) == (0.0, "agd-eag-anneal0")
    assert run_label(TrainerConfig.for_task("HalfCheetah", alpha_final_fraction=1.0)) == "agd-eag"  # the paper's constant scale
    # Run directories written before the ``agent`` field held the scheme's fields in ``a2c``: they load unchanged.
    saved = dataclasses.asdict(TrainerConfig.for_task("Hopper", agent="paper", a2c=A2C_PRESETS["zoo"]))
    del saved["agent"]
    assert TrainerConfig(**saved).a2c_config() == A2CConfig.named("zoo")


@pytest.mark.parametrize("imagination", ["joint", "closed-loop"])
def test_the_guide_discounts_with_the_agents_gamma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imagination: str) -> None:
    # One source for gamma: the advantage the guide steers by uses the A2C's discount, not a default 0.99.
    import agd_envs.dream_env
    import agents.trainer as trainer_module

    seen: list[float] = []
    real_imagine, real_env = trainer_module.imagine, agd_envs.dream_env.DreamVectorEnv
    monkeypatch.setattr(trainer_module, "imagine", lambda *a, **k: (seen.append(k["gamma"]), real_imagine(*a, **k))[1])
    monkeypatch.setattr(agd_envs.dream_env, "DreamVectorEnv", lambda *a, **k: (seen.append(k["gamma"]), real_env(*a, **k))[1])
    trainer = AGDTrainer(tiny_config(imagination=imagination, a2c={"gamma": 0.9}), tmp_path / "run", progress=False)
    trainer.iteration()
    assert seen and set(seen) == {0.9}


def test_resume_with_more_steps_extends_the_run_as_if_uninterrupted(tmp_path: Path) -> None:
    full = AGDTrainer(tiny_config(steps=400), tmp_path / "full", progress=False).train()
    AGDTrainer(tiny_config(steps=200), tmp_path / "short", progress=False).train()
    _write_pre_trainer_format(tmp_path / "short" / "checkpoint" / "training.pt")  # old runs resume identically too
    saved = json.loads((tmp_path / "short" / "config.json").read_text())
    del saved["critic_real_segments"]  # a run started before the field existed resumes at its default
    (tmp_path / "short" / "config.json").write_text(json.dumps(saved))
    extended = AGDTrainer(tiny_config(steps=400), tmp_path / "short", resume=True, progress=False).train()
    assert _returns(extended) == _returns(full) and len(extended) == 3
    assert '"steps": 400' in (tmp_path / "short" / "config.json").read_text()  # a later --resume knows the new target
    with pytest.raises(RunError, match="seed = 3 differs from the saved 0"):
        AGDTrainer(tiny_config(steps=400, seed=3), tmp_path / "short", resume=True, progress=False)


def test_cli_resume_names_a_flag_that_differs_from_the_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    AGDTrainer(tiny_config(steps=200), tmp_path / "run", progress=False).train()
    before = (tmp_path / "run" / "progress.csv").read_text()
    for flag, value, saved in (("--guide", "sag", "'eag'"), ("--seed", "3", "0"), ("--alpha", "0.5", "None")):
        with pytest.raises(SystemExit):
            agd_main(["train", "--out", str(tmp_path / "run"), "--resume", flag, value])
        assert f"{flag} {value} differs from the run's saved" in capsys.readouterr().err and saved
    with pytest.raises(SystemExit):
        agd_main(["train", "--out", str(tmp_path / "run"), "--resume", "--model-set", "width=64"])
    assert "--model-set/--reward-head width=64 differs from the run's saved model = {" in capsys.readouterr().err
    assert (tmp_path / "run" / "progress.csv").read_text() == before  # nothing written


def test_model_set_overrides_world_model_fields_and_names_unknown_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agd_envs.cli import _flag_overrides, build_parser

    argv = ["train", "--task", "Reacher", "--out", "x", "--reward-head", "--model-set", "dynamics_prior=true", "width=64", "dtype=float32"]
    assert _flag_overrides(build_parser().parse_args(argv))["model"] == {
        "dynamics_prior": True, "width": 64, "dtype": "float32", "reward_head": True}  # fmt: skip
    with pytest.raises(SystemExit):
        agd_main(["train", "--task", "Reacher", "--out", str(tmp_path / "r"), "--model-set", "widht=64"])
    err = capsys.readouterr().err
    assert "'widht=64': expected FIELD=VALUE with FIELD a WorldModelConfig field" in err and "'width'" in err
    assert not (tmp_path / "r").exists()


def test_agent_set_overrides_the_agent_scheme_and_names_unknown_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agd_envs.cli import _flag_overrides, build_parser

    argv = ["train", "--task", "Hopper", "--out", "x", "--agent", "ppo", "--agent-set", "gamma=0.999", "target_ema=null", "epochs=5"]
    overrides = _flag_overrides(build_parser().parse_args(argv))
    assert overrides["agent"] == "ppo" and overrides["a2c"] == {"gamma": 0.999, "target_ema": None, "epochs": 5}
    config = TrainerConfig.for_task("Hopper", **overrides).a2c_config()
    assert (config.epochs, config.minibatches, config.clip_ratio, config.gamma, config.target_ema) == (5, 4, 0.2, 0.999, None)
    with pytest.raises(SystemExit):
        agd_main(["train", "--task", "Hopper", "--out", str(tmp_path / "h"), "--agent-set", "gama=0.999"])
    err = capsys.readouterr().err
    assert "'gama=0.999': expected FIELD=VALUE with FIELD a A2CConfig field" in err and "'gamma'" in err
    assert not (tmp_path / "h").exists()


def test_critic_real_segments_give_the_critic_real_windows_of_the_start_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from agents.a2c import A2CAgent

    seen = []
    original = A2CAgent.update_critic
    monkeypatch.setattr(A2CAgent, "update_critic", lambda self, seg: seen.append(seg) or original(self, seg))
    config = tiny_config(steps=400, world_model="oracle", guide="none", critic_real_segments=24, start_window=200)
    trainer = AGDTrainer(config, tmp_path / "run", progress=False)
    rows = trainer.train()
    updates = round(config.agent_updates_per_step * config.iteration_steps) * 2  # two iterations
    assert len(seen) == updates and all(seg.states.shape == (24, trainer.model.config.horizon + 1, 10) for seg in seen)
    data = trainer._dataset()
    newest = np.concatenate([data.episode(i).observations for i in range(data.num_episodes - 4, data.num_episodes)])
    for seg in seen[-2:]:  # real windows, all from the newest 200 transitions (4 Reacher episodes of 50)
        s0 = seg.states[:, 0].numpy()
        assert np.abs(newest[None] - s0[:, None]).max(-1).min(1).max() < 1e-6
    assert np.isfinite(float(rows[-1]["critic_loss"]))


def test_lr_final_fraction_anneals_the_agents_learning_rates_linearly_over_the_online_steps(tmp_path: Path) -> None:
    trainer = AGDTrainer(tiny_config(lr_final_fraction=0.25), tmp_path / "run", progress=False)
    base = trainer.agent.config.lr_critic
    seen = []
    for _ in range(3):  # 600 online steps in 200-step iterations
        trainer.iteration()
        seen.append(trainer.agent.critic_optim.param_groups[0]["lr"] / base)
    assert seen == pytest.approx([1.0, 0.75, 0.5])  # 1 - 0.75 * (steps already learned from) / 600
    trainer.collector.close(keep_partial=False)  # as train() ends: the run resumes from its 600-step checkpoint
    trainer.log.close()
    resumed = AGDTrainer(tiny_config(lr_final_fraction=0.25, steps=800), tmp_path / "run", resume=True, progress=False)
    assert resumed.online_steps == 600 and resumed.lr_scale() == pytest.approx(1 - 0.75 * 400 / 800)
    with pytest.raises(ValueError, match=r"lr_final_fraction must be in \[0, 1\]"):
        tiny_config(lr_final_fraction=-0.1)


def test_alpha_final_fraction_anneals_the_guide_scale_imagination_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.trainer as trainer_module

    seen: list[float] = []

    def recording_imagine(*args, alpha=None, **kwargs):
        seen.append(alpha)
        return imagine(*args, alpha=alpha, **kwargs)

    imagine = trainer_module.imagine
    monkeypatch.setattr(trainer_module, "imagine", recording_imagine)
    trainer = AGDTrainer(tiny_config(guide="eag", alpha_final_fraction=0.0), tmp_path / "run", progress=False)
    for _ in range(3):  # 600 online steps in 200-step iterations, 4 imagination calls each
        trainer.iteration()
    base = get_task("Reacher").guide_scale  # alpha=None: the task's scale is the one annealed
    assert seen == pytest.approx([base] * 4 + [base * 2 / 3] * 4 + [base / 3] * 4)
    assert run_label(tiny_config(guide="eag", alpha_final_fraction=0.0)) == "agd-eag-anneal0"
    assert run_label(tiny_config(guide="none", alpha_final_fraction=0.0)) == "agd-none"  # nothing to anneal
    with pytest.raises(ValueError, match=r"alpha_final_fraction must be in \[0, 1\] \(1.0: a constant guide scale\), got 2"):
        tiny_config(alpha_final_fraction=2)


def test_alpha_anneal_steps_ends_the_guide_early_and_keeps_it_there(tmp_path: Path) -> None:
    config = tiny_config(guide="eag", alpha_final_fraction=0.0, alpha_anneal_steps=400)
    trainer = AGDTrainer(config, tmp_path / "run", progress=False)
    base = get_task("Reacher").guide_scale
    scales = []
    for online in (200, 400, 600, 800):  # iterations of 200 steps; the scale of each is set by the steps before it
        trainer.online_steps = online
        scales.append(trainer.guide_scale())
    assert scales == pytest.approx([base, base / 2, 0.0, 0.0])
    assert run_label(config) == "agd-eag-anneal0by0.4k"
    assert run_label(TrainerConfig.for_task("HalfCheetah", alpha_anneal_steps=45000)) == "agd-eag-anneal0by45k"
    with pytest.raises(ValueError, match=r"alpha_anneal_steps must be a positive number of online steps \(or null: the whole run\), got 0"):
        tiny_config(alpha_anneal_steps=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_imagination_dtype_autocasts_joint_imagination_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    # bfloat16: imagine runs under CPU autocast and hands the agent float32 segments; float32: no autocast. The agent's
    # and the model's updates never run under it.
    import torch

    import agents.trainer as trainer_module

    seen: list[tuple[bool, torch.dtype]] = []
    real_imagine = trainer_module.imagine

    def recording_imagine(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_imagine(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "imagine", recording_imagine)
    trainer = AGDTrainer(tiny_config(imagination_dtype=dtype), tmp_path / "run", progress=False)
    real_update = trainer.agent.update
    updates: list[tuple[bool, torch.dtype]] = []
    monkeypatch.setattr(trainer.agent, "update", lambda segments: (updates.append((torch.is_autocast_enabled("cpu"), segments.states.dtype)), real_update(segments))[1])
    trainer.iteration()
    assert seen and all(enabled == (dtype == "bfloat16") for enabled, _ in seen)
    if dtype == "bfloat16":
        assert {cast for _, cast in seen} == {torch.bfloat16}
    assert updates and set(updates) == {(False, torch.float32)}


def test_a_termination_margin_ends_imagined_segments_at_near_falls_and_names_bad_values(tmp_path: Path) -> None:
    import torch

    from agd_envs.batch import SegmentBatch
    from agents.trainer import with_termination_margin

    hopper = get_task("Hopper")
    states = torch.zeros(3, 3, 11)
    states[..., 0] = 1.25  # upright
    states[0, 2, 1] = 0.18  # leaning past 0.2 * (1 - 0.15) = 0.17 at the last step: a near-fall
    states[1, 1, 0] = 0.8  # below 0.7 * 1.15 = 0.805 at the first step
    states[2, 1, 1] = -0.16  # inside the stricter band
    real_end = torch.tensor([[False, False], [False, False], [False, True]])
    batch = SegmentBatch(states=states, actions=torch.zeros(3, 2, 3), rewards=torch.ones(3, 2), terminations=real_end)
    assert with_termination_margin(batch, hopper, 0.0) is batch
    marked = with_termination_margin(batch, hopper, 0.15).terminations
    assert marked.tolist() == [[False, True], [True, False], [False, True]]  # the sampler's rule ORed in, real ends kept
    cheetah = dataclasses.replace(batch, states=torch.full((3, 3, 17), 5.0), actions=torch.zeros(3, 2, 6))
    assert with_termination_margin(cheetah, get_task("HalfCheetah"), 0.15).terminations.tolist() == real_end.tolist()  # never terminates
    config = TrainerConfig.for_task("Hopper", guide="none", termination_margin=0.15)
    assert run_label(config) == "agd-none-ppo-margin0.15"
    assert run_label(dataclasses.replace(config, world_model="oracle")) == "agd-oracle-ppo-margin0.15"
    hidden = with_termination_margin(batch, hopper, -1.0).terminations  # |angle| < 0.4, height > 0: no falls left
    assert not hidden.any()
    with pytest.raises(ValueError, match=r"termination_margin must be in \[-1, 1\) \(a fraction of each health bound; 0: the real env's rule\), got 1.2"):
        tiny_config(termination_margin=1.2)
    with pytest.raises(ValueError, match="termination_margin applies to joint imagination only"):
        tiny_config(termination_margin=0.1, imagination="closed-loop")


def test_update_horizon_gives_the_agent_the_first_steps_of_each_imagined_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from agd_envs.batch import SegmentBatch
    from agents.a2c import A2CAgent
    from agents.trainer import first_steps

    states = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    batch = SegmentBatch(states=states, actions=torch.ones(2, 3, 1), rewards=torch.arange(6.0).reshape(2, 3),
                         terminations=torch.tensor([[False, True, False], [False, False, False]]))
    assert first_steps(batch, None) is batch
    cut = first_steps(batch, 2)
    assert cut.states.tolist() == states[:, :3].tolist() and cut.rewards.tolist() == [[0.0, 1.0], [3.0, 4.0]]
    assert cut.terminations.tolist() == [[False, True], [False, False]] and cut.actions.shape == (2, 2, 1) and cut.advantages is None
    with pytest.raises(ValueError, match=r"update_horizon=4 is longer than the imagined segments \(3 steps\)"):
        first_steps(batch, 4)
    seen: list[int] = []
    original = A2CAgent.update

    def recording_update(self, segments):
        seen.append(segments.actions.shape[1])
        return original(self, segments)

    monkeypatch.setattr(A2CAgent, "update", recording_update)
    trainer = AGDTrainer(tiny_config(update_horizon=2), tmp_path / "run", progress=False)
    trainer.iteration()
    assert seen and set(seen) == {2}
    assert run_label(tiny_config(update_horizon=2)) == "agd-eag-first2"
    with pytest.raises(ValueError, match=r"update_horizon must be a positive number of steps with imagination='joint' \(null: the whole segment\), got 0"):
        tiny_config(update_horizon=0)


def test_actor_real_steps_interleave_updates_on_the_newest_real_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.a2c import A2CAgent

    seen: list[dict[str, np.ndarray]] = []
    original = A2CAgent.update_from_transitions
    monkeypatch.setattr(A2CAgent, "update_from_transitions", lambda self, **rows: seen.append(rows) or original(self, **rows))
    config = tiny_config(steps=200, world_model="oracle", guide="none", agent_updates_per_step=0.03, actor_real_steps=100, actor_real_every=2)
    trainer = AGDTrainer(config, tmp_path / "run", progress=False)
    before = trainer.agent.num_updates
    trainer.iteration()
    assert len(seen) == 3 and trainer.agent.num_updates - before == 6 + 3  # 6 imagined updates, a real one after every 2nd
    data = trainer._dataset()
    newest = [data.episode(i) for i in (data.num_episodes - 2, data.num_episodes - 1)]  # 2 Reacher episodes of 50 hold 100 steps
    np.testing.assert_array_equal(seen[-1]["obs"][:, 0], np.concatenate([e.observations[:-1] for e in newest]))
    np.testing.assert_array_equal(seen[-1]["actions"][:, 0], np.concatenate([e.actions for e in newest]))
    assert run_label(config) == "agd-oracle-real100e2"
    with pytest.raises(ValueError, match=r"actor_real_steps must be >= 0 \(0: off\) and actor_real_every >= 1"):
        tiny_config(actor_real_steps=100, actor_real_every=0)
