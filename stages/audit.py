"""Stage `audit`: suspects in the dataset, for a person to review; the data and the split stay as filed.

Every image of data/store (train, val and test) goes once through the frozen ImageNet backbone
(audit.arch, centre crop, no augmentation). On those features:
  results/label_issues.csv     images whose class looks wrong: confident learning (cleanlab) on the
                               probabilities of a cross-validated logistic regression, most suspect first
  results/near_duplicates.csv  pairs of the same photo resized or re-encoded, within and across splits
                               (across: leakage), found in time linear in the images
  results/outliers.csv         images far from all others (belonging to no class, or broken)
  results/audit.json           their counts (a metrics file); plots/audit/suspects.png the most suspect images.
Acting on it: list paths under data.exclude in params.yaml and split leaves them out (docs/audit.md)."""
from __future__ import annotations

from transfer.audit.findings import audit_data, audit_metrics, find_all, suspects_figure, write_tables
from transfer.core import params, publish
from transfer.core.devices import pick_device
from transfer.core.files import save_figure, write_json
from transfer.core.paths import (
    AUDIT_METRICS,
    AUDIT_SUSPECTS_PNG,
    LABEL_ISSUES_CSV,
    NEAR_DUPLICATES_CSV,
    OUTLIERS_CSV,
)
from transfer.core.settings import AuditSettings, section
from transfer.core.stage import log, run_main
from transfer.models.backbones import check_arch

PARAMS = ("audit",)
OUTPUTS = (LABEL_ISSUES_CSV, NEAR_DUPLICATES_CSV, OUTLIERS_CSV, AUDIT_METRICS, AUDIT_SUSPECTS_PNG)


@run_main
def main() -> None:
    declared = params.declared(params.load(arch_check=check_arch), PARAMS)
    settings = section(declared, "audit", AuditSettings)
    data = audit_data(settings.arch, settings.image_size, pick_device(settings.device, "audit.device"))
    found = find_all(data, settings)
    metrics = audit_metrics(data, found)
    with publish.outputs("audit", OUTPUTS) as staged:
        write_tables(data, found, staged(LABEL_ISSUES_CSV), staged(NEAR_DUPLICATES_CSV), staged(OUTLIERS_CSV))
        write_json(staged(AUDIT_METRICS), metrics)
        save_figure(suspects_figure(data, found, settings.suspects_shown), staged(AUDIT_SUSPECTS_PNG))
    skipped = metrics["label_audit"]["skipped"]
    log(f"audit: {metrics['images']} images: {metrics['label_issues']} suspect labels (of "
        f"{metrics['label_disagreements']} misclassified out of sample)"
        + (f" (label audit skipped: {skipped})" if skipped else "")
        + f", {metrics['near_duplicates']} near-duplicate pairs ({metrics['near_duplicates_across_splits']} across "
          f"splits), {metrics['outliers']} outliers; see {LABEL_ISSUES_CSV.parent}/ and docs/audit.md")


if __name__ == "__main__":
    main()
