"""The report's figures: alpha sweep (Fig. 4), final dimension (Fig. 5) and ITQ bits, a PNG each in ``--out``."""

from __future__ import annotations

from ..settings import ALPHAS, ITQ_BITS, MASK_LABELS, PAPER, PROTOCOLS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha(run):
    alpha = run.results.get("alpha", {})
    if not alpha:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, protocol in zip(axes, PROTOCOLS):
        for mask, values in alpha.items():
            ax.plot(ALPHAS, [values[str(a)][protocol]["map"] for a in ALPHAS], marker="o", label=MASK_LABELS[mask])
        ax.set_title(f"alpha sweep, 1024-D, {protocol}")
        ax.set_xlabel("power-law alpha")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(run.out / "fig4_alpha.png", dpi=110)
    plt.close(fig)


def plot_dimensions(run):
    fw = run.results.get("framework", {})
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    dims = sorted({512, 1024, *run.args.sweep_dims})
    for ax, protocol in zip(axes, PROTOCOLS):
        for mask in ("max", "sum", "sift", "none"):
            points = [(d, fw[f"training/{mask}/{d}"][protocol]["map"]) for d in dims if f"training/{mask}/{d}" in fw]
            if points:
                line = ax.plot(*zip(*points), marker="o", label=MASK_LABELS[mask])
                paper = [(d, PAPER["mask_dim"][(mask, d)]) for d in (512, 1024) if (mask, d) in PAPER["mask_dim"]]
                if paper:
                    ax.plot(
                        *zip(*paper),
                        marker="x",
                        linestyle=":",
                        color=line[0].get_color(),
                        label=f"{MASK_LABELS[mask]}, paper Oxford5k",
                    )
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_title(f"final dimension, {protocol}")
        ax.set_xlabel("D")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run.out / "fig5_dimensions.png", dpi=110)
    plt.close(fig)


def plot_itq(run):
    itq = run.results.get("itq")
    if not itq:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    bits = [b for b in ITQ_BITS if str(b) in itq]
    for protocol in PROTOCOLS:
        line = ax.plot(bits, [itq[str(b)][protocol]["map"] for b in bits], marker="o", label=f"ITQ, {protocol}")
        ax.axhline(
            itq["real"][protocol]["map"], linestyle="--", color=line[0].get_color(), label=f"512-D real, {protocol}"
        )
    ax.plot(list(PAPER["itq"]), list(PAPER["itq"].values()), marker="x", color="grey", label="paper ITQ, Oxford5k")
    ax.set_xscale("log", base=2)
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.set_xlabel("bits")
    ax.set_ylabel("mAP (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run.out / "fig_itq.png", dpi=110)
    plt.close(fig)
