"""Stage compare: put every transfer mode side by side.

Reads metrics/<mode>.json and results/details/<mode>.json (evaluate@<mode>) and the per-epoch DVCLive
logs (train@<mode>) of every mode in params `modes`, and writes:
  plots/compare/val_error.png       val (solid) and train (dashed) error rate per epoch, every mode
  plots/compare/accuracy_time.png   accuracy (on test, or val without one) and training time per mode
  plots/compare/accuracy_cost.png   accuracy against cost (compare.cost, log scale), the tied modes marked
  plots/compare/confusion/          those confusion matrices normalised by actual class: all modes in
                                    all_modes.png, or <mode>.png each when the classes are many
  plots/compare/val_acc.csv, train_loss.csv   epoch, mode, value: the data of dvc.yaml's all-modes charts
  results/summary.json, results/summary.md   the verdict and the table of the modes' headline numbers
                                             (plain outputs, not metrics: each number is a metric once, in
                                             its mode's file)

The verdict reads every mode's predictions on the same selection images (results/val_predictions/<mode>.csv
where a test split reports, else plots/predictions/<mode>.csv: val): each pair of modes is tested on the
images where one is right and the other wrong (exact McNemar, Holm-corrected), the modes no other mode
beats significantly are `tied`, and the cheapest of them by params compare.cost is `recommended`
(transfer.evaluation.choice); test's own paired tests, and what the pick gives up there against the most
accurate mode, only report. A tie is never shown as a win.
The summary opens with the majority-class baseline on the same images (from split's metrics/data.json:
the most common training class) and which modes are not significantly above it, a warning first when
the recommended one is not, and val (selection) against test (reporting) where there is a test split
(transfer.evaluation.limits).
"""
from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.errors import UserError
from transfer.core.files import save_figure, write_json, write_text
from transfer.core.paths import (
    COMPARE_ACCURACY_COST_PNG,
    COMPARE_ACCURACY_TIME_PNG,
    COMPARE_CONFUSION_DIR,
    COMPARE_ERROR_PNG,
    COMPARE_PLOTS_DIR,
    COMPARE_TRAIN_LOSS_CSV,
    COMPARE_VAL_ACC_CSV,
    DATA_METRICS,
    SUMMARY_JSON,
    SUMMARY_MD,
)
from transfer.core.settings import CompareSettings, section
from transfer.core.stage import log, run_main
from transfer.evaluation.comparison_figures import (
    confusion_figures,
    plot_accuracy_cost,
    plot_accuracy_time,
    plot_error_curves,
)
from transfer.evaluation.limits import read_split_counts
from transfer.evaluation.mode_results import load_mode, missing_inputs
from transfer.evaluation.summary import curve_table, markdown_table, opening, summarize

PARAMS = ("modes", "compare.cost")  # as dvc.yaml's compare stage declares them
# dvc.yaml's all-modes charts draw these files (the run's series, its column); a row per (epoch, mode),
# so that a new row of params `modes` is a new line on the chart without editing dvc.yaml.
CURVE_TABLES = {COMPARE_VAL_ACC_CSV: ("val_acc", "acc"), COMPARE_TRAIN_LOSS_CSV: ("train_loss", "loss")}


@run_main
def main() -> None:
    params = params_module.declared(params_module.load(), PARAMS)
    modes = [str(mode) for mode in params["modes"]]
    missing = missing_inputs(modes)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: missing{more}; run the train and evaluate stages first (dvc repro)")
    # Every input is read and checked before anything is written: a bad input leaves no partial output.
    runs = {mode: load_mode(mode) for mode in modes}
    summary = summarize(runs, read_split_counts(DATA_METRICS), section(params, "compare", CompareSettings).cost)

    with publish.outputs("compare", (COMPARE_PLOTS_DIR, SUMMARY_MD, SUMMARY_JSON)) as staged:
        plots = staged(COMPARE_PLOTS_DIR)  # the whole folder at once: no stale figure of a removed mode
        plots.mkdir()
        inside = lambda path: plots / path.relative_to(COMPARE_PLOTS_DIR)
        save_figure(plot_error_curves(runs), inside(COMPARE_ERROR_PNG))
        save_figure(plot_accuracy_time(summary["modes"]), inside(COMPARE_ACCURACY_TIME_PNG))
        save_figure(plot_accuracy_cost(summary), inside(COMPARE_ACCURACY_COST_PNG))
        inside(COMPARE_CONFUSION_DIR).mkdir()
        for name, figure in confusion_figures(runs).items():
            save_figure(figure, inside(COMPARE_CONFUSION_DIR) / name)
        for path, (series, column) in CURVE_TABLES.items():
            inside(path).write_text(curve_table(runs, series, column), encoding="utf-8")
        write_text(staged(SUMMARY_MD), markdown_table(summary, runs))
        write_json(staged(SUMMARY_JSON), summary)
    for line in opening(summary):
        log(f"compare: {line}")


if __name__ == "__main__":
    main()
