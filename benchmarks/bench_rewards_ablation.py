"""Which stage-2 reward does what: the demo's GRPO from the same SFT checkpoint, same budget, one arm per reward.

Arms (each keeps the format reward at weight 0.5, as every peer's reward does):

    accuracy       format + linear accuracy max(0, 1 - |s - MOS|)
    qponder        format + accuracy + consistency (lexicon reader, margin 0.5): Q-Ponder's reading, the demo's
                   stage 2
    rank_fidelity  format + VisualQuality-R1's in-batch rank fidelity
    threshold      format + Q-Insight's thresholded accuracy (1 if |s - MOS| < 0.35)
    qponder_point  (only with --arms) the qponder arm without the consistency margin (its peak exactly on the
                   reader's value), as the demo had it before
    joint          (only with --arms) qponder's terms and weights, the consistency term multiplied by the accuracy
                   term (``qponder_reward`` with ``consistency_gate: accuracy``): agreeing with a wrong reasoning
                   earns nothing

Per seed: the demo pipeline up to SFT (``qponder.demo.runner``; its own GRPO is the ``qponder`` arm), then every
other arm's GRPO from that seed's SFT checkpoint with the demo's GRPO settings, then the test-split evaluation.
Per arm: SRCC, PLCC, RMSE of the greedy answers, the consistency metrics (lexicon reader) and answer diversity,
mean +- std over seeds and the paired difference to SFT, plus the share of zero-variance reward groups and the
val-SRCC change during GRPO. Targets (issue 15; stated and reported, never asserted): the qponder arm beats SFT on
SRCC and PLCC in the mean and in at least 2 of 3 seeds; its mean |s_r - s| is below SFT's and the accuracy arm's;
distinct answers on the test split >= 30 of 120; SFT SRCC >= 0.6; the whole run <= 90 minutes on 2 cores.
Every run resumes (finished arms are kept). Writes ``ablation.json``, ``ablation.md`` (the table) and
``ablation.png`` (per metric, each arm's value per seed) under ``--out``.

    python -m benchmarks.bench_rewards_ablation [--quick] [--seeds 0,1,2] [--arms qponder,accuracy,...]
        [--out bench-out/rewards_ablation] [--set sft_answer_weight=10 ...] [--jobs N]

``--jobs N`` runs N jobs (a seed's demo, then each of its arms) at a time, each in its own process with cores // N
threads and its output in ``<seed folder>/ablation-<job>.log``; this process prints when each starts and ends. On 2
cores ``--jobs 2`` does more work per minute than one job at two threads (the small model's steps use a second
thread poorly); a result can differ from a one-job run's in float rounding, as any change of thread count makes it.
The time reported is the wall time of every invocation into ``--out`` (saved as each job ends) plus, with
``--demos``, the demos' own recorded minutes; the work summed is reported beside it.

From finished demos instead (``--demos DIR,DIR,...``: folders written by ``qponder demo --seed S --out DIR``): each
folder is one seed (its own ``demo_settings.json``), its SFT and ``qponder`` rows are read from its ``summary.json``,
and the other arms train and evaluate inside it (``DIR/grpo-<arm>``, ``DIR/eval-grpo-<arm>``); the demo's minutes
count as recorded when it ran. Give the folders as the demos were given them: their evaluations record the model by
that path, and a resumed evaluation must name it the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

FORMAT = {"name": "format", "weight": 0.5}
ARMS: dict[str, tuple[dict, ...]] = {
    "accuracy": (FORMAT, {"name": "accuracy", "weight": 1.0, "params": {"tau": 1.0}}),
    "qponder": (),  # the demo's own stage 2 (qponder.demo.runner.DEMO_REWARDS)
    "rank_fidelity": (FORMAT, {"name": "rank_fidelity", "weight": 1.0}),
    "threshold": (FORMAT, {"name": "accuracy_threshold", "weight": 1.0, "params": {"tau": 0.35}}),
    "qponder_point": (FORMAT, {"name": "accuracy", "weight": 1.0, "params": {"tau": 1.0}},
                      {"name": "consistency", "weight": 0.5, "params": {"reader": "lexicon"}}),
    # qponder's terms and weights, the consistency term paid in proportion to the accuracy term
    "joint": ({"name": "qponder_reward", "weight": 1.0,
               "params": {"w_format": 0.5, "w_accuracy": 1.0, "w_consistency": 0.5, "consistency_gate": "accuracy",
                          "consistency_margin": 0.5,
                          "accuracy_params": {"tau": 1.0}, "reader": "lexicon"}},),
}
DEFAULT_ARMS = ("accuracy", "qponder", "rank_fidelity", "threshold")  # the four; the others on request
METRICS = ("srcc", "plcc", "rmse", "consistency_srcc", "consistency_mae", "off_by_more_than_one_level",
           "distinct_answers", "answer_entropy_bits", "parse_failure_rate",
           "expected_srcc", "expected_plcc", "expected_distinct")  # expected_*: the expected-answer read-out
TARGET_DISTINCT = 30
TARGET_SFT_SRCC = 0.6
TARGET_MINUTES = 90


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _stats(values: list) -> dict:
    vals = [v for v in values if _finite(v)]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0 if vals else None, "values": values}


def grpo_dynamics(grpo_dir: Path) -> dict:
    """From a GRPO run's logs: mean share of zero-variance groups, reward first/last third, val SRCC first/last."""
    from qponder.train.common import read_log
    from qponder.train.val import read_val

    log = [r for r in read_log(grpo_dir) if r.get("reward") is not None]
    val = read_val(grpo_dir)
    k = max(len(log) // 3, 1)
    zero = [r["frac_reward_zero_std"] for r in log if _finite(r.get("frac_reward_zero_std"))]
    return {"zero_std_share": statistics.fmean(zero) if zero else None,
            "reward_first_third": statistics.fmean(r["reward"] for r in log[:k]) if log else None,
            "reward_last_third": statistics.fmean(r["reward"] for r in log[-k:]) if log else None,
            "val_srcc_first": val[0].get("srcc") if val else None,
            "val_srcc_last": val[-1].get("srcc") if val else None}


def _row(result: dict) -> dict:
    """One stage's numbers from its eval summary (readout both: the greedy answer plus the read-outs)."""
    expected = result.get("expected") or {}
    row = {k: result.get(k) for k in METRICS if not k.startswith("expected_")}
    return row | {"expected_srcc": expected.get("srcc"), "expected_plcc": expected.get("plcc"),
                  "expected_distinct": expected.get("distinct_answers")}


def aggregate(per_seed: dict, seeds, arms) -> tuple[dict, dict]:
    """Mean +- std over seeds per stage and metric, and per arm the paired difference to the same seed's SFT (with
    how many seeds went up)."""
    table = {s: {m: _stats([per_seed[k]["results"][s].get(m) for k in seeds]) for m in METRICS}
             for s in ("sft", *arms)}
    paired = {}
    for arm in arms:
        paired[arm] = {}
        for m in ("srcc", "plcc", "rmse", "consistency_mae", "expected_srcc"):
            pairs = [(per_seed[k]["results"][arm].get(m), per_seed[k]["results"]["sft"].get(m)) for k in seeds]
            diffs = [a - b for a, b in pairs if _finite(a) and _finite(b)]
            paired[arm][m] = {**_stats(diffs), "seeds_up": sum(x > 0 for x in diffs), "n": len(diffs)}
    return table, paired


def finished_demo(folder: Path):
    """A finished ``qponder demo`` folder's settings (``DemoSettings``, ``out`` = the folder) and summary; a folder
    that is not one is refused by name."""
    import dataclasses

    from qponder.demo.runner import DemoSettings

    settings, summary = folder / "demo_settings.json", folder / "summary.json"
    missing = next((f.name for f in (settings, summary) if not f.is_file()), None)
    if missing:
        raise SystemExit(f"{folder}: not a finished qponder demo (no {missing}); run qponder demo --out {folder} first")
    saved = json.loads(settings.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(DemoSettings)}
    cfg = DemoSettings(**{k: v for k, v in saved.items() if k in names} | {"out": str(folder), "progress": False})
    summary = json.loads(summary.read_text(encoding="utf-8"))
    if not {"sft", "grpo"} <= set(summary.get("results", {})):
        raise SystemExit(f"{folder}/summary.json: no SFT and GRPO results in it; finish the demo first")
    return cfg, summary


def arm_result(d: Path, cfg, arm: str) -> dict:
    """One arm of one seed: its GRPO from the SFT checkpoint in ``d`` (kept when finished), the test-split evaluation,
    the run's dynamics and its work seconds."""
    from qponder.demo.runner import eval_stage, grpo_settings
    from qponder.io import write_json_atomic
    from qponder.train.grpo import run_grpo

    t0 = time.time()
    arm_dir = d / f"grpo-{arm}"
    timing = arm_dir / "arm_seconds.json"  # the work's time, kept for a resumed run's total
    if not (arm_dir / "final" / "config.json").exists():
        run_grpo(grpo_settings(cfg, d / "sft" / "final", arm_dir, rewards=ARMS[arm]))
    row = _row(eval_stage(arm_dir / "final", d / f"eval-grpo-{arm}", cfg))
    if not timing.exists():
        write_json_atomic(round(time.time() - t0, 1), timing)
    return {"row": row, "grpo": grpo_dynamics(arm_dir), "seconds": json.loads(timing.read_text())}


def seed_result(d: Path, arms: tuple[str, ...], summary: dict, done: dict[str, dict]) -> dict:
    """One seed's rows: SFT and ``qponder`` from the demo's ``summary``, every other arm from ``done`` (``arm_result``
    per arm)."""
    rows = {"sft": _row(summary["results"]["sft"])}
    seconds = {"demo": round(sum(summary["seconds"].values()), 1)}  # as recorded when each stage ran
    dyn = {"qponder": grpo_dynamics(d / "grpo")}
    if "qponder" in arms:
        rows["qponder"] = _row(summary["results"]["grpo"])
    for arm in _others(arms):
        rows[arm], dyn[arm], seconds[arm] = done[arm]["row"], done[arm]["grpo"], done[arm]["seconds"]
    return {"results": rows, "grpo": dyn, "seconds": seconds}


def _others(arms: tuple[str, ...]) -> list[str]:
    """The arms that train beside the demo (its own GRPO is the ``qponder`` arm)."""
    return [a for a in arms if a != "qponder"]


def run_jobs(plan: dict[int, tuple[Path, object, dict | None]], arms: tuple[str, ...], jobs: int,
             wall: "WallClock") -> dict[int, dict]:
    """Run the seeds' demos (``plan``: seed -> (folder, DemoSettings, the demo's summary or None to run it)) and then
    their arms, ``jobs`` at a time, each in its own process with ``cores // jobs`` threads and its output in
    ``<folder>/ablation-<job>.log``. A failed job stops the others (their finished work is kept for a rerun) and is
    named with the end of its log."""
    import subprocess

    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    summaries = {seed: summary for seed, (_, _, summary) in plan.items() if summary is not None}
    queue = [(seed, "demo") for seed in plan if seed not in summaries]
    queue += [(seed, arm) for seed in summaries for arm in _others(arms)]
    total = len(plan) - len(summaries) + len(plan) * len(_others(arms))  # demos to run, then every seed's arms
    done: dict[int, dict[str, dict]] = {seed: {} for seed in plan}
    running: dict[tuple[int, str], tuple] = {}
    finished = 0

    def say(seed: int, job: str, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} seed {seed}, {job}: {what}", flush=True)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                seed, job = queue.pop(0)
                d, cfg, _ = plan[seed]
                d.mkdir(parents=True, exist_ok=True)
                log, result = d / f"ablation-{job}.log", d / f"ablation-{job}.json"
                result.unlink(missing_ok=True)
                settings = json.dumps({**dataclasses.asdict(cfg), "out": str(d), "progress": False})
                with open(log, "w") as f:
                    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--job", job,
                                             "--job-settings", settings, "--job-result", str(result)],
                                            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                running[(seed, job)] = (proc, log, result, time.time())
                say(seed, job, f"started ({threads} thread{'s' * (threads > 1)}; log {log})")
            time.sleep(1.0)
            for (seed, job), (proc, log, result, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[(seed, job)]
                if proc.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                    raise SystemExit(f"seed {seed}, {job}: failed (exit {proc.returncode}); the other jobs are "
                                     f"stopped, finished work is kept for a rerun. The end of {log}:\n{tail}")
                finished += 1
                wall.save()
                if job == "demo":
                    summaries[seed] = json.loads((plan[seed][0] / "summary.json").read_text(encoding="utf-8"))
                    queue += [(seed, arm) for arm in _others(arms)]
                    got = {"sft": summaries[seed]["results"]["sft"], "qponder": summaries[seed]["results"]["grpo"]}
                else:
                    done[seed][job] = json.loads(result.read_text(encoding="utf-8"))
                    got = {job: done[seed][job]["row"]}
                srcc = ", ".join(f"{k} {_fmt(v.get('srcc'))}" for k, v in got.items())
                say(seed, job, f"finished in {(time.time() - t0) / 60:.1f} min; test SRCC {srcc} "
                               f"({finished}/{total} jobs)")
    finally:
        for proc, *_ in running.values():
            proc.terminate()
            proc.wait()
    return {seed: seed_result(plan[seed][0], arms, summaries[seed], done[seed]) for seed in plan}


def _job_main(job: str, settings: str, result: Path) -> int:
    """One job of ``run_jobs``, in its own process: a seed's demo (its summary.json is the result) or one arm."""
    import torch

    from qponder.demo.runner import DemoSettings, run_demo
    from qponder.io import write_json_atomic

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = DemoSettings(**json.loads(settings))
    if job == "demo":
        run_demo(cfg)
    else:
        write_json_atomic(arm_result(Path(cfg.out), cfg, job), result)
    return 0


class WallClock:
    """Wall seconds of every invocation that ran jobs into one output folder (``wall_seconds.json``), saved as each
    job ends, so a resumed ablation's wall time counts its earlier invocations up to their last finished job."""

    def __init__(self, path: Path):
        self.path, self.t0 = path, time.time()
        self.earlier = json.loads(path.read_text()) if path.is_file() else []

    def save(self) -> None:
        from qponder.io import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic([*self.earlier, round(time.time() - self.t0, 1)], self.path)

    def seconds(self) -> float:
        return sum(self.earlier) + time.time() - self.t0


def run(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2), arms: tuple[str, ...] = DEFAULT_ARMS,
        out: Path = Path("bench-out/rewards_ablation"), sets: tuple[str, ...] = (),
        demos: tuple[Path, ...] = (), jobs: int = 1) -> dict:
    """``sets``: ``KEY=VALUE`` overrides of the demo's settings (``DemoSettings``) for every seed and arm.
    ``demos``: finished demo folders to take the seeds from instead of running the demo (module docstring).
    ``jobs``: how many demos / arms run at a time, each in its own process (``run_jobs``); 1 runs them in this one."""
    from qponder.config import cli_overrides, load_config
    from qponder.demo.runner import DemoSettings

    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if demos and (quick or sets):
        raise SystemExit("--demos takes each demo's own settings: --quick and --set do not apply")
    if jobs < 1:
        raise SystemExit(f"--jobs {jobs}: give 1 or more")
    if demos:
        found = {Path(d): finished_demo(Path(d)) for d in demos}
        seeds = tuple(cfg.seed for cfg, _ in found.values())
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--demos: two folders hold the same seed ({', '.join(map(str, seeds))}); one per seed")
    if quick:
        seeds, out = seeds[:1], out / "quick"
    # --quick is a smoke run of the plumbing (and the suite's test of it): short completions and two val points keep
    # it short; its numbers mean nothing
    quick_set = {"model_size": "tiny", "sft_epochs": 0.1, "grpo_steps": 2, "grpo_batch_size": 8,
                 "grpo_num_generations": 4, "grpo_val_every": 2, "eval_max_samples": 8, "max_new_tokens": 48,
                 "vision_pretrain_samples": 64, "vision_pretrain_epochs": 1} if quick else {}
    if demos:
        plan = {cfg.seed: (d, cfg, summary) for d, (cfg, summary) in found.items()}
    else:
        plan = {seed: (out / f"seed{seed}", load_config(DemoSettings, None, cli_overrides(list(sets), {
            "out": out / f"seed{seed}", "seed": seed, "progress": False, **quick_set})), None) for seed in seeds}
    wall = WallClock(out / "wall_seconds.json")
    if jobs > 1:
        per_seed = run_jobs(plan, arms, jobs, wall)
    else:
        from qponder.demo.runner import run_demo

        per_seed = {}
        for seed, (d, cfg, summary) in plan.items():
            summary = summary or run_demo(cfg)  # untrained -> SFT -> the qponder arm, with evaluations
            per_seed[seed] = seed_result(d, arms, summary, {arm: arm_result(d, cfg, arm) for arm in _others(arms)})
            wall.save()
    wall.save()

    table, paired = aggregate(per_seed, seeds, arms)
    dynamics = {arm: {k: _stats([per_seed[s]["grpo"][arm][k] for s in seeds])["mean"]
                      for k in ("zero_std_share", "reward_first_third", "reward_last_third", "val_srcc_first",
                                "val_srcc_last")} for arm in arms}
    minutes = sum(v for k in seeds for v in per_seed[k]["seconds"].values()) / 60  # work time, resume-proof
    # wall time: this run and the earlier ones into --out, plus finished demos' own minutes (they ran before)
    wall_minutes = (wall.seconds() + sum(per_seed[k]["seconds"]["demo"] for k in seeds) * bool(demos)) / 60
    targets = {}
    if "qponder" in arms:
        q, sft = table["qponder"], table["sft"]
        need = len(seeds) // 2 + 1  # a majority of seeds: 2 of 3
        targets = {
            "qponder_srcc_above_sft_mean_and_seeds": bool(paired["qponder"]["srcc"]["mean"] is not None
                                                          and paired["qponder"]["srcc"]["mean"] > 0
                                                          and paired["qponder"]["srcc"]["seeds_up"] >= need),
            "qponder_plcc_above_sft_mean_and_seeds": bool(paired["qponder"]["plcc"]["mean"] is not None
                                                          and paired["qponder"]["plcc"]["mean"] > 0
                                                          and paired["qponder"]["plcc"]["seeds_up"] >= need),
            "qponder_consistency_mae_below_sft": _lt(q["consistency_mae"]["mean"], sft["consistency_mae"]["mean"]),
            "qponder_consistency_mae_below_accuracy_arm": _lt(q["consistency_mae"]["mean"],
                                                              table["accuracy"]["consistency_mae"]["mean"])
            if "accuracy" in arms else None,
            f"qponder_distinct_answers_ge_{TARGET_DISTINCT}": _ge(q["distinct_answers"]["mean"], TARGET_DISTINCT),
        }
    targets[f"sft_srcc_ge_{TARGET_SFT_SRCC}"] = _ge(table["sft"]["srcc"]["mean"], TARGET_SFT_SRCC)
    targets[f"whole_run_le_{TARGET_MINUTES}_min"] = None if quick else wall_minutes <= TARGET_MINUTES
    result = {"seeds": list(seeds), "arms": list(arms), "quick": quick, "per_seed": per_seed, "summary": table,
              "paired_to_sft": paired, "grpo_dynamics": dynamics, "targets": targets, "minutes": round(minutes, 1),
              "wall_minutes": round(wall_minutes, 1), "jobs": jobs,
              "command": "python -m benchmarks.bench_rewards_ablation" + (" --quick" if quick else "")
              + "".join(f" --set {x}" for x in sets) + (f" --demos {','.join(map(str, demos))}" if demos else "")
              + (f" --jobs {jobs}" if jobs > 1 else "")}
    from qponder.io import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, out / "ablation.json")
    write_text_atomic(markdown(result), out / "ablation.md")
    plot(result, out / "ablation.png")
    return result


PLOTTED = {"SRCC": "srcc", "PLCC": "plcc", "mean |s_r - s| (lower: reasoning agrees)": "consistency_mae",
           "distinct answers (of the test split)": "distinct_answers"}


def plot(result: dict, path: Path) -> Path:
    """The table as a figure: per metric, every stage/arm's value per seed (a line per seed, so paired wins show)."""
    from qponder.report import paired_seed_plot

    seeds, stages = result["seeds"], list(result["summary"])
    panels = {title: {s: [result["per_seed"][k]["results"][s].get(metric) for k in seeds] for s in stages}
              for title, metric in PLOTTED.items()}
    return paired_seed_plot(panels, seeds, path, f"Stage-2 reward ablation, test split ({result['command']})")


def _fmt(x) -> str:
    return f"{x:.3f}" if _finite(x) else "n/a"


def _lt(a, b):
    return None if a is None or b is None else a < b


def _ge(a, b):
    return None if a is None else a >= b


def _pm(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "—"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(result: dict) -> str:
    """The README table: one row per stage/arm, mean ± std over seeds, and the paired SRCC change to SFT."""
    t, p, dyn = result["summary"], result["paired_to_sft"], result["grpo_dynamics"]
    head = ("| stage / arm | SRCC | PLCC | RMSE | ΔSRCC vs SFT (seeds up) | mean abs(s_r − ŝ) | off by > 1 level | "
            "distinct answers | SRCC, expected read-out | distinct, expected | zero-variance groups | "
            "val SRCC during GRPO |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, s in t.items():
        d = p.get(name, {}).get("srcc")
        delta = "—" if not d or d["mean"] is None else f"{d['mean']:+.3f} ± {d['std']:.3f} ({d['seeds_up']}/{d['n']})"
        g = dyn.get(name)
        zero = "—" if not g or g["zero_std_share"] is None else f"{g['zero_std_share']:.0%}"
        val = ("—" if not g or g["val_srcc_first"] is None or g["val_srcc_last"] is None
               else f"{g['val_srcc_first']:.3f} → {g['val_srcc_last']:.3f}")
        lines.append(f"| {name} | {_pm(s['srcc'])} | {_pm(s['plcc'])} | {_pm(s['rmse'])} | {delta} | "
                     f"{_pm(s['consistency_mae'])} | {_pm(s['off_by_more_than_one_level'], 2)} | "
                     f"{_pm(s['distinct_answers'], 1)} | {_pm(s['expected_srcc'])} | "
                     f"{_pm(s['expected_distinct'], 1)} | {zero} | {val} |")
    targets = "\n".join(f"- {k}: {'met' if v else 'not met' if v is not None else 'n/a'}"
                        for k, v in result["targets"].items())
    wall = result.get("wall_minutes", result["minutes"])
    return (f"Seeds {result['seeds']}, {wall} min wall, {result['minutes']} min of work (`{result['command']}`)\n\n"
            f"{head}"
            + "\n".join(lines) + f"\n\nTargets:\n{targets}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, one seed, 2 GRPO steps (a smoke run)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"of {', '.join(ARMS)}")
    ap.add_argument("--out", type=Path, default=Path("bench-out/rewards_ablation"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a demo setting for every seed and arm, e.g. --set sft_answer_weight=10 (repeatable)")
    ap.add_argument("--demos", default="", metavar="DIR,DIR,...",
                    help="finished qponder demo folders (one per seed) to run the other arms from, instead of --seeds")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N demos / arms at a time, each in its own process with cores // N threads")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # run_jobs' child: one demo or arm
    ap.add_argument("--job-settings", help=argparse.SUPPRESS)
    ap.add_argument("--job-result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.job:
        return _job_main(a.job, a.job_settings, a.job_result)
    res = run(quick=a.quick, seeds=tuple(int(s) for s in a.seeds.split(",")),
              arms=tuple(x for x in a.arms.split(",") if x), out=a.out, sets=tuple(a.sets),
              demos=tuple(Path(x) for x in a.demos.split(",") if x), jobs=a.jobs)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
