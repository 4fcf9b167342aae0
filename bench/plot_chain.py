#!/usr/bin/env python3
"""Plot the chain benchmark's CSV (shardcache-bench --only chain --chain-csv FILE).

Usage: python3 bench/plot_chain.py bench/results/chain.csv bench/results/chain.png
Needs matplotlib (pip install matplotlib).
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    limits = sorted({int(r["origin_mbps"]) for r in rows}, key=lambda m: (m == 0, m))
    fig, axes = plt.subplots(1, len(limits), figsize=(6.5 * len(limits), 4.5), dpi=120, squeeze=False)
    for ax, mbps in zip(axes[0], limits):
        sel = [r for r in rows if int(r["origin_mbps"]) == mbps]
        nodes = [int(r["nodes"]) for r in sel]
        one = [float(r["one_node_s"]) for r in sel]
        indep = [float(r["independent_s"]) for r in sel]
        chain = [float(r["chain_s"]) for r in sel]
        ax.plot(nodes, chain, "o-", label="chain to N nodes (warm --all-nodes)")
        ax.plot(nodes, indep, "s--", label="N independent copies from the origin")
        ax.plot(nodes, one, "^:", label="the same data to one node")
        ax.plot(nodes, [1.3 * t for t in one], color="grey", linewidth=0.8, label="target: 1.3 x one node")
        ax.set_xlabel("nodes N")
        ax.set_ylabel("seconds to place S on every node")
        ax.set_xticks(nodes)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        what = "origin unlimited (CPU-bound)" if mbps == 0 else f"origin egress {mbps} MB/s"
        ax.set_title(f"S = 1 GiB over loopback, {what}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
