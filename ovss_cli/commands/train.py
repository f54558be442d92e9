"""`ovss train`: train a recipe on one or more GPUs (or the CPU), with exact resume."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ovss_cli.errors import OvssError, UsageError
from ovss_cli.methods.registry import METHODS, build_model
from ovss_cli.recipes import load_recipe, recipe_to_yaml, save_recipe
from ovss_cli.runtime.distributed import (
    check_process_options,
    init_distributed,
    process_device,
    relaunch_if_needed,
    shutdown_distributed,
)


def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/catseg_vitb.yaml."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, e.g. optim.lr=1e-4 train.iterations=2000."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs (one process each) per machine; >1 relaunches through torchrun."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="CPU processes (gloo) per machine instead of GPUs, e.g. to test multi-process runs without a GPU."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines taking part in the job."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's index among --nnodes."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of the node with --node-rank 0."),
    master_port: int = typer.Option(29500, "--master-port", help="Free TCP port on the master node."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto': continue the newest run of this recipe (or --output) from its latest checkpoint, if any; or a checkpoint file / run folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder.", show_default="runs/<recipe name>/<timestamp>"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Prepared datasets (same as data.data_root=...).", show_default="$OVSS_DATASETS, $DETECTRON2_DATASETS, ./datasets"),
    prototypes: Optional[Path] = typer.Option(None, "--prototypes", help="method vpl: vision prototypes from `ovss prototypes` (same as vpl.prototypes=FILE)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe, build the model (random weights), print trainable parameters per group and the resolved recipe; train nothing."),
) -> None:
    """Train a model described by a recipe; checkpoints, metrics.jsonl and the resolved recipe go to the run folder.

    RECIPE is a YAML file or the name of a shipped recipe (`ovss recipes` lists them).

    Example: ovss train recipes/catseg_vitb.yaml train.iterations=20000 --gpus 4 --resume auto
    """

    overrides = list(overrides or [])
    if data_root is not None:
        overrides.append(f"data.data_root={data_root}")
    if prototypes is not None:
        overrides.append(f"vpl.prototypes={prototypes}")
    parsed = load_recipe(recipe, overrides)  # validated before any heavy work or relaunch
    check_process_options(gpus, nproc)
    device = process_device(parsed.train.device, nproc)
    if dry_run:
        describe(parsed)
        return
    from ovss_cli.clip.zoo import RECIPE_WEIGHTS_HINT, check_clip_weights
    from ovss_cli.data.train_set import check_train_data

    # Data, weights and devices fail here, once, not once per rank after the relaunch.
    check_train_data(parsed.data)
    check_clip_weights(parsed.clip.name, parsed.clip.pretrained, hint=RECIPE_WEIGHTS_HINT)
    if relaunch_if_needed(gpus, nnodes, node_rank, master_addr, master_port, nproc):
        return
    dist = init_distributed(device)
    from ovss_cli.runtime.threads import configure_threads

    threads = configure_threads()
    if dist.is_main:
        typer.echo(threads, err=True)
    try:
        if parsed.train.device == "cuda" and not dist.device.startswith("cuda"):
            from ovss_cli.errors import UsageError

            raise UsageError("train.device is cuda but no CUDA device is visible; use train.device=cpu or auto")
        run_training(parsed, dist, output, resume)
    finally:
        shutdown_distributed()


def run_training(recipe, dist, output: Optional[Path], resume: Optional[str]):
    from ovss_cli.engine.runs import RunLock, choose_run_dir, remove_if_unstarted
    from ovss_cli.engine.trainer import train as train_loop
    from ovss_cli.runtime.seeding import seed_everything

    seed_everything(recipe.seed)  # identical initialisation on every rank
    model = build_model(recipe)  # before any folder exists: a model that cannot be built leaves nothing behind
    prepare = METHODS[recipe.method].prepare_training  # inputs read once (e.g. VPL's prototypes)
    if prepare is not None:
        prepare(recipe, model)
    lock, failure, created = None, None, False
    if dist.is_main:
        run_dir = choose_run_dir(recipe.name, output, resume)
        created = not run_dir.exists()
        try:
            lock = RunLock(run_dir).acquire()  # one writer per run folder
        except OvssError as err:
            failure = err
    else:
        run_dir = None
    if dist.distributed:  # every rank must use rank 0's folder (timestamps differ between processes)
        import torch.distributed as tdist

        shared = [str(run_dir) if run_dir is not None and failure is None else None]
        tdist.broadcast_object_list(shared, src=0)
        if shared[0] is None and failure is None:
            raise OvssError("rank 0 could not take the run folder; see its error")
        run_dir = Path(shared[0]) if shared[0] is not None else run_dir
    if failure is not None:
        raise failure
    failed = True
    try:
        if dist.is_main:
            typer.echo(f"run folder: {run_dir}", err=True)

        def write_recipe() -> None:  # called once the resume is validated, before anything else is written
            if dist.is_main:
                save_recipe(recipe, run_dir / "recipe.yaml", header=f"Resolved recipe of the run in {run_dir}.\n"
                            f"Run it again: ovss train {run_dir / 'recipe.yaml'}")

        result = train_loop(recipe, model, dist, run_dir, resume, on_ready=write_recipe)
        failed = False
    finally:
        if lock is not None:
            lock.release()
        if failed and created:  # failed before its first logged step: no folder holding only the recipe
            remove_if_unstarted(run_dir)
    if dist.is_main:
        typer.echo(f"trained to step {result.step}; checkpoint: {result.checkpoint}")
        if result.best_checkpoint is not None:
            typer.echo(f"best checkpoint: {result.best_checkpoint}")
        for name, metrics in result.eval_results.items():
            typer.echo(f"{name}: mIoU {metrics['mIoU']:.2f} ({eval_mode_note(recipe.train.eval_mode)})")
    return result


def eval_mode_note(mode: str) -> str:
    """Why the training log's mIoU may differ from `ovss evaluate`'s (whose default is sliding windows)."""
    if mode == "sliding":
        return "sliding windows, as ovss evaluate"
    return f"{mode} image; ovss evaluate defaults to sliding windows, add --mode {mode} to match"


def describe(recipe) -> None:
    """The --dry-run report: trainable parameters per optimizer group, data availability, resolved recipe."""

    model = build_model(recipe, pretrained=False)
    table = Table(title=f"{recipe.name}: trainable parameters (CLIP weights not loaded)")
    for column in ("group", "tensors", "parameters", "lr", "weight decay"):
        table.add_column(column, justify="left" if column == "group" else "right")
    total = 0
    for group in model.param_groups(recipe.optim):
        count = sum(p.numel() for p in group["params"])
        total += count
        table.add_row(group["name"], str(len(group["params"])), f"{count:,}", f"{group['lr']:.3g}",
                      f"{group['weight_decay']:.3g}")
    # a frozen CLIP held outside the module tree (method vpl) counts as frozen too
    every = {id(p): p for p in [*model.parameters(), *model.dense.parameters()]}
    frozen = sum(p.numel() for p in every.values() if not p.requires_grad)
    table.add_row("total trainable", "", f"{total:,}", "", "")
    table.add_row("frozen", "", f"{frozen:,}", "", "")
    console = Console()
    console.print(table)
    try:
        from ovss_cli.data.train_set import TrainSegmentationSet

        typer.echo(f"training data: {len(TrainSegmentationSet(recipe.data, recipe.seed))} images ({recipe.data.benchmark})")
    except UsageError as err:
        typer.echo(f"training data: not found ({err})")
    typer.echo(recipe_to_yaml(recipe))


@functools.wraps(train)
def distill(**options) -> None:
    method = load_recipe(options["recipe"], list(options["overrides"] or [])).method
    if not METHODS[method].distills:
        raise UsageError(f"recipe method '{method}' does not distil from a teacher; run it with "
                         f"`ovss train {options['recipe']}`")
    train(**options)


distill.__doc__ = """Train a distillation recipe (InfoCLIP: the frozen pretrained CLIP teaches the fine-tuned one); options as `ovss train`.

    Example: ovss distill recipes/infoclip.yaml --gpus 4 --resume auto
    """
