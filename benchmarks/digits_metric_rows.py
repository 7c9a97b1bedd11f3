"""The reference rows of the README's digits table: what real digits, noise and blurred digits score with the digits
metric (samples vs the held-out split), at the count of ``make train``'s final report (297) and of eval (1000).

    .venv/bin/python benchmarks/digits_metric_rows.py
"""
import torch
import torch.nn.functional as F

from edmlab.data.digits import digits_arrays
from edmlab.evaluation.metrics.digits import DigitsMetric


def main():
    metric = DigitsMetric()
    train = digits_arrays("train")[0]
    print("| images scored | N | digits FD | precision | recall | nearest-train distance | near copies |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in (297, 1000):
        noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        blurred = F.avg_pool2d(F.pad(train[:n], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        rows = {"training digits (the floor)": metric.real_floor(n), "Gaussian noise": metric(noise),
                "3×3 box-blurred training digits": metric(blurred)}
        for name, s in rows.items():
            print(f"| {name} | {s.num_images} | {s.fd:.3g} | {s.precision:.2f} | {s.recall:.2f} | "
                  f"{s.train_nn_distance:.2f} | {s.near_copy_fraction:.3f} |")


if __name__ == "__main__":
    main()
