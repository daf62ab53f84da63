"""``privacy_audit.png``: claimed epsilon beside its empirical lower bound, and the attacks' ROC curves."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_bytes


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """Left: one pair of bars per audited mechanism. Right: ROC (log axes) of every attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    mechs = report.get("mechanisms", [])
    width = 15 if len(mechs) > 3 else 24  # long vertical names fit under their bars
    labels = ["\n".join(textwrap.wrap(m["mechanism"], width)) for m in mechs]
    xs = range(len(mechs))
    left.bar([x - 0.2 for x in xs], [m["claimed_epsilon"] for m in mechs], 0.4, label="claimed epsilon")
    left.bar(
        [x + 0.2 for x in xs],
        [m["epsilon_lower_bound"] for m in mechs],
        0.4,
        label="empirical lower bound (95%)",
        color=["tab:red" if m["flagged"] else "tab:green" for m in mechs],
    )
    left.set_xticks(list(xs), labels, fontsize=7 if len(mechs) > 3 else 8)
    left.set_ylabel("epsilon")
    left.set_title("Claimed epsilon vs audited lower bound")
    top = max([m["claimed_epsilon"] for m in mechs] + [m["epsilon_lower_bound"] for m in mechs] + [1.0])
    left.set_ylim(0, top * 1.3)  # room for the legend above the bars
    left.legend(fontsize=8, loc="upper right")
    plotted = False
    for target, result in report.get("membership_inference", {}).items():
        if not isinstance(result, dict):
            continue
        for attack in ("loss_threshold", "lira_offline"):
            curve = result.get(attack, {}).get("roc")
            if curve:
                fpr = [max(f, 1e-4) for f in curve["fpr"]]
                tpr = [max(t, 1e-4) for t in curve["tpr"]]
                right.plot(fpr, tpr, label=f"{target}: {attack} (AUC {result[attack]['auc']:.3f})")
                plotted = True
    right.plot([1e-4, 1], [1e-4, 1], "k--", linewidth=0.8, label="chance")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("false positive rate")
    right.set_ylabel("true positive rate")
    right.set_title("Membership inference ROC" if plotted else "Membership inference (not run)")
    right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
