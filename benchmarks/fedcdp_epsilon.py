"""How FedCDP's SNR, σ and ε relate in the trade-off's setting (issue 16): for target ε the σ Opacus
gives, and the SNR over the clipped gradient that σ means for the attacked client; for the ROG SNRs the
σ and the ε they map to. Seconds on one CPU thread.

Setting (the trade-off command's defaults): ROG's LeNet-5 (16, 32, 256) at θ_0 (seed 0), C = 4,
δ = 1e-5, T = 30 rounds × τ = 5 local steps, dataset_size 500; attacked client: a batch of 4 photos at
64×64 (q = 4/500), training clients b = 16 (q = 16/500).

    python benchmarks/fedcdp_epsilon.py
"""
from __future__ import annotations

import math

from _common import positive_int  # noqa: F401  (puts src/ on the path)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import gradleak as gl
    from gradleak.defenses.fedcdp import (ROG_SNRS_DB, clipped_sum, fedcdp_epsilon, realised_snr_db,
                                          sigma_for_epsilon, sigma_for_snr)
    from gradleak.experiments.victims import ROG_LENET5
    from gradleak.fl.client import split_state
    from gradleak.models import build_model, init_model

    data = gl.load_dataset("photos", split="private", resolution=64, channels=3)
    x, y = gl.sample_batch(data, 4, distinct_labels=False, seed=0)
    model = init_model(build_model(ROG_LENET5, data.num_classes, 3, 64), 0)
    p, b = split_state(model)
    model.eval()
    C, delta, rounds, tau = 4.0, 1e-5, 30, 5
    s = clipped_sum(model, p, b, x, y, C)
    L = len(p)
    print(f"L = {L} parameter tensors, d = {sum(t.numel() for t in p.values())} parameters, "
          f"‖Σ ĝ_i‖ = {math.sqrt(sum(float(t.pow(2).sum()) for t in s.values())):.3f} (C = {C}, batch 4)\n")
    print("| target ε | σ, attacked client (q = 4/500) | z = σ/√L | accounted ε | realised SNR (dB) | "
          "σ, training client (q = 16/500) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for eps in (1, 4, 16, 64):
        sa = sigma_for_epsilon(eps, delta, 4 / 500, rounds * tau, L)
        st = sigma_for_epsilon(eps, delta, 16 / 500, rounds * tau, L)
        acc = fedcdp_epsilon([sa] * tau, L, 4 / 500, rounds, delta)
        print(f"| {eps} | {sa:.4g} | {sa / math.sqrt(L):.4g} | {acc:.4g} | {realised_snr_db(s, C, sa):.1f} | {st:.4g} |")
    print("\n| SNR (dB) | σ | z = σ/√L | ε (attacked client) |\n|---:|---:|---:|---:|")
    for snr in ROG_SNRS_DB:
        sg = sigma_for_snr(s, C, snr)
        print(f"| {snr:g} | {sg:.4g} | {sg / math.sqrt(L):.4g} | {fedcdp_epsilon([sg] * tau, L, 4 / 500, rounds, delta):.4g} |")


if __name__ == "__main__":
    main()
