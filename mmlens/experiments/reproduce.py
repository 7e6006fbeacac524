"""mmlens reproduce: the study end to end — prompts, route ablations, traces, statistics, figures, report, findings.

For every dataset and seed: learn MaPLe prompts on the base classes (or import published MaPLe
checkpoints with --maple-weights), evaluate base and novel accuracy with every route ablation,
trace the test images with and without prompts (and under each ablation) into zarr stores, then
compute every statistic of the study with bootstrap intervals over images and seeds (injected and
carried layers apart) and write one folder: stores, tables (markdown + CSV), PNG figures, a
standalone HTML report and findings.md (each claim of the study, the number measured, whether it
holds). Default: the six toyworld datasets, seeds 1 2 3, the shipped toy CLIP, on CPU. Rerunning
the same command skips finished steps; an interrupted step resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmlens.experiments.config import ABLATIONS

# Every run traces the plain variants (mmlens.store.schema.VARIANTS: full, zeroshot and the route ablations,
# per image, so their accuracy gets bootstrap intervals); evaluation adds the ablations named by --ablations.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmlens reproduce``."""
    from mmlens.models.loading import add_quick_gelu_argument

    parser.add_argument("--out", required=True, help="output folder (created; rerun with the same folder to resume)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="dataset names (default: the six toyworld datasets; with --data-root, every "
                             "base-to-novel dataset found there)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="prompt-training seeds (default: 1 2 3)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the datasets in the CoOp layout (default: toyworld generated in memory)")
    parser.add_argument("--model", default="mmlens-toy", help="open_clip model name (default: mmlens-toy)")
    parser.add_argument("--pretrained", default=None,
                        help="weights: an open_clip tag or a file; 'random' for random weights (default: "
                             "'toyworld' for mmlens-toy, 'openai' otherwise)")
    add_quick_gelu_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "amp", "bf16"],
                        help="how training, evaluation and tracing run: amp = float16 autocast (+ gradient "
                             "scaling), bf16 = bfloat16 autocast; auto = amp on cuda, fp32 elsewhere. Trace "
                             "statistics are float32 whatever it is")
    parser.add_argument("--maple-weights", default=None,
                        help="import published MaPLe checkpoints instead of training: a folder laid out as "
                             "<dataset>/base/seed<k>/MultiModalPromptLearner/model.pth.tar-5")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: first dataset, first seed, few shots/epochs/images (minutes)")
    parser.add_argument("--methods", nargs="+", default=None, choices=["maple", "bias"],
                        help="methods to train and evaluate (default: maple and bias tuning; with --maple-weights: "
                             "maple)")
    parser.add_argument("--shots", type=int, default=None, help="training images per base class (16)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (5)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (4)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (0.0035)")
    parser.add_argument("--depth", type=int, default=None,
                        help="MaPLe prompt depth J (default: the recipe's 9, clipped to all blocks but the last: "
                             "5 of the toy's 6)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="test images per split and dataset (class-balanced; default: all)")
    parser.add_argument("--ablations", choices=list(ABLATIONS), default=None,
                        help="evaluated variants: 'routes' = the four routes on both branches; 'branches' = also "
                             "on the vision / text branch alone (default); 'grid' = also on the injected / carried "
                             "blocks alone")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates (default 1000)")
    parser.add_argument("--toy-size", choices=["small", "full"], default="small",
                        help="toyworld images per class generated in memory (small: 16 train / 8 test)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1; more only help on an idle machine)")
    parser.add_argument("--no-explorer", action="store_true",
                        help="skip the interactive explorer page (mmlens.viz.report) of the study")
    parser.add_argument("--restart", action="store_true",
                        help="delete the folder's finished steps and results first (its settings changed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from mmlens.tracing.spec import add_cluster_arguments

    add_cluster_arguments(parser)  # the trace steps on dask.distributed; training and statistics stay here


def main(args: argparse.Namespace) -> int:
    """Run ``mmlens reproduce``; 0 on success, 130 when interrupted (rerun to resume)."""
    from mmlens.experiments._ledger import SettingsMismatch
    from mmlens.experiments._pipeline import Config, run

    try:
        cfg = Config.from_args(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"mmlens reproduce: {err}")
        return 2
    try:
        result = run(cfg)
    except SettingsMismatch as err:
        print(f"mmlens reproduce: {err}")
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished steps are kept in {Path(cfg.out) / 'steps.json'}; rerun the same "
              "command to resume (the step in progress continues from its last checkpoint).")
        return 130
    print(result.summary)
    return 0
